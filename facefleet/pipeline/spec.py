"""What a worker runs: the pipeline steps and their options, as a value sent with every chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from facefleet.pipeline.anonymize import AnonymizeOptions

STEPS = ("anonymize", "enhance", "debug", "analyze")
VIDEO_STEPS = ("anonymize", "enhance", "debug")  # steps that change the frames
DETECTORS = ("centerface", "yunet")


def parse_steps(text: str) -> tuple[str, ...]:
    """`--pipeline enhance,debug` -> ("enhance", "debug"), checked."""
    steps = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [s for s in steps if s not in STEPS]
    if not steps or unknown:
        raise ValueError(f"--pipeline takes steps from {', '.join(STEPS)}, comma-separated; got {text!r}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"--pipeline names a step twice: {text!r}")
    return steps


@dataclass(frozen=True)
class PipelineSpec:
    steps: tuple[str, ...] = ("anonymize",)
    detector: str = "centerface"
    detect_size: int = 640  # longer side of the detector input, pixels
    threshold: float = 0.5  # detection score threshold
    anonymize: AnonymizeOptions = field(default_factory=AnonymizeOptions)
    batch_size: int = 0  # frames per detector call; 0 picks by provider
    provider: str = "auto"  # auto | cuda | cpu
    track: bool = True  # link faces over frames; fill one-frame detection gaps

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if not self.steps or unknown:
            raise ValueError(f"unknown pipeline step(s) {unknown or '(none)'}; available: {', '.join(STEPS)}")
        if self.detector not in DETECTORS:
            raise ValueError(f"--face-detector-model must be one of {', '.join(DETECTORS)}")
        if not 32 <= self.detect_size <= 4096:
            raise ValueError("--detect-size must be between 32 and 4096")
        if not 0 < self.threshold < 1:
            raise ValueError("--thresh must be between 0 and 1")
        if self.batch_size < 0:
            raise ValueError("--batch-size must be positive (0 picks one)")

    @property
    def name(self) -> str:
        return ",".join(self.steps)

    @property
    def writes_video(self) -> bool:
        return any(step in VIDEO_STEPS for step in self.steps)

    @property
    def writes_table(self) -> bool:
        return "analyze" in self.steps
