"""What a worker runs: the pipeline and its options, as a value sent with every chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from facefleet.pipeline.anonymize import AnonymizeOptions

PIPELINES = ("anonymize",)
DETECTORS = ("centerface", "yunet")


@dataclass(frozen=True)
class PipelineSpec:
    name: str = "anonymize"
    detector: str = "centerface"
    detect_size: int = 640  # longer side of the detector input, pixels
    threshold: float = 0.5  # detection score threshold
    anonymize: AnonymizeOptions = field(default_factory=AnonymizeOptions)
    batch_size: int = 0  # frames per detector call; 0 picks by provider
    provider: str = "auto"  # auto | cuda | cpu
    track: bool = True  # link faces over frames; fill one-frame detection gaps

    def __post_init__(self) -> None:
        if self.name not in PIPELINES:
            raise ValueError(f"unknown pipeline {self.name!r}; available: {', '.join(PIPELINES)}")
        if self.detector not in DETECTORS:
            raise ValueError(f"--face-detector-model must be one of {', '.join(DETECTORS)}")
        if not 32 <= self.detect_size <= 4096:
            raise ValueError("--detect-size must be between 32 and 4096")
        if not 0 < self.threshold < 1:
            raise ValueError("--thresh must be between 0 and 1")
        if self.batch_size < 0:
            raise ValueError("--batch-size must be positive (0 picks one)")
