"""Processors: a pipeline's models, loaded once, and the runs that chain its stages.

A worker holds one Processor per pipeline spec and processes several chunks at once, so
everything with per-chunk state (tracks, frames held back) lives in a `PipelineRun`,
made fresh for every chunk; the models are shared between runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from facefleet.models.manifest import get_model
from facefleet.models.session import CUDA, create_session
from facefleet.errors import ModelError
from facefleet.pipeline.analyze import AnalyzeStage
from facefleet.pipeline.debug import DebugStage
from facefleet.pipeline.detect import FaceDetector
from facefleet.pipeline.faces import FrameItem
from facefleet.pipeline.spec import PipelineSpec
from facefleet.pipeline.stages import AnonymizeStage, DetectStage, Stage
from facefleet.pipeline.track import TrackStage

GPU_BATCH = 16
CPU_BATCH = 1  # measured: onnxruntime's CPU provider is slower per frame on batches


class PipelineRun:
    """The stages of one chunk, in order, with the time each took."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        self.seconds: dict[str, float] = {stage.name: 0.0 for stage in stages}

    @property
    def rows(self) -> list[dict]:
        """Face rows collected by an analyze step (empty without one)."""
        return [row for stage in self.stages if isinstance(stage, AnalyzeStage) for row in stage.rows]

    def _through(self, index: int, stage: Stage, items: list[FrameItem], flush: bool) -> list[FrameItem]:
        t0 = time.perf_counter()
        out = stage.process(items)
        if flush:
            out = out + stage.flush()
        self.seconds[stage.name] += time.perf_counter() - t0
        return out

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        """Frames in decode order in; the frames every stage is done with out, in order."""
        for i, stage in enumerate(self.stages):
            items = self._through(i, stage, items, flush=False)
        return items

    def flush(self) -> list[FrameItem]:
        """Everything still held back, after the last frame went in."""
        items: list[FrameItem] = []
        for i, stage in enumerate(self.stages):
            items = self._through(i, stage, items, flush=True)
        return items


class Processor:
    """A pipeline's shared models and how to chain them; `run()` starts a chunk."""

    def __init__(self, spec: PipelineSpec, detector: FaceDetector, make_stages: Callable[[int], list[Stage]]):
        self.spec = spec
        self.detector = detector
        self._make_stages = make_stages
        on_gpu = detector.model.provider == CUDA
        self.batch_size = spec.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)

    @property
    def providers(self) -> dict[str, str]:
        """Stage name -> execution provider actually running it."""
        return {"detect": self.detector.model.provider}

    def run(self, chunk: int = 0) -> PipelineRun:
        """Fresh stages for one chunk; track ids of chunk k start at k * TRACK_ID_STRIDE."""
        return PipelineRun(self._make_stages(chunk))

    def warm_up(self) -> None:
        """One frame through the stages: the first model calls are slow (allocation, kernels)."""
        run = self.run()
        run.process([FrameItem(0, 0, np.zeros((360, 640, 3), np.uint8))])
        run.flush()


def pipeline_context(spec: PipelineSpec) -> int:
    """Frames of context a chunk of this pipeline decodes on each side."""
    return 1 if spec.track else 0


TRACK_ID_STRIDE = 1_000_000  # track ids of different chunks never collide


def build_processor(spec: PipelineSpec, threads: int = 0) -> Processor:
    """Load the models a pipeline needs and return its processor."""
    session = create_session(get_model(spec.detector), provider=spec.provider, threads=threads)
    detector = FaceDetector(session, detect_size=spec.detect_size, threshold=spec.threshold)
    if "enhance" in spec.steps:
        raise ModelError("the enhance step needs a face enhancer model, which this version cannot load yet")

    def stages(chunk: int) -> list[Stage]:
        chain: list[Stage] = [DetectStage(detector)]
        if spec.track:
            chain.append(TrackStage(first_id=chunk * TRACK_ID_STRIDE))
        for step in spec.steps:
            if step == "anonymize":
                chain.append(AnonymizeStage(spec.anonymize))
            elif step == "debug":
                chain.append(DebugStage())
            elif step == "analyze":
                chain.append(AnalyzeStage())
        return chain

    return Processor(spec, detector, stages)
