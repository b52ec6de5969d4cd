"""Processors chain stages over a batch of frames; workers only see this interface."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from facefleet.models.manifest import get_model
from facefleet.models.session import CUDA, create_session
from facefleet.pipeline.anonymize import anonymize_frame
from facefleet.pipeline.detect import FaceDetector
from facefleet.pipeline.spec import PipelineSpec

GPU_BATCH = 16
CPU_BATCH = 1  # measured: onnxruntime's CPU provider is slower per frame on batches


@dataclass
class BatchOutput:
    faces: list[int]  # faces found per frame
    seconds: dict[str, float] = field(default_factory=dict)  # time per stage for this batch


class Processor(Protocol):
    spec: PipelineSpec
    batch_size: int

    @property
    def providers(self) -> dict[str, str]:
        """Stage name -> execution provider actually running it."""

    def process(self, frames: list[np.ndarray]) -> BatchOutput:
        """Process BGR frames in place."""


class AnonymizeProcessor:
    """detect -> anonymize."""

    def __init__(self, spec: PipelineSpec, detector: FaceDetector):
        self.spec = spec
        self.detector = detector
        on_gpu = detector.model.provider == CUDA
        self.batch_size = spec.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)

    @property
    def providers(self) -> dict[str, str]:
        return {"detect": self.detector.model.provider}

    def process(self, frames: list[np.ndarray]) -> BatchOutput:
        t0 = time.perf_counter()
        detections = self.detector.detect(frames)
        t1 = time.perf_counter()
        for frame, found in zip(frames, detections):
            anonymize_frame(frame, found.boxes, self.spec.anonymize)
        t2 = time.perf_counter()
        return BatchOutput(faces=[len(d) for d in detections], seconds={"detect": t1 - t0, "anonymize": t2 - t1})


def build_processor(spec: PipelineSpec, threads: int = 0) -> Processor:
    """Load the models a pipeline needs and return its processor."""
    session = create_session(get_model(spec.detector), provider=spec.provider, threads=threads)
    detector = FaceDetector(session, detect_size=spec.detect_size, threshold=spec.threshold)
    return AnonymizeProcessor(spec, detector)
