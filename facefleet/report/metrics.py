"""The controller's Prometheus exporter: GPUs, jobs, the queue, scaling, workers.

`Metrics` keeps the latest values in plain state and turns them into metric families
when Prometheus scrapes (a custom collector on its own `CollectorRegistry`, never the
process-wide one), so a forgotten job or a GPU that stopped reporting leaves no stale
series behind. `serve()` starts prometheus_client's HTTP server on a daemon thread,
bound to 127.0.0.1 unless another host is asked for; `stop()` closes it.

Names follow Prometheus conventions: base units (`_bytes`, `_watts`, `_celsius`,
`_hertz`, `_seconds`), fractions as `_ratio` (0-1, not percent) and counters ending in
`_total`. `METRICS` lists every exported metric; `EXPORTED_NAMES` every name a query
may use (the Grafana dashboard test checks its queries against it). docs/monitoring.md
describes them.

GPU series carry the labels node, gpu_uuid, gpu_index (NVML's index, not CUDA's),
gpu_name and backend ("real" | "simulated"): simulated GPUs ("SIM-GPU-..." UUIDs,
backend="simulated") cannot pass for measured ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from facefleet.cluster.nvml import GpuSample
from facefleet.errors import FacefleetError

DEFAULT_PORT = 9480  # not 9400: dcgm-exporter's default, often running on GPU nodes
DEFAULT_HOST = "127.0.0.1"
GPU_STALE_S = 120.0  # a GPU whose latest sample is older than this is no longer exported

GPU_LABELS = ("node", "gpu_uuid", "gpu_index", "gpu_name", "backend")
JOB_LABELS = ("job_id", "job_name")
WORKER_LABELS = ("worker", "node")


@dataclass(frozen=True)
class MetricDef:
    name: str  # as exported; a counter's name ends in _total
    kind: str  # "gauge" | "counter"
    help: str
    labels: tuple[str, ...] = ()

    def family(self) -> Metric:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.name, self.help, labels=list(self.labels))


def _scaled(attribute: str, factor: float = 1.0) -> Callable[[GpuSample], float | None]:
    def read(sample: GpuSample) -> float | None:
        value = getattr(sample, attribute)
        return float(value) * factor if value is not None else None

    return read


def _ratio(attribute: str) -> Callable[[GpuSample], float | None]:
    return _scaled(attribute, 0.01)


def _throttled(sample: GpuSample) -> float | None:
    return None if sample.throttle_reasons is None else float(sample.throttled)


def _gpu(name: str, help: str) -> MetricDef:
    return MetricDef(name, "gauge", help, GPU_LABELS)


# One GPU gauge per entry: how to read it from a GpuSample (None: not reported, no series).
GPU_METRICS: tuple[tuple[MetricDef, Callable[[GpuSample], float | None]], ...] = (
    (_gpu("facefleet_gpu_utilization_ratio", "Fraction of the last sample period a kernel ran on the GPU (0-1)."), _ratio("utilization_gpu")),
    (
        _gpu("facefleet_gpu_memory_copy_utilization_ratio", "Fraction of the last sample period GPU memory was read or written (0-1)."),
        _ratio("utilization_memory"),
    ),
    (_gpu("facefleet_gpu_memory_used_bytes", "GPU memory in use, bytes."), _scaled("memory_used")),
    (_gpu("facefleet_gpu_memory_total_bytes", "GPU memory in all, bytes."), _scaled("memory_total")),
    (_gpu("facefleet_gpu_power_watts", "GPU power draw, watts."), _scaled("power_w")),
    (_gpu("facefleet_gpu_temperature_celsius", "GPU core temperature, degrees Celsius."), _scaled("temperature_c")),
    (_gpu("facefleet_gpu_sm_clock_hertz", "GPU SM clock, hertz."), _scaled("sm_clock_mhz", 1e6)),
    (_gpu("facefleet_gpu_sm_activity_ratio", "GPM SM activity (Hopper and later), 0-1."), _ratio("sm_activity")),
    (_gpu("facefleet_gpu_encoder_utilization_ratio", "NVENC utilization, 0-1."), _ratio("encoder")),
    (_gpu("facefleet_gpu_decoder_utilization_ratio", "NVDEC utilization, 0-1."), _ratio("decoder")),
    (_gpu("facefleet_gpu_throttled", "1 while a limiting clock reason (power cap, thermal, slowdown) is active, else 0."), _throttled),
    (_gpu("facefleet_gpu_last_sample_timestamp_seconds", "Unix time of the GPU's latest sample."), _scaled("time")),
)

JOB_FRAMES_DONE = MetricDef("facefleet_job_frames_done_total", "counter", "Frames of the job processed so far.", JOB_LABELS)
JOB_FRAMES = MetricDef("facefleet_job_input_frames", "gauge", "Frames in the job's input.", JOB_LABELS)
JOB_FPS = MetricDef("facefleet_job_frames_per_second", "gauge", "The job's recent throughput, frames per second.", JOB_LABELS)
JOB_CHUNKS = MetricDef("facefleet_job_chunks", "gauge", "The job's chunks in each state.", JOB_LABELS + ("state",))
JOB_STATE = MetricDef("facefleet_job_state", "gauge", "1 for the job's current state.", JOB_LABELS + ("state",))
QUEUE_JOBS = MetricDef("facefleet_queue_jobs", "gauge", "Jobs waiting or running (not finished).")
QUEUE_CHUNKS = MetricDef("facefleet_queue_chunks", "gauge", "Chunks not yet done, over all jobs.")
SCALING_REQUESTS = MetricDef(
    "facefleet_scaling_requests_total", "counter", "Requests made to the Ray autoscaler (a release to 0 GPUs counts)."
)
SCALING_GPUS = MetricDef("facefleet_scaling_requested_gpus", "gauge", "GPUs asked of the Ray autoscaler by the latest request.")
WORKER_CHUNKS = MetricDef("facefleet_worker_chunks_done_total", "counter", "Chunks a worker has finished.", WORKER_LABELS)

METRICS: tuple[MetricDef, ...] = tuple(d for d, _ in GPU_METRICS) + (
    JOB_FRAMES_DONE,
    JOB_FRAMES,
    JOB_FPS,
    JOB_CHUNKS,
    JOB_STATE,
    QUEUE_JOBS,
    QUEUE_CHUNKS,
    SCALING_REQUESTS,
    SCALING_GPUS,
    WORKER_CHUNKS,
)
EXPORTED_NAMES: frozenset[str] = frozenset(d.name for d in METRICS)


@dataclass(frozen=True)
class JobSeries:
    job_id: str
    name: str
    frames_done: int
    frames_total: int
    fps: float
    chunks_by_state: dict[str, int]
    state: str

    @property
    def labels(self) -> list[str]:
        return [self.job_id, self.name]


@dataclass
class _State:
    gpus: dict[str, GpuSample] = field(default_factory=dict)  # uuid -> latest sample
    jobs: dict[str, JobSeries] = field(default_factory=dict)
    queue: tuple[int, int] = (0, 0)  # (jobs, chunks)
    scaling_requests: int = 0
    scaling_gpus: int = 0
    worker_chunks: dict[tuple[str, str], int] = field(default_factory=dict)


class Metrics:
    """The exporter. Every update method is thread-safe and cheap (no I/O): call it from
    the controller's loop; a scrape builds the families from the latest values."""

    def __init__(self, gpu_stale_s: float = GPU_STALE_S, clock: Callable[[], float] = time.time):
        self.gpu_stale_s = gpu_stale_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State()
        self._server = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)

    # -- serving

    def serve(self, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
        """Serve /metrics over HTTP on host:port from a daemon thread; port 0 picks a free
        port. Returns the port it listens on."""
        if self._server is not None:
            raise FacefleetError(f"the metrics server already listens on port {self.port}")
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise FacefleetError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "choose another --metrics-port (0 picks a free one)"
            ) from None
        return self.port

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server is not None else None

    def stop(self) -> None:
        """Stop serving and close the listening socket (no-op when not serving)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- updates

    def update_gpus(self, samples: Iterable[GpuSample]) -> None:
        """Keep the newest sample of each GPU (by UUID). GPUs not in `samples` keep their
        last sample until it is `gpu_stale_s` old, then their series go."""
        with self._lock:
            gpus = self._state.gpus
            for s in samples:
                known = gpus.get(s.gpu_uuid)
                if known is None or s.time >= known.time:
                    gpus[s.gpu_uuid] = s

    def update_job(
        self,
        job_id: str,
        name: str,
        frames_done: int,
        frames_total: int,
        fps: float,
        chunks_by_state: dict[str, int],
        state: str,
    ) -> None:
        row = JobSeries(str(job_id), str(name or ""), int(frames_done), int(frames_total), float(fps), dict(chunks_by_state), str(state))
        with self._lock:
            self._state.jobs[row.job_id] = row

    def forget_job(self, job_id: str) -> None:
        """Drop every series of the job."""
        with self._lock:
            self._state.jobs.pop(str(job_id), None)

    def set_queue_depth(self, jobs: int, chunks: int) -> None:
        with self._lock:
            self._state.queue = (int(jobs), int(chunks))

    def scaling_request(self, gpus: int) -> None:
        """The controller asked the autoscaler for `gpus` GPUs (0: released the request)."""
        with self._lock:
            self._state.scaling_requests += 1
            self._state.scaling_gpus = int(gpus)

    def worker_chunk_done(self, worker: int | str, node: str) -> None:
        key = (str(worker), str(node))
        with self._lock:
            self._state.worker_chunks[key] = self._state.worker_chunks.get(key, 0) + 1

    # -- the collector (prometheus_client calls these)

    def describe(self) -> list[Metric]:
        return [d.family() for d in METRICS]

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            state = self._state
            stale = [u for u, s in state.gpus.items() if now - s.time > self.gpu_stale_s]
            for uuid in stale:
                del state.gpus[uuid]
            gpus = sorted(state.gpus.values(), key=lambda s: (s.node, s.gpu_index, s.gpu_uuid))
            jobs = sorted(state.jobs.values(), key=lambda j: j.job_id)
            queue, requests, requested = state.queue, state.scaling_requests, state.scaling_gpus
            worker_chunks = sorted(state.worker_chunks.items())
        yield from self._gpu_families(gpus)
        yield from self._job_families(jobs)
        yield _single(QUEUE_JOBS, queue[0])
        yield _single(QUEUE_CHUNKS, queue[1])
        yield _single(SCALING_REQUESTS, requests)
        yield _single(SCALING_GPUS, requested)
        family = WORKER_CHUNKS.family()
        for (worker, node), count in worker_chunks:
            family.add_metric([worker, node], count)
        yield family

    @staticmethod
    def _gpu_families(gpus: list[GpuSample]) -> Iterator[Metric]:
        for definition, read in GPU_METRICS:
            family = definition.family()
            for s in gpus:
                value = read(s)
                if value is not None:
                    family.add_metric([s.node, s.gpu_uuid, str(s.gpu_index), s.name, s.backend], value)
            yield family

    @staticmethod
    def _job_families(jobs: list[JobSeries]) -> Iterator[Metric]:
        done, frames, fps = JOB_FRAMES_DONE.family(), JOB_FRAMES.family(), JOB_FPS.family()
        chunks, states = JOB_CHUNKS.family(), JOB_STATE.family()
        for job in jobs:
            done.add_metric(job.labels, job.frames_done)
            frames.add_metric(job.labels, job.frames_total)
            fps.add_metric(job.labels, job.fps)
            for chunk_state, count in sorted(job.chunks_by_state.items()):
                chunks.add_metric(job.labels + [chunk_state], count)
            states.add_metric(job.labels + [job.state], 1)
        yield from (done, frames, fps, chunks, states)


def _single(definition: MetricDef, value: float) -> Metric:
    family = definition.family()
    family.add_metric([], value)
    return family
