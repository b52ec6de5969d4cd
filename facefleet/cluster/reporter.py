"""NvmlReporter: samples a node's GPUs on a thread into a bounded ring buffer.

One reporter runs per node (a Ray actor with num_gpus=0 and num_cpus=0, pinned to its
node by `start_reporters`); the controller pulls windowed aggregates and raw samples
from it. With the simulated backend (no GPU), workers or the controller feed it busy
intervals through `record_busy`; every sample and aggregate then says "simulated".

The reporter measures its own cost: the CPU time of its sampling thread over the wall
time it has run (`overhead()`). At the default 0.5 s interval it was 0.35 % of one core
with real NVML on one H100 (about 0.3 ms a sample plus 1.3 ms for per-process
utilization every 2 s) and 0.1 % with 8 simulated GPUs on the 2-core machine
(bench/results/reporter_overhead_*.json). The cost grows with the GPUs of a node: raise
`process_interval_s` or the interval on 8-GPU nodes if it matters.
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from facefleet.cluster.nvml import (
    GpuBackend,
    GpuSample,
    NvmlUnavailable,
    RealNvml,
    SimulatedNvml,
    cuda_visible_entry,
    open_backend,
    simulated_uuid,
)
from facefleet.errors import ClusterError

DEFAULT_INTERVAL_S = 0.5
DEFAULT_HISTORY_S = 600.0  # the ring buffer keeps the last 10 minutes
START_TIMEOUT_S = 60
# Simulated samples describe the window that ended this long ago, so busy intervals that
# workers flush every ~0.5 s have arrived before their window is sampled.
DEFAULT_SIMULATED_LAG_S = 1.0


class NvmlReporter:
    """Samples `backend` every `interval` seconds on a daemon thread.

    `backend` is "auto" | "real" | "simulated" (see `open_backend`) or a backend object.
    The simulated backend gets `simulated_gpus` devices whose utilization window is the
    sampling interval, so the mean of its samples is the busy fraction over time, and
    its samples lag `simulated_lag_s` behind (see SimulatedNvml); the real one reads
    per-process utilization every `process_interval_s` (its costly call).
    """

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_S,
        backend: str | GpuBackend = "auto",
        node: str | None = None,
        history_s: float = DEFAULT_HISTORY_S,
        simulated_gpus: int = 1,
        start: bool = True,
        process_interval_s: float = 2.0,
        simulated_lag_s: float = DEFAULT_SIMULATED_LAG_S,
    ):
        if interval <= 0:
            raise ClusterError("--sample-interval must be positive")
        self.interval = float(interval)
        self.node = node if node is not None else socket.gethostname()
        self.hostname = socket.gethostname()
        if isinstance(backend, str):
            backend = open_backend(
                backend,
                node=self.node,
                simulated_gpus=simulated_gpus,
                process_interval_s=process_interval_s,
                window_s=self.interval,
                lag_s=simulated_lag_s,
            )
        self.backend: GpuBackend = backend
        self._devices = {d.uuid: d for d in backend.devices()}
        self._ticks: deque[list[GpuSample]] = deque(maxlen=max(1, math.ceil(history_s / self.interval)))
        self._lock = threading.Lock()  # guards the buffer and the backend (its calls are not thread-safe)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sample_cpu = 0.0  # CPU seconds spent inside sample_once (any thread)
        self._samples_taken = 0
        self._errors = 0
        self._last_error: str | None = None
        self._started_wall = time.monotonic()
        self._started_process_cpu = time.process_time()
        self._thread_cpu_at_start = 0.0
        self._thread_cpu_final: float | None = None  # the thread's CPU seconds once it ended
        self._stopped_wall: float | None = None
        if start:
            self.start()

    # -- sampling

    def start(self) -> None:
        if self._thread is not None:
            return
        self._started_wall = time.monotonic()
        self._started_process_cpu = time.process_time()
        self._thread = threading.Thread(target=self._run, name="nvml-reporter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._thread_cpu_at_start = time.thread_time()
        deadline = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            deadline += self.interval
            delay = deadline - time.monotonic()
            if delay < 0:  # fell behind (a slow NVML call): skip the missed ticks
                deadline = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                break
        self._thread_cpu_final = time.thread_time() - self._thread_cpu_at_start

    def sample_once(self, now: float | None = None) -> list[GpuSample]:
        """Take one sample of every GPU into the ring buffer (the thread calls this)."""
        cpu = time.thread_time()
        try:
            with self._lock:
                if now is not None and isinstance(self.backend, SimulatedNvml):
                    samples = self.backend.sample(now)
                else:
                    samples = self.backend.sample()
                self._ticks.append(samples)
                self._samples_taken += 1
        except Exception as exc:  # a broken backend must not kill the thread
            samples = []
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
        self._sample_cpu += time.thread_time() - cpu
        return samples

    def stop(self) -> None:
        if self._stopped_wall is None:
            self._stopped_wall = time.monotonic()
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.interval))
        with self._lock:
            self.backend.close()

    # -- what the controller pulls

    def info(self) -> dict[str, Any]:
        ray = sys.modules.get("ray")  # only when running under Ray: never imported here
        ray_node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
        return {
            "node": self.node,
            "ray_node_id": ray_node,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "backend": self.backend.backend,
            "simulated": self.backend.backend == "simulated",
            "interval_s": self.interval,
            "simulated_lag_s": getattr(self.backend, "lag_s", None),
            "history_ticks": self._ticks.maxlen,
            "devices": [asdict(d) for d in self._devices.values()],
        }

    def samples(self, since: float = 0.0) -> list[GpuSample]:
        """Raw samples taken after `since` (time.time()), oldest first."""
        with self._lock:
            ticks = list(self._ticks)
        return [s for tick in ticks for s in tick if s.time > since]

    def latest(self) -> list[GpuSample]:
        with self._lock:
            return list(self._ticks[-1]) if self._ticks else []

    def aggregates(self, window_s: float = 30.0, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per GPU UUID, over the samples of the last `window_s` seconds: mean and max
        utilization, max memory used, mean power, max temperature, whether a limiting
        throttle reason showed, per-process mean SM utilization, and the backend that
        made the numbers ("simulated" when they are not measurements)."""
        now = time.time() if now is None else now
        recent = [s for s in self.samples(since=now - window_s) if s.time <= now]
        by_uuid: dict[str, list[GpuSample]] = {uuid: [] for uuid in self._devices}
        for s in recent:
            by_uuid.setdefault(s.gpu_uuid, []).append(s)
        return {uuid: self._aggregate(uuid, samples, window_s) for uuid, samples in by_uuid.items()}

    def _aggregate(self, uuid: str, samples: list[GpuSample], window_s: float) -> dict[str, Any]:
        device = self._devices.get(uuid)
        reasons = sorted({r for s in samples for r in (s.throttle_reasons or ())})
        pids = sorted({p for s in samples for p in (s.processes or ())})
        return {
            "uuid": uuid,
            "index": device.index if device else (samples[0].gpu_index if samples else None),
            "name": device.name if device else (samples[0].name if samples else None),
            "node": self.node,
            "backend": samples[0].backend if samples else self.backend.backend,
            "window_s": window_s,
            "samples": len(samples),
            "util_mean": _mean(s.utilization_gpu for s in samples),
            "util_max": _max(s.utilization_gpu for s in samples),
            "memory_util_mean": _mean(s.utilization_memory for s in samples),
            "memory_used_max": _max(s.memory_used for s in samples),
            "memory_total": device.memory_total if device else _max(s.memory_total for s in samples),
            "power_mean": _mean(s.power_w for s in samples),
            "temperature_max": _max(s.temperature_c for s in samples),
            "sm_clock_mean": _mean(s.sm_clock_mhz for s in samples),
            "encoder_mean": _mean(s.encoder for s in samples),
            "decoder_mean": _mean(s.decoder for s in samples),
            "sm_activity_mean": _mean(s.sm_activity for s in samples),
            "sm_activity_max": _max(s.sm_activity for s in samples),
            "throttled": any(s.throttled for s in samples),
            "throttle_reasons": reasons,
            # mean over the samples that read processes (None: not read at that sample)
            "processes": {p: _mean(s.processes.get(p) for s in samples if s.processes is not None) for p in pids},
        }

    def overhead(self) -> dict[str, float]:
        """The reporter's own cost: CPU seconds of sampling (thread CPU time) over the wall
        seconds it ran, as % of one core; `process_cpu_seconds` is the whole process over
        the same time (in a Ray actor it includes Ray's own threads)."""
        wall = (self._stopped_wall or time.monotonic()) - self._started_wall
        cpu = self._thread_cpu()
        return {
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "percent_of_one_core": 100.0 * cpu / wall if wall > 0 else 0.0,
            "process_cpu_seconds": time.process_time() - self._started_process_cpu,
            "samples": float(self._samples_taken),
            "errors": float(self._errors),
        }

    def _thread_cpu(self) -> float:
        """CPU time of the sampling thread since it started (all of it, waking up
        included), or of the sample_once calls where that thread's clock is not readable
        from here (no pthread_getcpuclockid, or no thread: sampling driven by hand)."""
        if self._thread_cpu_final is not None:
            return self._thread_cpu_final
        thread = self._thread
        clock = getattr(time, "pthread_getcpuclockid", None)
        if thread is not None and thread.is_alive() and clock is not None and thread.ident is not None:
            try:
                return time.clock_gettime(clock(thread.ident)) - self._thread_cpu_at_start
            except (OSError, ValueError):
                pass
        return self._sample_cpu

    def last_error(self) -> str | None:
        return self._last_error

    # -- feeding the simulated backend, asking who is where

    def record_busy(self, uuid: str, start: float, end: float | None = None, pid: int | None = None) -> bool:
        """GPU `uuid` was busy (a worker inside stage calls) from `start` to `end`
        (time.time() seconds; end=None: still busy). Only the simulated backend uses
        this; the real one measures and ignores it (returns False)."""
        if not isinstance(self.backend, SimulatedNvml):
            return False
        with self._lock:
            self.backend.record_busy(uuid, start, end, pid)
        return True

    def record_busy_many(self, intervals: Iterable[tuple[str, float, float | None, int | None]]) -> bool:
        """Several `record_busy` calls in one (uuid, start, end, pid) each: one Ray call
        per flush instead of one per batch."""
        if not isinstance(self.backend, SimulatedNvml):
            return False
        with self._lock:
            for uuid, start, end, pid in intervals:
                self.backend.record_busy(uuid, start, end, pid)
        return True

    def assign(self, pid: int, uuid: str) -> bool:
        """Tell the simulated backend that worker `pid` works on GPU `uuid`."""
        if not isinstance(self.backend, SimulatedNvml):
            return False
        with self._lock:
            self.backend.assign(pid, uuid)
        return True

    def uuid_of_pid(self, pid: int) -> str | None:
        return gpu_uuid_for_pid(self.backend, pid, lock=self._lock)


def _mean(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _max(values: Iterable[float | int | None]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def gpu_uuid_for_pid(backend: GpuBackend, pid: int, lock: threading.Lock | None = None) -> str | None:
    """The UUID of the GPU on which process `pid` has a context, or None (no context yet,
    not found, or NVML failed)."""
    try:
        if lock is None:
            return backend.uuid_of_pid(pid)
        with lock:
            return backend.uuid_of_pid(pid)
    except Exception:
        return None


def worker_gpu_uuid(
    pid: int | None = None,
    node: str = "",
    backend: GpuBackend | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """(UUID of this worker's GPU, backend name) for a GpuWorker to report.

    Real NVML: the GPU on which `pid` (default: this process) has a compute context,
    so call it after the CUDA session is created; when NVML does not list the PID
    (a container with its own PID namespace), the only GPU NVML sees, or
    CUDA_VISIBLE_DEVICES when it names a UUID, or an index with
    CUDA_DEVICE_ORDER=PCI_BUS_ID (then CUDA's order is NVML's); None for a process that
    CUDA_VISIBLE_DEVICES="" hides every GPU from (a CPU worker). No NVML: the simulated
    UUID of the fake GPU Ray assigned (CUDA_VISIBLE_DEVICES index) on `node`, which must
    be the node string the node's reporter uses (start_reporters uses the Ray node id).
    """
    environ = dict(os.environ) if environ is None else environ
    pid = os.getpid() if pid is None else pid
    entry = cuda_visible_entry(environ)
    # Ray hides every GPU from a process given none (CUDA_VISIBLE_DEVICES=""): a CPU worker
    hidden = "CUDA_VISIBLE_DEVICES" in environ and entry is None
    own = backend is None
    if backend is None:
        try:
            backend = RealNvml(node=node)
        except NvmlUnavailable:
            backend = None
    if backend is not None and backend.backend == "real":
        try:
            uuid = gpu_uuid_for_pid(backend, pid)
            devices = backend.devices()
            if uuid is None and hidden:
                return None, "real"
            if uuid is None and len(devices) == 1:
                uuid = devices[0].uuid
            if uuid is None and entry is not None:
                if entry.startswith(("GPU-", "MIG-")):
                    uuid = entry
                elif entry.isdigit() and environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
                    uuid = next((d.uuid for d in devices if d.index == int(entry)), None)
            return uuid, "real"
        finally:
            if own:
                backend.close()
    if backend is not None:  # simulated
        uuid = gpu_uuid_for_pid(backend, pid)
        if uuid is not None:
            return uuid, "simulated"
    if entry is not None and entry.isdigit():
        return simulated_uuid(int(entry), node), "simulated"
    return None, "simulated"


# --------------------------------------------------------------------------- on Ray


REPORTER_PREFIX = "facefleet-nvml"  # reporters are named PREFIX-NODEID


def start_reporters(
    interval: float = DEFAULT_INTERVAL_S,
    backend_kind: str = "auto",
    history_s: float = DEFAULT_HISTORY_S,
    name_prefix: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
    wait: bool = True,
    **reporter_options: Any,
) -> dict[str, Any]:
    """One NvmlReporter actor on every alive node: {Ray node id: actor handle}.

    With `wait=False` the actors are created and not waited for: start the workers
    meanwhile, then call `await_reporters` (each actor is a process to spawn and import,
    about a second, which otherwise came before the workers' start).

    Each is pinned with a hard node-affinity strategy and takes no GPU and no CPU, so it
    never competes with workers for logical resources. A simulated backend gets as many
    fake GPUs as the node advertises. With `name_prefix`, the actors are named
    PREFIX-NODEID and an existing one is reused (a restarted controller finds them).
    `reporter_options` go to NvmlReporter (process_interval_s, simulated_lag_s).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_gpus=0, num_cpus=0)(NvmlReporter)
    actors: dict[str, Any] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        node_id = node["NodeID"]
        options: dict[str, Any] = {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
            "max_restarts": 3,
        }
        if name_prefix:
            options |= {"name": f"{name_prefix}-{node_id}", "get_if_exists": True}
        gpus = int(node.get("Resources", {}).get("GPU", 0))
        actors[node_id] = remote.options(**options).remote(
            interval, backend_kind, node=node_id, history_s=history_s, simulated_gpus=gpus, **reporter_options
        )
    if wait:
        await_reporters(actors, timeout_s)
    return actors


def await_reporters(actors: dict[str, Any], timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until every reporter answers; stop them all and raise ClusterError if one
    does not start. A reporter whose node is gone (Ray still listed it alive: it takes
    about 16 s to declare a killed node dead) is dropped from `actors` with a warning."""
    import ray

    calls = {actor.info.remote(): node for node, actor in actors.items()}
    try:
        for ref, node in calls.items():
            try:
                ray.get(ref, timeout=timeout_s)
            except ray.exceptions.ActorUnschedulableError:
                del actors[node]
                print(f"warning: no GPU reporter on node {node[:12]}: the node is gone", file=sys.stderr, flush=True)
    except ray.exceptions.GetTimeoutError:
        stop_reporters(actors)
        raise ClusterError(f"the GPU reporters did not start within {timeout_s:.0f} s") from None
    except ray.exceptions.RayActorError as exc:
        stop_reporters(actors)
        # An error raised in the constructor comes back as text (its traceback); its last
        # line is "module.ErrorClass: message".
        lines = str(getattr(exc, "error_msg", None) or exc).strip().splitlines()
        reason = re.sub(r"^[\w.]+: ", "", lines[-1].strip()) if lines else type(exc).__name__
        raise ClusterError(f"the GPU reporters could not start: {reason}") from None


def stop_reporters(actors: dict[str, Any]) -> None:
    """Stop sampling and end the reporter actors."""
    import ray

    refs = []
    for actor in actors.values():
        try:
            refs.append(actor.stop.remote())
        except Exception:
            pass
    try:
        ray.get(refs, timeout=10)
    except Exception:
        pass
    for actor in actors.values():
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
