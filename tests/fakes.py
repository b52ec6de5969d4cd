"""Small ONNX graphs with the input/output signatures of real models, for tests.

These are signature-compatible test models, not trained ones: they let the tests check
alignment, normalisation, masks and paste-back exactly, and nothing they output is a
real enhancement or a real face identity.

- enhancer_model: GFPGAN's signature, input `input` [N,3,S,S] float -> `output` same
  shape; `identity` returns the input, `invert` returns -input (colours inverted in
  [-1, 1] space). With `weight_input=True` it takes CodeFormer's second input `weight`
  (float64, [1]) and returns input * (1 - 2 * weight): weight 0 is the identity, 1 inverts.
- recognizer_model: ArcFace's signature, `input` [N,3,112,112] float -> `embedding`
  [N,512]: an 8x8 average pool, then a fixed seeded random projection, so identical
  crops give identical embeddings and different crops differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facefleet.models.manifest import ModelSpec
from facefleet.models.session import ModelSession, create_session

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def enhancer_model(path: Path, mode: str = "identity", weight_input: bool = False, size: int = 512) -> Path:
    """Write a GFPGAN-signature (or, with weight_input, CodeFormer-signature) test model."""
    if mode not in ("identity", "invert"):
        raise ValueError(mode)
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, size, size])
    inputs = [image]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("weight", TensorProto.DOUBLE, [1]))
        nodes = [
            helper.make_node("Cast", ["weight"], ["w32"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["w32", "minus_two"], ["w2"]),
            helper.make_node("Add", ["w2", "one"], ["gain"]),
            helper.make_node("Mul", ["input", "gain"], ["output"]),
        ]
        inits = [
            numpy_helper.from_array(np.array([-2.0], np.float32), "minus_two"),
            numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        ]
    else:
        nodes = [helper.make_node("Identity" if mode == "identity" else "Neg", ["input"], ["output"])]
        inits = []
    graph = helper.make_graph(nodes, f"test_enhancer_{mode}", inputs, [output], initializer=inits)
    return _save(graph, path)


def recognizer_projection(seed: int = 0, size: int = 112, dim: int = 512) -> np.ndarray:
    """The fixed projection of recognizer_model: (3 * (size/8)^2, dim) float32."""
    cells = 3 * (size // 8) ** 2
    return (np.random.default_rng(seed).standard_normal((cells, dim)) / np.sqrt(cells)).astype(np.float32)


def recognizer_model(path: Path, seed: int = 0, size: int = 112, dim: int = 512) -> Path:
    """Write an ArcFace-signature test model: 8x8 average pool, flatten, fixed projection."""
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["embedding"]),
    ]
    inits = [numpy_helper.from_array(recognizer_projection(seed, size, dim), "projection")]
    graph = helper.make_graph(nodes, "test_recognizer", [image], [output], initializer=inits)
    return _save(graph, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


GFPGAN_LIKE = ModelSpec(
    name="test_enhancer",
    kind="enhancer",
    file="test_enhancer.onnx",
    sha256=None,
    license="test",
    source="tests/fakes.py: signature-compatible test model, not a trained enhancer",
    input_name="input",
    channels="RGB",
    scale=1 / 255,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    input_size=(512, 512),
    template="ffhq_512",
    output_names=("output",),
)

ARCFACE_LIKE = ModelSpec(
    name="test_recognizer",
    kind="recognizer",
    file="test_recognizer.onnx",
    sha256=None,
    license="test",
    source="tests/fakes.py: signature-compatible test model, not a trained recognizer",
    input_name="input",
    channels="RGB",
    scale=1.0,
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    input_size=(112, 112),
    template="arcface_112_v2",
    output_names=("embedding",),
)


def session(path: Path, base: ModelSpec, **fields) -> ModelSession:
    """A CPU ModelSession of a test model file, through the real session factory."""
    spec = dataclasses.replace(base, file=Path(path).name, sha256=sha256(path), **fields)
    return create_session(spec, provider="cpu", threads=1, path=Path(path))


class RecordingSession:
    """Wraps a ModelSession and records the batch size of every call."""

    def __init__(self, model: ModelSession):
        self.model = model
        self.pads_batches = model.pads_batches  # tests may set it to act as a GPU session
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def run(self, feeds):
        self.batches.append(len(feeds[self.model.spec.input_name]))
        return self.model.run(feeds)


def place(image: np.ndarray, height: int = 512, width: int = 640, x: int = 0, y: int = 0) -> np.ndarray:
    """The image pasted at (x, y) on a black canvas (the detector wants room around faces)."""
    canvas = np.zeros((height, width, 3), np.uint8)
    h, w = image.shape[:2]
    canvas[y : y + h, x : x + w] = image
    return canvas


def centerface_detector():
    """The shipped CenterFace on the CPU: real 5-point landmarks for the test models to use."""
    from facefleet.models.manifest import get_model
    from facefleet.pipeline.detect import FaceDetector

    return FaceDetector(create_session(get_model("centerface"), provider="cpu", threads=1), detect_size=640)
