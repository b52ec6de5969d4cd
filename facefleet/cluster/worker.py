"""GpuWorker: a Ray actor holding the stage models and processing chunks.

One per GPU (Ray sets CUDA_VISIBLE_DEVICES for num_gpus=1); with no GPU the same class
runs its stages on the CPU provider. Models are loaded once and warmed up when the
worker starts; processors for other pipeline settings are built on first use and kept.
The actor processes its in-flight chunks concurrently (Ray max_concurrency): each chunk
has its own decode and encode threads, and they share the models, so the encoders of
several chunks keep the CPU cores busy while one GPU serves them all.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import cv2
import ray

from facefleet.cluster.chunk import run_chunk
from facefleet.cluster.nvml import gpu_memory
from facefleet.cluster.reporter import REPORTER_PREFIX, worker_gpu_uuid
from facefleet.jobs.spec import ChunkResult, ChunkTask, WorkerInfo
from facefleet.media.image import read_image
from facefleet.pipeline.processor import Processor, build_processor
from facefleet.pipeline.spec import PipelineSpec


BUSY_FLUSH_S = 0.4
SHARE_HEADROOM = 0.9  # of a worker's share of GPU memory, for onnxruntime's arena


def process_started() -> float | None:
    """This process's start, in time.time() seconds (Linux /proc; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def shared_memory_limit(gpu_share: float) -> int:
    """onnxruntime's CUDA memory limit for a worker that gets `gpu_share` of a GPU (bytes;
    0 for a whole GPU or no GPU). Uses the smallest GPU NVML sees on this node, since
    NVML's numbering does not follow CUDA_VISIBLE_DEVICES."""
    if gpu_share >= 1:
        return 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            totals = [
                pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                for i in range(pynvml.nvmlDeviceGetCount())
            ]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0  # no NVML: no GPU whose memory needs sharing
    return int(min(totals) * gpu_share * SHARE_HEADROOM) if totals else 0


class GpuWorker:
    def __init__(
        self,
        worker_id: int,
        pipeline: PipelineSpec,
        threads: int = 0,
        media_threads: int = 0,
        slowdown: float = 1.0,
        gpu_share: float = 1.0,
    ):
        born = process_started()
        self.start_seconds = {"process": round(time.time() - born, 3)} if born else {}
        self.worker_id = worker_id
        self.gpu_mem_limit = shared_memory_limit(gpu_share)
        self.slowdown = slowdown  # simulated chunks only: this worker's speed relative to others
        self.threads = threads  # onnxruntime threads (CPU provider)
        self.media_threads = media_threads  # decoder threads per chunk (x264 runs a fixed count: deterministic segments)
        if media_threads:
            cv2.setNumThreads(media_threads)
        self._processors: dict[PipelineSpec, Processor] = {}
        self._current: dict[tuple[str, int], int] = {}  # chunk key -> frames done
        self._stop: set[tuple[str, int]] = set()  # chunks called off (another copy won)
        self._lock = threading.Lock()
        self._processor(pipeline, timed=True)
        self.node_id = ray.get_runtime_context().get_node_id()
        # after the models' sessions exist: on a real GPU, NVML lists this PID then
        t = time.perf_counter()
        self.gpu_uuid, self.gpu_backend = worker_gpu_uuid(node=self.node_id)
        self.start_seconds["gpu"] = round(time.perf_counter() - t, 3)
        self._busy: list[tuple[str, float, float, int]] = []  # for a simulated GPU's reporter
        self._busy_sent = time.monotonic()

    def _processor(self, spec: PipelineSpec, timed: bool = False) -> Processor:
        """The processor for `spec`, built and warmed up on first use; `timed`: record how
        long each took in start_seconds (the worker's own pipeline, at its start)."""
        with self._lock:
            if spec not in self._processors:
                t0 = time.perf_counter()
                reference = read_image(spec.reference_face).bgr if spec.reference_face else None
                processor = build_processor(
                    spec, threads=self.threads, reference_image=reference, gpu_mem_limit=self.gpu_mem_limit
                )
                t1 = time.perf_counter()
                processor.warm_up()
                if timed:
                    self.start_seconds.update(models=round(t1 - t0, 3), warm_up=round(time.perf_counter() - t1, 3))
                self._processors[spec] = processor
            return self._processors[spec]

    def info(self) -> WorkerInfo:
        providers: dict[str, str] = {}
        for processor in self._processors.values():
            providers.update(processor.providers)
        return WorkerInfo(
            worker_id=self.worker_id,
            pid=os.getpid(),
            node=socket.gethostname(),
            node_id=self.node_id,
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            providers=providers,
            gpu_uuid=self.gpu_uuid,
            gpu_backend=self.gpu_backend,
            start_seconds=dict(self.start_seconds),
        )

    def _record_busy(self, start: float, end: float) -> None:
        """A simulated GPU's utilization is this worker's real busy time: send it to the
        node's reporter about twice a second (a real GPU is measured by NVML instead)."""
        if self.gpu_backend != "simulated" or not self.gpu_uuid:
            return
        with self._lock:
            self._busy.append((self.gpu_uuid, start, end, os.getpid()))
            if time.monotonic() - self._busy_sent < BUSY_FLUSH_S:
                return
            batch, self._busy, self._busy_sent = self._busy, [], time.monotonic()
        try:
            ray.get_actor(f"{REPORTER_PREFIX}-{self.node_id}").record_busy_many.remote(batch)
        except ValueError:
            pass  # no reporter on this node (none started)

    def process(self, task: ChunkTask) -> ChunkResult:
        processor = self._processor(task.pipeline)
        self._fit_batch(processor)

        def progress(frames: int) -> None:
            self._current[task.key] = frames

        try:
            return run_chunk(
                task,
                processor,
                progress,
                worker_id=self.worker_id,
                threads=self.media_threads,
                slowdown=self.slowdown,
                should_stop=lambda: task.key in self._stop,
                busy=self._record_busy,
            )
        finally:
            self._current.pop(task.key, None)
            self._stop.discard(task.key)

    def _fit_batch(self, processor: Processor) -> None:
        """Size the next chunk's batches to the GPU memory left (real GPUs only: a simulated
        GPU has no memory to run short of)."""
        if self.gpu_backend != "real" or not self.gpu_uuid or not processor.on_gpu:
            return
        memory = gpu_memory(self.gpu_uuid, pid=os.getpid())  # what others leave this worker
        if memory is not None:
            processor.fit_to_memory(*memory)

    @ray.method(concurrency_group="progress")
    def stop(self, key: tuple[str, int]) -> None:
        """Call a chunk off (before it starts, or between its batches)."""
        self._stop.add(key)

    @ray.method(concurrency_group="progress")
    def progress(self) -> dict[tuple[str, int], int]:
        """Frames done so far of each chunk being processed."""
        return dict(self._current)
