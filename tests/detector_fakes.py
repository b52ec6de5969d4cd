"""Signature-compatible test models: small ONNX graphs, built here, that are NOT trained.

They take the input and give the outputs (names, shapes, layouts) of detector and
landmarker models whose weights cannot be shipped (SCRFD, FaceFusion's RetinaFace,
YOLO face, 2DFAN4), but their outputs are constants designed by the tests, so that the
decoded boxes, scores and landmarks are known exactly. The only use of the input is a
per-image gain, clip(2 * max(pixel), 0, 1): 1 for a white frame and 0 for a black one
under every normalisation used here, which multiplies the scores (or heatmap peaks), so
that per-image handling of a batch can be checked too.

Also here: sessions for the shipped BlazeFace and FaceMesh models until the manifest has
entries for them, and a session wrapper that records the batch size of every call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facefleet.models.manifest import ModelSpec, get_model
from facefleet.models.session import ModelSession, create_session
from fakes import RecordingSession  # noqa: F401  (the tests import it from here too)

OPSET = 13
IR_VERSION = 8

# --------------------------------------------------------------------------- graph building


def constant_model(
    input_name: str,
    input_shape: Sequence[int | str],
    outputs: Sequence[tuple[str, np.ndarray, str]],
    fold_batch: bool = False,
) -> bytes:
    """A graph whose outputs are constants broadcast over the input's batch.

    outputs: (name, value with a leading batch axis of 1, mode); mode "gain" multiplies the
    value by the per-image gain, "const" repeats it. With `fold_batch` each output drops
    its batch axis into the next one, as non-batched InsightFace exports do ((B*N, C)).
    """
    nodes = [
        helper.make_node("ReduceMax", [input_name], ["peak"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["peak", "two"], ["peak2"]),
        helper.make_node("Clip", ["peak2", "zero", "one"], ["gain"]),  # (B, 1, 1, 1)
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph_outputs = []
    for name, value, mode in outputs:
        value = np.asarray(value, np.float32)
        if value.shape[0] != 1:
            raise ValueError(f"{name}: constants carry a batch axis of 1, got {value.shape}")
        rank = value.ndim
        inits.append(numpy_helper.from_array(value, f"{name}_value"))
        inits.append(numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64), f"{name}_gshape"))
        nodes.append(helper.make_node("Reshape", ["gain", f"{name}_gshape"], [f"{name}_gain"]))
        if mode == "gain":
            nodes.append(helper.make_node("Mul", [f"{name}_gain", f"{name}_value"], [f"{name}_b"]))
        else:
            nodes.append(helper.make_node("Mul", [f"{name}_gain", "zero"], [f"{name}_nil"]))
            nodes.append(helper.make_node("Add", [f"{name}_nil", f"{name}_value"], [f"{name}_b"]))
        if fold_batch:
            inits.append(numpy_helper.from_array(np.array([-1, *value.shape[2:]], np.int64), f"{name}_fold"))
            nodes.append(helper.make_node("Reshape", [f"{name}_b", f"{name}_fold"], [name]))
            shape = [f"{name}_rows", *value.shape[2:]]
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_b"], [name]))
            shape = ["batch", *value.shape[1:]]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes,
        "signature_test_model",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        graph_outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facefleet-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session_for(tmp_path: Path, model_bytes: bytes, **spec_fields) -> ModelSession:
    """Write a test model, pin its sha256 in a ModelSpec and load it like any model."""
    name = spec_fields.setdefault("name", "signature_test_model")
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model_bytes)
    fields = dict(
        kind="detector",
        file=path.name,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        license="test",
        source="built by tests/detector_fakes.py (signature-compatible, not trained)",
        input_name="input",
    )
    fields.update(spec_fields)
    return create_session(ModelSpec(**fields), provider="cpu", path=path)


# --------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class AnchorFace:
    """One designed SCRFD/RetinaFace prediction: which anchor, what it says."""

    stride: int
    row: int
    col: int
    anchor: int  # 0 or 1
    score: float
    distances: tuple[float, float, float, float]  # left, top, right, bottom, in strides
    offsets: tuple[float, ...]  # 5 x (dx, dy), in strides

    def index(self, width: int) -> int:
        return (self.row * (width // self.stride) + self.col) * 2 + self.anchor

    def centre(self) -> tuple[float, float]:
        return float(self.col * self.stride), float(self.row * self.stride)

    def box(self) -> np.ndarray:
        cx, cy = self.centre()
        left, top, right, bottom = (d * self.stride for d in self.distances)
        return np.array([cx - left, cy - top, cx + right, cy + bottom], np.float64)

    def landmarks(self) -> np.ndarray:
        cx, cy = self.centre()
        return np.array(self.offsets, np.float64).reshape(5, 2) * self.stride + [cx, cy]


SCRFD_OUTPUT_NAMES = tuple(f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32))


def scrfd_like(
    faces: Sequence[AnchorFace], input_size: tuple[int, int] = (160, 160), fold_batch: bool = False, batch: int | str = "batch"
) -> bytes:
    """SCRFD / FaceFusion-RetinaFace signature: input [B,3,H,W]; 9 outputs ordered scores,
    boxes, landmarks at strides 8, 16, 32, each (B, A, C) or folded (B*A, C), A = H/s*W/s*2."""
    width, height = input_size
    values = {}
    for s in (8, 16, 32):
        a = (height // s) * (width // s) * 2
        values[s] = (np.zeros((1, a, 1)), np.zeros((1, a, 4)), np.zeros((1, a, 10)))
    for face in faces:
        score, bbox, kps = values[face.stride]
        i = face.index(width)
        score[0, i, 0] = face.score
        bbox[0, i] = face.distances
        kps[0, i] = face.offsets
    outputs = []
    for k, kind in enumerate(("score", "bbox", "kps")):
        for s in (8, 16, 32):
            outputs.append((f"{kind}_{s}", values[s][k], "gain" if kind == "score" else "const"))
    return constant_model("input", [batch, 3, height, width], outputs, fold_batch=fold_batch)


def yolo_face_like(rows: np.ndarray, input_size: tuple[int, int] = (640, 640)) -> bytes:
    """YOLO face signature: input [B,3,H,W] (BGR / 255); one output [B, 20, N] whose rows
    are cx, cy, w, h, score, 5 x (x, y, confidence) in input pixels. `rows` is (N, 20)."""
    rows = np.asarray(rows, np.float32)
    gained = rows.copy()
    # the score row follows the gain, the rest is constant: gain * score + constant rest
    score_only = np.zeros_like(rows)
    score_only[:, 4] = rows[:, 4]
    gained[:, 4] = 0.0
    width, height = input_size
    model = onnx.load_from_string(
        constant_model(
            "input",
            ["batch", 3, height, width],
            [("scores_part", score_only.T[None], "gain"), ("rest_part", gained.T[None], "const")],
        )
    )
    model.graph.node.append(helper.make_node("Add", ["scores_part", "rest_part"], ["output0"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 20, rows.shape[0]]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def blazeface_like(regressors: np.ndarray, logits: np.ndarray) -> bytes:
    """BlazeFace signature: input [B,3,128,128]; regressors [B,896,16], classificators [B,896,1]."""
    return constant_model(
        "input",
        ["batch", 3, 128, 128],
        [
            ("regressors", np.asarray(regressors, np.float32)[None], "const"),
            ("classificators", np.asarray(logits, np.float32).reshape(1, -1, 1), "const"),
        ],
    )


# --------------------------------------------------------------------------- landmarkers


def fan68_like(points64: np.ndarray, peak: float) -> bytes:
    """2DFAN4 signature (FaceFusion's 2dfan4.onnx): input [B,3,256,256] in [0,1]; outputs
    landmarks_xyscore [B,68,3] (x, y in 64 x 64 heatmap pixels, a score) and heatmaps
    [B,68,64,64] whose per-point peak is `peak` (times the gain)."""
    points64 = np.asarray(points64, np.float32).reshape(68, 2)
    coords = np.concatenate([points64, np.ones((68, 1), np.float32)], axis=1)[None]
    heat = np.zeros((1, 68, 64, 64), np.float32)
    cols = np.clip(np.round(points64[:, 0]).astype(int), 0, 63)
    rows = np.clip(np.round(points64[:, 1]).astype(int), 0, 63)
    heat[0, np.arange(68), rows, cols] = peak
    return constant_model("input", ["batch", 3, 256, 256], [("landmarks_xyscore", coords, "const"), ("heatmaps", heat, "gain")])


# --------------------------------------------------------------------------- shipped models

def shipped_session(name: str, free_batch: bool = False) -> ModelSession:
    """A shipped model by its manifest entry. `free_batch` frees a pinned batch dimension,
    as `make_dynamic` does."""
    spec = get_model(name)
    if free_batch and "batch" not in spec.make_dynamic:
        spec = replace(spec, make_dynamic=(*spec.make_dynamic, "batch"))
    return create_session(spec, provider="cpu")
