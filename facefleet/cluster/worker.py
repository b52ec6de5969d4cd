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

import cv2
import ray

from facefleet.cluster.chunk import run_chunk
from facefleet.jobs.spec import ChunkResult, ChunkTask, WorkerInfo
from facefleet.media.image import read_image
from facefleet.pipeline.processor import Processor, build_processor
from facefleet.pipeline.spec import PipelineSpec


class GpuWorker:
    def __init__(
        self, worker_id: int, pipeline: PipelineSpec, threads: int = 0, media_threads: int = 0, slowdown: float = 1.0
    ):
        self.worker_id = worker_id
        self.slowdown = slowdown  # simulated chunks only: this worker's speed relative to others
        self.threads = threads  # onnxruntime threads (CPU provider)
        self.media_threads = media_threads  # decoder and encoder threads per chunk
        if media_threads:
            cv2.setNumThreads(media_threads)
        self._processors: dict[PipelineSpec, Processor] = {}
        self._current: dict[tuple[str, int], int] = {}  # chunk key -> frames done
        self._stop: set[tuple[str, int]] = set()  # chunks called off (another copy won)
        self._lock = threading.Lock()
        self._processor(pipeline)

    def _processor(self, spec: PipelineSpec) -> Processor:
        with self._lock:
            if spec not in self._processors:
                reference = read_image(spec.reference_face).bgr if spec.reference_face else None
                processor = build_processor(spec, threads=self.threads, reference_image=reference)
                processor.warm_up()
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
            node_id=ray.get_runtime_context().get_node_id(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            providers=providers,
        )

    def process(self, task: ChunkTask) -> ChunkResult:
        processor = self._processor(task.pipeline)

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
            )
        finally:
            self._current.pop(task.key, None)
            self._stop.discard(task.key)

    @ray.method(concurrency_group="progress")
    def stop(self, key: tuple[str, int]) -> None:
        """Call a chunk off (before it starts, or between its batches)."""
        self._stop.add(key)

    @ray.method(concurrency_group="progress")
    def progress(self) -> dict[tuple[str, int], int]:
        """Frames done so far of each chunk being processed."""
        return dict(self._current)
