"""Stages: the steps a pipeline chains over batches of frames.

A stage takes FrameItems and returns the ones it is done with; a streaming stage (track)
may hold frames back and hand them over later or at `flush`. Stages that hold models share
them between runs; per-run state lives in the stage objects a run creates.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facefleet.pipeline.anonymize import AnonymizeOptions, anonymize_frame
from facefleet.pipeline.detect import Detections, FaceDetector
from facefleet.pipeline.embed import Recognizer, select_reference
from facefleet.pipeline.enhance import Enhancer
from facefleet.pipeline.faces import Face, FrameItem
from facefleet.pipeline.landmarks import refine_five


class Stage(Protocol):
    name: str
    context: int  # frames of context this stage needs on each side of a chunk

    def process(self, items: list[FrameItem]) -> list[FrameItem]: ...

    def flush(self) -> list[FrameItem]: ...


def faces_of(found: Detections) -> list[Face]:
    return [Face(box=b, score=float(s), landmarks5=l) for b, s, l in zip(found.boxes, found.scores, found.landmarks)]


def detections_of(faces: list[Face]) -> Detections:
    if not faces:
        return Detections()
    return Detections(
        boxes=np.stack([f.box for f in faces]).astype(np.float32),
        scores=np.array([f.score for f in faces], np.float32),
        landmarks=np.stack([f.landmarks5 for f in faces]).astype(np.float32),
    )


def five_points(faces: list[Face]) -> np.ndarray:
    return np.stack([f.landmarks5 for f in faces]) if faces else np.zeros((0, 5, 2), np.float32)


class _PerItem:
    """A stage without state or held frames."""

    context = 0

    def flush(self) -> list[FrameItem]:
        return []


class DetectStage(_PerItem):
    name = "detect"

    def __init__(self, detector: FaceDetector):
        self.detector = detector

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        if items:
            for item, found in zip(items, self.detector.detect([item.image for item in items])):
                item.faces = faces_of(found)
        return items


class LandmarkStage(_PerItem):
    """Dense landmarks on every face; the 5 alignment points refined from them where confident."""

    name = "landmarks"

    def __init__(self, landmarker):
        self.landmarker = landmarker

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        with_faces = [item for item in items if item.faces]
        if not with_faces:
            return items
        found = self.landmarker.landmarks([i.image for i in with_faces], [detections_of(i.faces) for i in with_faces])
        for item, dense in zip(with_faces, found):
            refined = refine_five(dense.points, dense.scores, five=five_points(item.faces))
            for face, points, score, five in zip(item.faces, dense.points, dense.scores, refined):
                face.landmarks, face.landmark_score, face.landmarks5 = points, float(score), five
        return items


class EmbedStage(_PerItem):
    """Identity embeddings; with a reference, marks the faces that are not it as unselected."""

    name = "embed"

    def __init__(self, recognizer: Recognizer, reference: np.ndarray | None = None, max_distance: float = 0.3):
        self.recognizer = recognizer
        self.reference = reference
        self.max_distance = max_distance

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        with_faces = [item for item in items if item.faces]
        if not with_faces:
            return items
        embeddings = self.recognizer.embed_faces([i.image for i in with_faces], [five_points(i.faces) for i in with_faces])
        masks = select_reference(embeddings, self.reference, self.max_distance) if self.reference is not None else None
        for k, (item, rows) in enumerate(zip(with_faces, embeddings)):
            for j, (face, row) in enumerate(zip(item.faces, rows)):
                face.embedding = row
                if masks is not None:
                    face.selected = bool(masks[k][j])
        return items


class AnonymizeStage(_PerItem):
    name = "anonymize"

    def __init__(self, options: AnonymizeOptions):
        self.options = options

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        for item in items:
            boxes = [face.box for face in item.faces if face.selected]
            if boxes:
                anonymize_frame(item.image, np.stack(boxes).astype(np.float32), self.options)
        return items


class EnhanceStage(_PerItem):
    name = "enhance"

    def __init__(self, enhancer: Enhancer):
        self.enhancer = enhancer

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        with_faces = [item for item in items if any(f.selected for f in item.faces)]
        if with_faces:
            self.enhancer.enhance(
                [item.image for item in with_faces],
                [five_points(item.faces) for item in with_faces],
                [np.array([f.selected for f in item.faces], bool) for item in with_faces],
            )
        return items
