"""Stages: the steps a pipeline chains over batches of frames.

A stage takes FrameItems and returns the ones it is done with; a streaming stage (track)
may hold frames back and hand them over later or at `flush`. Stages that hold models share
them between runs; per-run state lives in the stage objects a run creates.
"""

from __future__ import annotations

from typing import Protocol

from facefleet.pipeline.anonymize import AnonymizeOptions, anonymize_frame
from facefleet.pipeline.detect import Detections, FaceDetector
from facefleet.pipeline.faces import Face, FrameItem


class Stage(Protocol):
    name: str
    context: int  # frames of context this stage needs on each side of a chunk

    def process(self, items: list[FrameItem]) -> list[FrameItem]: ...

    def flush(self) -> list[FrameItem]: ...


def faces_of(found: Detections) -> list[Face]:
    return [Face(box=b, score=float(s), landmarks5=l) for b, s, l in zip(found.boxes, found.scores, found.landmarks)]


class DetectStage:
    name = "detect"
    context = 0

    def __init__(self, detector: FaceDetector):
        self.detector = detector

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        if items:
            for item, found in zip(items, self.detector.detect([item.image for item in items])):
                item.faces = faces_of(found)
        return items

    def flush(self) -> list[FrameItem]:
        return []


class AnonymizeStage:
    name = "anonymize"
    context = 0

    def __init__(self, options: AnonymizeOptions):
        self.options = options

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        for item in items:
            if item.faces:
                boxes = [face.box for face in item.faces]
                anonymize_frame(item.image, _stack(boxes), self.options)
        return items

    def flush(self) -> list[FrameItem]:
        return []


def _stack(boxes):
    import numpy as np

    return np.stack(boxes).astype(np.float32)
