"""Processors: a pipeline's models, loaded once, and the runs that chain its stages.

A worker holds one Processor per pipeline spec and processes several chunks at once, so
everything with per-chunk state (tracks, frames held back) lives in a `PipelineRun`,
made fresh for every chunk; the models are shared between runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from facefleet.errors import ModelError
from facefleet.models.manifest import get_model
from facefleet.models.session import ModelSession, create_session
from facefleet.models.store import ModelStore, ResolvedModel
from facefleet.pipeline.analyze import AnalyzeStage
from facefleet.pipeline.debug import DebugStage
from facefleet.pipeline.detect import FaceDetector
from facefleet.pipeline.embed import Recognizer, reference_embedding
from facefleet.pipeline.enhance import Enhancer
from facefleet.pipeline.faces import FrameItem
from facefleet.pipeline.landmarks import FaceMesh, Landmarker68, refine_five
from facefleet.pipeline.spec import PipelineSpec
from facefleet.pipeline.stages import (
    AnonymizeStage,
    DetectStage,
    EmbedStage,
    EnhanceStage,
    LandmarkStage,
    Stage,
)
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

    def __init__(
        self,
        spec: PipelineSpec,
        detector: FaceDetector,
        make_stages: Callable[[int], list[Stage]],
        sessions: dict[str, ModelSession] | None = None,
        face_batchers: tuple = (),
    ):
        self.spec = spec
        # stages that run faces `batch_size` at a time (embed, enhance), with their configured size
        self._face_batchers = [(stage, stage.batch_size) for stage in face_batchers]
        self.detector = detector
        self._make_stages = make_stages
        self.sessions = sessions or {"detect": detector.model}
        self.configured_batch = spec.batch_size or (GPU_BATCH if self.on_gpu else CPU_BATCH)
        self.batch_size = self.configured_batch

    @property
    def batch_size(self) -> int:
        """Frames per detector call (halved after an out-of-memory error)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = value
        self.detector.max_batch = value  # also the shape every GPU call keeps (short batches padded)

    def fit_to_memory(self, used: int, total: int) -> int:
        """Set every stage's batch size for the next chunk from its GPU's memory use (bytes):
        the detector's frames per call and the face stages' faces per call. Returns the
        detector's."""
        self.batch_size = batch_for_headroom(self.batch_size, self.configured_batch, used, total)
        for stage, configured in self._face_batchers:
            stage.batch_size = batch_for_headroom(stage.batch_size, configured, used, total)
        return self.batch_size

    @property
    def on_gpu(self) -> bool:
        """Whether the detector runs on a GPU provider."""
        return self.detector.model.on_gpu

    @property
    def providers(self) -> dict[str, str]:
        """Stage name -> execution provider actually running it ("... fp16" in half precision)."""
        return {stage: session.label for stage, session in self.sessions.items()}

    @property
    def checks(self) -> dict[str, str]:
        """Model name -> what vouched for its file: manifest, lock or trusted."""
        return {s.spec.name: getattr(s, "verified_by", "manifest") for s in self.sessions.values()}

    def run(self, chunk: int = 0) -> PipelineRun:
        """Fresh stages for one chunk; track ids of chunk k start at k * TRACK_ID_STRIDE."""
        return PipelineRun(self._make_stages(chunk))

    def warm_up(self) -> None:
        """One frame through the stages: the first model calls are slow (allocation, kernels)."""
        run = self.run()
        run.process([FrameItem(0, 0, np.zeros((360, 640, 3), np.uint8))])
        run.flush()


LOW_HEADROOM = 0.10  # free share of GPU memory below which the batch is halved
HIGH_HEADROOM = 0.30  # free share above which a halved batch grows back


def batch_for_headroom(current: int, configured: int, used: int, total: int) -> int:
    """The batch size (items per model call) for the next chunk, from the GPU's memory use.

    Below LOW_HEADROOM free the batch is halved before an allocation fails; above
    HIGH_HEADROOM a batch that was halved (here or after an out-of-memory error) doubles
    back, never past the configured size. In between, or without a memory reading
    (total <= 0), it stays: every change costs one re-plan of the GPU's convolutions
    (ModelSession.pads_batches), so it moves by halving and doubling only, between chunks.
    """
    if total <= 0:
        return current
    free = max(0.0, (total - used) / total)
    if free < LOW_HEADROOM:
        return max(1, current // 2)
    if free > HIGH_HEADROOM and current < configured:
        return min(configured, current * 2)
    return current


def pipeline_context(spec: PipelineSpec) -> int:
    """Frames of context a chunk of this pipeline decodes on each side."""
    return 1 if spec.track else 0


TRACK_ID_STRIDE = 1_000_000  # track ids of different chunks never collide


class ModelLoader:
    """Sessions for a pipeline's models: found and checked by the model store, or the
    files the user trusts (`--trust-model NAME=PATH`)."""

    def __init__(self, spec: PipelineSpec, threads: int = 0, gpu_mem_limit: int = 0):
        self.spec = spec
        self.threads = threads
        self.gpu_mem_limit = gpu_mem_limit
        self.store = ModelStore(spec.models_dir)
        self.trusted = dict(spec.trusted)

    def resolve(self, name: str) -> ResolvedModel:
        """The model's file, found and checked (or trusted)."""
        model = get_model(name)
        if name in self.trusted:
            return self.store.resolve(self.trusted[name], trust=True, spec=model)
        return self.store.locate(model)

    def session(self, name: str) -> ModelSession:
        return create_session(
            self.resolve(name),
            provider=self.spec.provider,
            threads=self.threads,
            gpu_mem_limit=self.gpu_mem_limit,
            precision=self.spec.precision,
        )


def landmarker_for(session: ModelSession):
    decoder = session.spec.decoder
    if decoder == "facemesh":
        return FaceMesh(session)
    if decoder == "2dfan4":
        return Landmarker68(session)
    raise ModelError(f"{session.spec.name} is not a face-crop landmarker facefleet can run (use facemesh_468 or 2dfan4)")


def reference_of(
    spec: PipelineSpec, image: np.ndarray, detector: FaceDetector, landmarker, recognizer: Recognizer
) -> np.ndarray:
    """The embedding of the reference image's chosen face."""
    found = detector.detect([image])[0]
    five = found.landmarks
    if landmarker is not None and len(found):
        dense = landmarker.landmarks([image], [found])[0]
        five = refine_five(dense.points, dense.scores, five=found.landmarks)
    return reference_embedding(recognizer, image, five, found.boxes, spec.reference_position)


def build_processor(
    spec: PipelineSpec, threads: int = 0, reference_image: np.ndarray | None = None, gpu_mem_limit: int = 0
) -> Processor:
    """Load the models a pipeline needs and return its processor.

    `reference_image` (BGR) is the picture `spec.reference_face` names, read by the caller;
    `gpu_mem_limit` caps each model's CUDA memory (bytes; workers sharing a GPU).
    """
    loader = ModelLoader(spec, threads, gpu_mem_limit)
    sessions = {"detect": loader.session(spec.detector)}
    detector = FaceDetector(
        sessions["detect"], detect_size=spec.detect_size, threshold=spec.threshold, angles=spec.detector_angles
    )
    landmarker = recognizer = enhancer = reference = None
    if spec.landmarker:
        sessions["landmarks"] = loader.session(spec.landmarker)
        landmarker = landmarker_for(sessions["landmarks"])
    if spec.recognizer_model:
        sessions["embed"] = loader.session(spec.recognizer_model)
        recognizer = Recognizer(sessions["embed"])
        if spec.reference_face:
            if reference_image is None:
                raise ValueError("a pipeline with a reference face needs the reference image")
            reference = reference_of(spec, reference_image, detector, landmarker, recognizer)
    if "enhance" in spec.steps:
        sessions["enhance"] = loader.session(spec.enhancer)
        enhancer = Enhancer(
            sessions["enhance"],
            blend=spec.enhancer_blend,
            mask_blur=spec.mask_blur,
            mask_padding=spec.mask_padding,
            weight=spec.enhancer_weight,
        )

    def stages(chunk: int) -> list[Stage]:
        chain: list[Stage] = [DetectStage(detector)]
        if spec.track:
            chain.append(TrackStage(first_id=chunk * TRACK_ID_STRIDE))
        if landmarker is not None:
            chain.append(LandmarkStage(landmarker))
        if recognizer is not None:
            chain.append(EmbedStage(recognizer, reference, spec.reference_distance))
        for step in spec.steps:
            if step == "anonymize":
                chain.append(AnonymizeStage(spec.anonymize))
            elif step == "enhance":
                chain.append(EnhanceStage(enhancer))
            elif step == "debug":
                chain.append(DebugStage())
            elif step == "analyze":
                chain.append(AnalyzeStage())
        return chain

    face_batchers = tuple(stage for stage in (recognizer, enhancer) if stage is not None)
    return Processor(spec, detector, stages, sessions, face_batchers)
