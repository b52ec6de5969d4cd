"""What a worker runs: the pipeline steps and their options, as a value sent with every chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from facefleet.models.manifest import MODELS
from facefleet.models.session import PRECISIONS, PROVIDER_CHOICES
from facefleet.pipeline.anonymize import AnonymizeOptions

STEPS = ("anonymize", "enhance", "debug", "analyze")
VIDEO_STEPS = ("anonymize", "enhance", "debug")  # steps that change the frames
DEFAULT_RECOGNIZER = "arcface_w600k_r50"


def parse_steps(text: str) -> tuple[str, ...]:
    """`--pipeline enhance,debug` -> ("enhance", "debug"), checked."""
    steps = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [s for s in steps if s not in STEPS]
    if not steps or unknown:
        raise ValueError(f"--pipeline takes steps from {', '.join(STEPS)}, comma-separated; got {text!r}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"--pipeline names a step twice: {text!r}")
    return steps


def models_of_kind(kind: str) -> tuple[str, ...]:
    return tuple(sorted(name for name, spec in MODELS.items() if spec.kind == kind))


def _check_model(option: str, name: str | None, kind: str) -> None:
    if name is not None and name not in models_of_kind(kind):
        raise ValueError(f"{option} must be one of {', '.join(models_of_kind(kind))}; got {name!r}")


@dataclass(frozen=True)
class PipelineSpec:
    steps: tuple[str, ...] = ("anonymize",)
    detector: str = "centerface"
    detect_size: int = 640  # longer side of the detector input, pixels
    threshold: float = 0.5  # detection score threshold
    detector_angles: tuple[int, ...] = (0,)  # also detect on frames turned by these angles
    anonymize: AnonymizeOptions = field(default_factory=AnonymizeOptions)
    batch_size: int = 0  # frames per detector call; 0 picks by provider
    provider: str = "auto"  # auto | cuda | tensorrt | cpu
    precision: str = "fp32"  # fp32 | fp16 (weights and arithmetic in half precision)
    track: bool = True  # link faces over frames; fill one-frame detection gaps
    landmarker: str | None = None  # dense landmarks (facemesh_468, 2dfan4), refining the 5 points
    recognizer: str | None = None  # embeddings for analyze; needed by a reference face
    enhancer: str = "gfpgan_1.4"  # model of the enhance step
    enhancer_blend: int = 80  # percent of the enhanced face blended over the original
    enhancer_weight: float | None = None  # CodeFormer's fidelity weight (None: the model's default)
    mask_blur: float = 0.3  # enhancer paste-back mask blur, fraction of the crop
    mask_padding: tuple[float, float, float, float] = (0, 0, 0, 0)  # percent: top, right, bottom, left
    reference_face: str | None = None  # image of the face to act on; others are left alone
    reference_distance: float = 0.3  # faces closer than this (cosine distance) to it are acted on
    reference_position: int = 0  # which face of the reference image, largest first
    models_dir: str | None = None  # where to look for model files first
    trusted: tuple[tuple[str, str], ...] = ()  # (model name, file) loaded without a checksum

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if not self.steps or unknown:
            raise ValueError(f"unknown pipeline step(s) {unknown or '(none)'}; available: {', '.join(STEPS)}")
        _check_model("--face-detector-model", self.detector, "detector")
        _check_model("--face-landmarker-model", self.landmarker, "landmarker")
        _check_model("--face-recognizer-model", self.recognizer, "recognizer")
        _check_model("--face-enhancer-model", self.enhancer, "enhancer")
        if not 32 <= self.detect_size <= 4096:
            raise ValueError("--detect-size must be between 32 and 4096")
        if not 0 < self.threshold < 1:
            raise ValueError("--thresh must be between 0 and 1")
        if not self.detector_angles or any(a % 90 for a in self.detector_angles):
            raise ValueError("--face-detector-angles takes multiples of 90, e.g. 0,90,270")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.provider not in PROVIDER_CHOICES:
            raise ValueError(f"--execution-providers must be one of {', '.join(PROVIDER_CHOICES)}; got {self.provider!r}")
        if self.batch_size < 0:
            raise ValueError("--batch-size must be positive (0 picks one)")
        if not 0 <= self.enhancer_blend <= 100:
            raise ValueError("--face-enhancer-blend must be between 0 and 100")
        if not 0 <= self.reference_distance <= 2:
            raise ValueError("--reference-face-distance must be between 0 and 2")
        for name, _ in self.trusted:
            if name not in MODELS:
                raise ValueError(f"--trust-model {name}=PATH: {name} is not a model facefleet knows")

    @property
    def name(self) -> str:
        return ",".join(self.steps)

    @property
    def writes_video(self) -> bool:
        return any(step in VIDEO_STEPS for step in self.steps)

    @property
    def gpu_heavy(self) -> bool:
        """Whether a GPU spends most of its time in this pipeline's models (a restoration
        model per face) rather than waiting on the CPU's decode and encode."""
        return "enhance" in self.steps

    @property
    def writes_table(self) -> bool:
        return "analyze" in self.steps

    @property
    def recognizer_model(self) -> str | None:
        """The recognizer this pipeline loads: the one asked for, or the default when a
        reference face needs one."""
        return self.recognizer or (DEFAULT_RECOGNIZER if self.reference_face else None)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model this pipeline loads."""
        names = [self.detector, self.landmarker, self.recognizer_model]
        if "enhance" in self.steps:
            names.append(self.enhancer)
        return tuple(n for n in names if n)
