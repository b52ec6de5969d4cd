"""Every NVML call facefleet makes, behind one small interface with two backends.

`RealNvml` reads the GPUs through NVML (nvidia-ml-py, `import pynvml`); `SimulatedNvml`
stands in on machines without a GPU, with numbers derived from the workers' real busy
time. Every sample says which backend made it (`backend="real"|"simulated"`), and
simulated devices are named "simulated GPU" with "SIM-GPU-..." UUIDs, so simulated
numbers cannot pass for measurements.

GPUs are keyed by UUID: NVML numbers devices in PCI bus order and ignores
CUDA_VISIBLE_DEVICES, so an NVML index is not the index a CUDA process sees.

Nothing here knows about Ray; `facefleet.cluster.reporter` samples a backend on a thread.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from facefleet.errors import ClusterError

BACKENDS = ("auto", "real", "simulated")
MIB = 1 << 20
GIB = 1 << 30

# Clock event ("throttle") reason bits, as NVML defines them (nvmlClocksEventReason*).
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "idle"),
    (0x002, "app_clocks"),
    (0x004, "power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "thermal"),
    (0x040, "hw_thermal"),
    (0x080, "power_brake"),
    (0x100, "display_clock"),
)
# The reasons that mean the GPU runs slower than it could while it has work.
LIMITING_REASONS = frozenset({"power_cap", "hw_slowdown", "thermal", "hw_thermal", "power_brake"})


@dataclass(frozen=True)
class DeviceInfo:
    uuid: str
    index: int  # NVML's index (PCI bus order), not CUDA's
    name: str
    memory_total: int  # bytes


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment. A metric the device does not report is None."""

    time: float  # time.time() of the reading
    node: str
    gpu_uuid: str
    gpu_index: int
    name: str
    utilization_gpu: float | None  # % of the last sample period a kernel ran
    utilization_memory: float | None  # % of the last sample period memory was read or written
    memory_used: int | None  # bytes
    memory_total: int | None  # bytes
    power_w: float | None
    temperature_c: float | None
    sm_clock_mhz: float | None
    encoder: float | None  # NVENC utilization %
    decoder: float | None  # NVDEC utilization %
    throttle_reasons: tuple[str, ...] | None  # e.g. ("power_cap",); () when none
    sm_activity: float | None  # GPM SM utilization % (Hopper and later), else None
    # pid -> SM utilization % / bytes used on this GPU; None when not read at this sample
    # (the real backend reads processes every `process_interval_s`: the call is the costly one)
    processes: dict[int, float] | None = field(default_factory=dict)
    process_memory: dict[int, int] | None = field(default_factory=dict)
    backend: str = "real"  # "real" | "simulated"

    @property
    def simulated(self) -> bool:
        return self.backend == "simulated"

    @property
    def throttled(self) -> bool:
        """True when a limiting reason (power, thermal, hardware slowdown) is active."""
        return bool(self.throttle_reasons and LIMITING_REASONS.intersection(self.throttle_reasons))

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["throttle_reasons"] = list(self.throttle_reasons) if self.throttle_reasons is not None else None
        return row


class GpuBackend(Protocol):
    backend: str  # "real" | "simulated"

    def devices(self) -> list[DeviceInfo]: ...

    def sample(self) -> list[GpuSample]: ...

    def uuid_of_pid(self, pid: int) -> str | None: ...

    def close(self) -> None: ...


def throttle_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS if mask & bit)


# --------------------------------------------------------------------------- real NVML


class NvmlUnavailable(ClusterError):
    """NVML cannot be used here: no driver, no library, or no device."""


def gpu_memory(uuid: str, pid: int | None = None, nvml: Any = None) -> tuple[int, int] | None:
    """(used, total) bytes of the GPU with this UUID, from NVML; None when NVML cannot say.

    For a worker sizing its next batch (Processor.fit_to_memory). The memory process `pid`
    holds is left out of `used`: onnxruntime keeps what it allocated in its arena and
    serves later batches of the same size from it, so a worker's own arena is no pressure
    (counting it, a worker that once filled the GPU would halve its batches for good).
    `nvml` is the pynvml module (tests pass a stand-in)."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            own = 0
            if pid is not None:
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle) or []:
                    if int(process.pid) == pid and getattr(process, "usedGpuMemory", None) is not None:
                        own += int(process.usedGpuMemory)
            return max(0, int(memory.used) - own), int(memory.total)
        finally:
            nvml.nvmlShutdown()
    except Exception:
        return None


class RealNvml:
    """The GPUs as NVML reports them. Every metric read is guarded: a metric a device
    does not support (or that fails) becomes None, and one that answered NotSupported
    is not asked again.

    Per-process utilization (nvmlDeviceGetProcessUtilization) costs about 1.3 ms of CPU
    per GPU and call on an H100, several times all other readings together, so it is read
    at most every `process_interval_s` (its value is the mean since the previous read);
    samples in between have processes=None. `nvml` is the pynvml module (tests pass a
    stand-in).
    """

    backend = "real"

    def __init__(self, node: str = "", nvml: Any = None, process_interval_s: float = 2.0):
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                raise NvmlUnavailable(f"NVML is not available: nvidia-ml-py is not installed ({exc})") from None
        self._nvml = nvml
        self.node = node
        self.process_interval_s = process_interval_s
        self._processes_read: dict[str, float] = {}  # uuid -> time.monotonic() of the last read
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise NvmlUnavailable(f"NVML is not available: {exc or type(exc).__name__}") from None
        self._open = True
        self._handles: list[tuple[DeviceInfo, Any]] = []
        self._unsupported: set[tuple[str, str]] = set()  # (uuid, metric) answered NotSupported
        self._last_seen: dict[str, int] = {}  # uuid -> newest per-process sample timestamp (us)
        self._gpm: dict[str, list[Any]] = {}  # uuid -> [previous sample, spare sample]
        try:
            count = nvml.nvmlDeviceGetCount()
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(self._read(uuid, "name", nvml.nvmlDeviceGetName, handle) or "NVIDIA GPU")
                memory = self._read(uuid, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
                total = int(memory.total) if memory is not None else 0
                self._handles.append((DeviceInfo(uuid, index, name, total), handle))
                self._setup_gpm(uuid, handle)
        except Exception as exc:
            self.close()
            raise NvmlUnavailable(f"NVML started but cannot list the GPUs: {exc or type(exc).__name__}") from None

    # -- guarded calls

    def _not_supported(self, exc: BaseException) -> bool:
        cls = getattr(self._nvml, "NVMLError_NotSupported", None)
        return cls is not None and isinstance(exc, cls)

    def _read(self, uuid: str, metric: str, fn: Callable | None, *args: Any) -> Any:
        """fn(*args), or None when the device does not support it or the call fails."""
        if fn is None or (uuid, metric) in self._unsupported:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            if self._not_supported(exc) or isinstance(exc, AttributeError):
                self._unsupported.add((uuid, metric))
            return None

    def unsupported(self) -> dict[str, list[str]]:
        """Metrics each GPU answered NotSupported for (they read as None)."""
        out: dict[str, list[str]] = {}
        for uuid, metric in sorted(self._unsupported):
            out.setdefault(uuid, []).append(metric)
        return out

    # -- GPM (Hopper and later): SM activity between two GPM samples

    def _setup_gpm(self, uuid: str, handle: Any) -> None:
        nvml = self._nvml
        support = self._read(uuid, "gpm", getattr(nvml, "nvmlGpmQueryDeviceSupport", None), handle)
        if support is None or not getattr(support, "isSupportedDevice", 0):
            self._unsupported.add((uuid, "gpm"))
            return
        try:
            first = nvml.nvmlGpmSampleAlloc()
            second = nvml.nvmlGpmSampleAlloc()
        except Exception:
            self._unsupported.add((uuid, "gpm"))
            return
        try:
            nvml.nvmlGpmSampleGet(handle, first)
        except Exception:
            for s in (first, second):
                self._free_gpm(s)
            self._unsupported.add((uuid, "gpm"))
            return
        self._gpm[uuid] = [first, second]

    def _free_gpm(self, sample: Any) -> None:
        try:
            self._nvml.nvmlGpmSampleFree(sample)
        except Exception:
            pass

    def _sm_activity(self, uuid: str, handle: Any) -> float | None:
        pair = self._gpm.get(uuid)
        if pair is None:
            return None
        nvml = self._nvml
        previous, current = pair
        try:
            nvml.nvmlGpmSampleGet(handle, current)
        except Exception:
            return None
        pair[0], pair[1] = current, previous  # the next reading starts from this one
        try:
            request = nvml.c_nvmlGpmMetricsGet_t()
            request.version = nvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = 1
            request.sample1 = previous
            request.sample2 = current
            request.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
            nvml.nvmlGpmMetricsGet(request)
            metric = request.metrics[0]
            if metric.nvmlReturn != getattr(nvml, "NVML_SUCCESS", 0):
                return None
            return float(metric.value)
        except Exception:
            return None

    # -- the interface

    def devices(self) -> list[DeviceInfo]:
        return [info for info, _ in self._handles]

    def sample(self) -> list[GpuSample]:
        return [self._sample_device(info, handle) for info, handle in self._handles]

    def _sample_device(self, info: DeviceInfo, handle: Any) -> GpuSample:
        nvml, uuid = self._nvml, info.uuid
        now = time.time()
        rates = self._read(uuid, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._read(uuid, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._read(uuid, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        temperature = self._read(
            uuid, "temperature", nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        )
        sm_clock = self._read(uuid, "sm_clock", nvml.nvmlDeviceGetClockInfo, handle, getattr(nvml, "NVML_CLOCK_SM", 1))
        encoder = self._read(uuid, "encoder", getattr(nvml, "nvmlDeviceGetEncoderUtilization", None), handle)
        decoder = self._read(uuid, "decoder", getattr(nvml, "nvmlDeviceGetDecoderUtilization", None), handle)
        reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        reasons = self._read(uuid, "throttle", reasons_fn, handle)
        processes = process_memory = None
        due = self._processes_read.get(uuid)
        if due is None or time.monotonic() - due >= self.process_interval_s:
            self._processes_read[uuid] = time.monotonic()
            processes, process_memory = self._processes(uuid, handle)
        return GpuSample(
            time=now,
            node=self.node,
            gpu_uuid=uuid,
            gpu_index=info.index,
            name=info.name,
            utilization_gpu=float(rates.gpu) if rates is not None else None,
            utilization_memory=float(rates.memory) if rates is not None else None,
            memory_used=int(memory.used) if memory is not None else None,
            memory_total=int(memory.total) if memory is not None else (info.memory_total or None),
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            sm_clock_mhz=float(sm_clock) if sm_clock is not None else None,
            encoder=float(encoder[0]) if encoder is not None else None,
            decoder=float(decoder[0]) if decoder is not None else None,
            throttle_reasons=throttle_names(int(reasons)) if reasons is not None else None,
            sm_activity=self._sm_activity(uuid, handle),
            processes=processes,
            process_memory=process_memory,
            backend=self.backend,
        )

    def _compute_processes(self, uuid: str, handle: Any) -> list[Any]:
        return self._read(uuid, "processes", self._nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []

    def _processes(self, uuid: str, handle: Any) -> tuple[dict[int, float], dict[int, int]]:
        """SM utilization per process (mean of NVML's samples since the last reading; 0
        for a process with a context on the GPU and no new sample) and memory per process."""
        running = self._compute_processes(uuid, handle)
        util: dict[int, float] = {int(p.pid): 0.0 for p in running}
        memory = {int(p.pid): int(p.usedGpuMemory) for p in running if getattr(p, "usedGpuMemory", None) is not None}
        samples = self._read(
            uuid,
            "process_utilization",
            getattr(self._nvml, "nvmlDeviceGetProcessUtilization", None),
            handle,
            self._last_seen.get(uuid, 0),
        )
        if samples:
            seen: dict[int, list[float]] = {}
            for s in samples:
                seen.setdefault(int(s.pid), []).append(float(s.smUtil))
            self._last_seen[uuid] = max(int(s.timeStamp) for s in samples)
            util.update({pid: sum(v) / len(v) for pid, v in seen.items()})
        return util, memory

    def uuid_of_pid(self, pid: int) -> str | None:
        """The GPU on which process `pid` has a compute context, if any.

        NVML reports the PIDs of the PID namespace it runs in; inside a container
        without the host's PID namespace a process may not find itself.
        """
        for info, handle in self._handles:
            if any(int(p.pid) == pid for p in self._compute_processes(info.uuid, handle)):
                return info.uuid
        return None

    def close(self) -> None:
        if not getattr(self, "_open", False):
            return
        for pair in self._gpm.values():
            for s in pair:
                self._free_gpm(s)
        self._gpm.clear()
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- simulated


SIM_NAME = "simulated GPU"
SIM_MEMORY_TOTAL = 80 * GIB
SIM_CONTEXT_BYTES = 512 * MIB  # per process with work on the GPU
SIM_WORKING_FRACTION = 0.10  # of total memory, in use while busy 100 %
SIM_IDLE_W, SIM_MAX_W = 70.0, 700.0
SIM_IDLE_C, SIM_MAX_C = 30.0, 70.0
SIM_IDLE_MHZ, SIM_BUSY_MHZ = 345.0, 1980.0
SIM_MEMORY_UTIL_RATIO = 0.4  # memory controller busy per unit of kernel time
SIM_THROTTLED_MHZ = 1200.0  # SM clock of a busy GPU held back by a limiting reason
SIM_THROTTLED_C = 88.0  # temperature of a busy GPU throttling for heat


def simulated_uuid(index: int, node: str = "") -> str:
    """The fake UUID of simulated GPU `index` on `node` (unique across nodes when the
    node is given, e.g. a Ray node id)."""
    if not node:
        return f"SIM-GPU-{index:04d}"
    return f"SIM-GPU-{index:04d}-{hashlib.sha1(node.encode()).hexdigest()[:8]}"


Interval = tuple[float, float]


def covered(intervals: Iterable[Interval], start: float, end: float) -> float:
    """Seconds of [start, end] covered by the union of `intervals`."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    total, reach = 0.0, start
    for a, b in clipped:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


class SimulatedNvml:
    """Stand-in GPUs for machines without one. Utilization is the fraction of the last
    `window_s` seconds during which a worker assigned to the GPU was busy (inside a
    chunk's stage calls), from intervals fed with `record_busy` and/or returned by the
    `busy` callable; power, temperature, clock and memory follow from it through a fixed,
    simple model (the SIM_* constants). Deterministic given the intervals and the time.

    `busy()` returns {uuid or index: busy fraction (0-1) or [(start, end), ...]} for the
    current window. Times are time.time() seconds.

    Intervals reach the backend after they end (workers flush them in batches), so a
    window sampled too early would miss them for good. With `lag_s`, the sample taken at
    `now` describes the window ending at `now - lag_s` (and carries that time): set it
    to the feeders' flush period plus the call's latency.

    For tests of what reports make of a troubled GPU: `memory_base` {GPU index: bytes}
    adds memory in use on that GPU at all times (other tenants, large models), and
    `throttle` {GPU index: reason} makes that GPU report the limiting reason (e.g.
    "thermal", "power_cap"; see LIMITING_REASONS) whenever it is busy, with its SM clock
    down to SIM_THROTTLED_MHZ (and, for heat, its temperature up to SIM_THROTTLED_C).
    """

    backend = "simulated"

    def __init__(
        self,
        gpus: int = 1,
        busy: Callable[[], Mapping[str | int, float | Iterable[Interval]]] | None = None,
        node: str = "",
        window_s: float = 1.0,
        memory_total: int = SIM_MEMORY_TOTAL,
        clock: Callable[[], float] = time.time,
        keep_s: float = 60.0,
        lag_s: float = 0.0,
        memory_base: Mapping[int, int] | None = None,
        throttle: Mapping[int, str] | None = None,
    ):
        if window_s <= 0 or lag_s < 0:
            raise ValueError("window_s must be positive and lag_s not negative")
        unknown = set((throttle or {}).values()) - LIMITING_REASONS
        if unknown:
            raise ValueError(f"not a limiting throttle reason: {', '.join(sorted(unknown))}")
        self.memory_base = dict(memory_base or {})
        self.throttle = dict(throttle or {})
        self.node = node
        self.window_s = window_s
        self.lag_s = lag_s
        self.keep_s = max(keep_s, 2 * window_s + lag_s)
        self._busy = busy
        self._clock = clock
        self._devices = [DeviceInfo(simulated_uuid(i, node), i, SIM_NAME, memory_total) for i in range(gpus)]
        self._uuids = {d.uuid for d in self._devices}
        self._closed: dict[str, list[tuple[float, float, int | None]]] = {d.uuid: [] for d in self._devices}
        self._open: dict[str, dict[tuple[float, int | None], None]] = {d.uuid: {} for d in self._devices}
        self._pids: dict[int, str] = {}

    def _check(self, uuid: str) -> None:
        if uuid not in self._uuids:
            known = ", ".join(sorted(self._uuids)) or "none"
            raise ValueError(f"{uuid!r} is not a simulated GPU of this node (known: {known})")

    def assign(self, pid: int, uuid: str) -> None:
        """Record that process `pid` works on GPU `uuid` (what uuid_of_pid answers)."""
        self._check(uuid)
        self._pids[pid] = uuid

    def record_busy(self, uuid: str, start: float, end: float | None = None, pid: int | None = None) -> None:
        """GPU `uuid` was busy from `start` to `end`. With end=None the interval is open
        (busy until now) until a call with the same uuid, start and pid gives its end."""
        self._check(uuid)
        if pid is not None:
            self._pids[pid] = uuid
        key = (float(start), pid)
        if end is None:
            self._open[uuid][key] = None
            return
        self._open[uuid].pop(key, None)
        if end > start:
            self._closed[uuid].append((float(start), float(end), pid))

    def _intervals(self, uuid: str, now: float, pid: int | None = None) -> list[Interval]:
        out = [(a, b) for a, b, p in self._closed[uuid] if pid is None or p == pid]
        out += [(a, now) for a, p in self._open[uuid] if pid is None or p == pid]
        return out

    def busy_fraction(self, uuid: str, start: float, end: float, pid: int | None = None) -> float:
        """Fraction of [start, end] during which the GPU (or process `pid` on it) was busy."""
        self._check(uuid)
        if end <= start:
            return 0.0
        return covered(self._intervals(uuid, end, pid), start, end) / (end - start)

    def _prune(self, now: float) -> None:
        horizon = now - self.keep_s
        for uuid, intervals in self._closed.items():
            if intervals and intervals[0][1] < horizon:
                self._closed[uuid] = [iv for iv in intervals if iv[1] >= horizon]

    def _fed(self) -> dict[str, float | list[Interval]]:
        if self._busy is None:
            return {}
        out: dict[str, float | list[Interval]] = {}
        for key, value in self._busy().items():
            uuid = self._devices[key].uuid if isinstance(key, int) else key
            self._check(uuid)
            out[uuid] = float(value) if isinstance(value, (int, float)) else list(value)
        return out

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def sample(self, now: float | None = None) -> list[GpuSample]:
        """The window ending at `now - lag_s` (now: the clock's time unless given)."""
        now = (self._clock() if now is None else now) - self.lag_s
        start = now - self.window_s
        fed = self._fed()
        samples = []
        for device in self._devices:
            uuid = device.uuid
            intervals = self._intervals(uuid, now)
            extra = fed.get(uuid)
            if isinstance(extra, list):
                intervals += extra
            fraction = covered(intervals, start, now) / self.window_s
            if isinstance(extra, float):
                fraction = max(fraction, extra)
            fraction = min(max(fraction, 0.0), 1.0)
            pids = sorted(p for p, u in self._pids.items() if u == uuid)
            processes = {p: round(100.0 * self.busy_fraction(uuid, start, now, p), 3) for p in pids}
            samples.append(self._model(device, now, fraction, processes))
        self._prune(now)
        return samples

    def _model(self, device: DeviceInfo, now: float, fraction: float, processes: dict[int, float]) -> GpuSample:
        total = device.memory_total
        used = len(processes) * SIM_CONTEXT_BYTES + int(fraction * SIM_WORKING_FRACTION * total)
        used = min(total, used + self.memory_base.get(device.index, 0))
        reason = self.throttle.get(device.index) if fraction > 0 else None
        temperature = SIM_IDLE_C + fraction * (SIM_MAX_C - SIM_IDLE_C)
        if reason in ("thermal", "hw_thermal"):
            temperature = max(temperature, SIM_THROTTLED_C)
        return GpuSample(
            time=now,
            node=self.node,
            gpu_uuid=device.uuid,
            gpu_index=device.index,
            name=device.name,
            utilization_gpu=round(100.0 * fraction, 3),
            utilization_memory=round(100.0 * fraction * SIM_MEMORY_UTIL_RATIO, 3),
            memory_used=used,
            memory_total=total,
            power_w=round(SIM_IDLE_W + fraction * (SIM_MAX_W - SIM_IDLE_W), 3),
            temperature_c=round(temperature, 3),
            sm_clock_mhz=(SIM_THROTTLED_MHZ if reason else SIM_BUSY_MHZ) if fraction > 0 else SIM_IDLE_MHZ,
            encoder=0.0,
            decoder=0.0,
            throttle_reasons=(reason,) if reason else (() if fraction > 0 else ("idle",)),
            sm_activity=None,  # GPM is not simulated
            processes=processes,
            process_memory={p: SIM_CONTEXT_BYTES for p in processes},
            backend=self.backend,
        )

    def uuid_of_pid(self, pid: int) -> str | None:
        return self._pids.get(pid)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- choice


def open_backend(
    kind: str = "auto",
    node: str = "",
    simulated_gpus: int = 1,
    nvml: Any = None,
    process_interval_s: float = 2.0,
    **simulated: Any,
) -> GpuBackend:
    """The backend asked for: "real" (NVML, or NvmlUnavailable saying why not),
    "simulated", or "auto": real when NVML starts and sees at least one GPU, else
    simulated with `simulated_gpus` devices (`simulated` holds SimulatedNvml's options).
    """
    if kind not in BACKENDS:
        raise ClusterError(f"unknown GPU backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    if kind in ("auto", "real"):
        try:
            real = RealNvml(node=node, nvml=nvml, process_interval_s=process_interval_s)
        except NvmlUnavailable as exc:
            if kind == "real":
                raise NvmlUnavailable(
                    f"the real GPU backend was asked for, but {exc}; on a machine without an NVIDIA GPU "
                    "use the simulated backend (or auto)"
                ) from None
        else:
            if real.devices():
                return real
            real.close()
            if kind == "real":
                raise NvmlUnavailable(
                    "the real GPU backend was asked for, but NVML sees no GPU on this machine; "
                    "use the simulated backend (or auto)"
                )
    return SimulatedNvml(gpus=simulated_gpus, node=node, **simulated)


def cuda_visible_entry(environ: Mapping[str, str] | None = None) -> str | None:
    """The first entry of CUDA_VISIBLE_DEVICES (an index or a GPU-/MIG- UUID), if any."""
    environ = os.environ if environ is None else environ
    value = (environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip()
    return value if value and value not in ("-1", "NoDevFiles") else None
