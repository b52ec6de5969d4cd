"""A detector's input preprocessing as a small ONNX graph that runs on the model's device.

On a GPU, frames travel as uint8 (a quarter of float32's bytes) and are cast, resized,
padded, put in the model's channel order, transposed to NCHW and normalised there; the
result stays on the device and is handed to the detector through onnxruntime's IO
binding (`ModelSession.run_on_device`).

Why IO binding rather than one merged model (onnx.compose.merge_models): the detector
session stays the one session the rest of the code already loads, checks and pads for
(provider check, signature check, fixed batch shape), no second copy of its weights is
loaded, and the small graph needs none of the detector's opset or IR version (merging
needs both graphs on the same ones, and CenterFace's opset predates Resize's half-pixel
mode). The cost is a second, weightless session per frame size.

The graph takes the batch's frames as separate inputs `frame_0` .. `frame_{N-1}`, each
(H, W, 3) uint8 BGR, and concatenates them on the device: the same (N, H, W, 3) batch,
without stacking 16 full frames on the host first (a 100 MB copy at 1080p, which costs
the CPU more than the resizes it replaces). Its output `batch` is (N, 3, ph, pw) float32,
equal to `facefleet.pipeline.detect.prepare_batch` up to the rounding of the resize:
OpenCV's uint8 INTER_LINEAR works in fixed point and rounds to whole pixel values, the
graph resizes in float (same half-pixel sampling, no antialias), so values differ by
less than one pixel level before normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facefleet.models.session import CPU, CUDA

OPSET = 17  # Resize-13 (half_pixel, no antialias attribute); every provider has it
IR_VERSION = 8  # the IR of opset 17; onnxruntime refuses IR versions newer than it knows
OUTPUT = "batch"


@dataclass(frozen=True)
class InputPlan:
    """What one preprocessing graph does: fixed sizes, so one graph per video size.

    Sizes are (width, height). Frames are BGR; `channels` is the model's order.
    """

    frame: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]
    rows: int  # frames per call (short batches are padded with zero frames)
    channels: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        (fw, fh), (rw, rh), (pw, ph) = self.frame, self.resized, self.padded
        if min(fw, fh, rw, rh, self.rows) < 1 or rw > pw or rh > ph:
            raise ValueError(f"bad preprocessing sizes: {self}")
        if self.channels not in ("RGB", "BGR"):
            raise ValueError(f"channel order must be RGB or BGR, got {self.channels!r}")


def input_names(rows: int) -> list[str]:
    return [f"frame_{i}" for i in range(rows)]


def build_graph(plan: InputPlan) -> Any:
    """The preprocessing graph (onnx.ModelProto) for one plan."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (fw, fh), (rw, rh), (pw, ph) = plan.frame, plan.resized, plan.padded
    n = plan.rows
    nodes: list[Any] = []
    consts: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        consts.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    names = input_names(n)
    x = node("Concat", names, "stacked", axis=0)  # (N*H, W, 3)
    x = node("Reshape", [x, const("nhwc_shape", np.array([n, fh, fw, 3], np.int64))], "nhwc")
    x = node("Transpose", [x], "nchw_u8", perm=[0, 3, 1, 2])  # on uint8: a quarter of the bytes
    x = node("Cast", [x], "nchw", to=TensorProto.FLOAT)  # resize floats, not uint8
    if (rw, rh) != (fw, fh):
        # OpenCV's INTER_LINEAR: pixel centres at half pixels, no antialiasing, edges clamped
        sizes = const("sizes", np.array([n, 3, rh, rw], np.int64))
        x = node(
            "Resize",
            [x, "", "", sizes],
            "resized",
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )
    if (pw, ph) != (rw, rh):
        # zero pixel values on the right and bottom, before normalising (as prepare_batch)
        pads = const("pads", np.array([0, 0, 0, 0, 0, 0, ph - rh, pw - rw], np.int64))
        x = node("Pad", [x, pads, const("pad_value", np.array(0.0, np.float32))], "padded", mode="constant")
    if plan.channels == "RGB":
        x = node("Gather", [x, const("rgb", np.array([2, 1, 0], np.int64))], "rgb_order", axis=1)
    # the same operations in the same order as prepare_batch's normalize
    if plan.scale != 1.0:
        x = node("Mul", [x, const("scale", np.array(plan.scale, np.float32))], "scaled")
    mean = np.asarray(plan.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(plan.std, np.float32).reshape(1, 3, 1, 1)
    if np.any(mean != 0):
        x = node("Sub", [x, const("mean", mean)], "centred")
    if np.any(std != 1):
        x = node("Div", [x, const("std", std)], "normalised")
    nodes.append(helper.make_node("Identity", [x], [OUTPUT]))
    graph = helper.make_graph(
        nodes,
        "facefleet_detect_preprocess",
        [helper.make_tensor_value_info(name, TensorProto.UINT8, [fh, fw, 3]) for name in names],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [n, 3, ph, pw])],
        initializer=consts,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="facefleet"
    )
    onnx.checker.check_model(model)
    return model


class DevicePreprocessor:
    """One preprocessing graph loaded on a provider; call it with frames, get a device tensor.

    `provider` and `provider_options` should be the detector's (its device id and memory
    cap), so the result lands on the detector's device. Safe to call from several threads:
    each call binds its own inputs and outputs.
    """

    def __init__(
        self, plan: InputPlan, provider: str = CPU, provider_options: dict[str, Any] | None = None, threads: int = 1
    ):
        import onnxruntime as ort

        self.plan = plan
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads > 0:
            options.intra_op_num_threads = threads
        providers: list[Any] = [CPU]
        self.device = ("cpu", 0)
        if provider == CUDA:
            wanted = dict(provider_options or {})
            cuda: dict[str, str] = {"arena_extend_strategy": "kSameAsRequested"}
            for key in ("device_id", "gpu_mem_limit"):
                if key in wanted:
                    cuda[key] = str(wanted[key])
            providers = [(CUDA, cuda), CPU]
            self.device = ("cuda", int(cuda.get("device_id", 0)))
        data = build_graph(plan).SerializeToString()
        self.session = ort.InferenceSession(data, sess_options=options, providers=providers)
        self.provider = self.session.get_providers()[0]
        if self.provider != provider:
            raise RuntimeError(f"the preprocessing graph runs on {self.provider}, not on {provider}")
        self._names = input_names(plan.rows)
        fw, fh = plan.frame
        self._blank = np.zeros((fh, fw, 3), np.uint8)  # the padding rows

    def __call__(self, frames: Sequence[np.ndarray]) -> Any:
        """The model input for up to `rows` BGR uint8 frames, as an OrtValue on the device."""
        plan = self.plan
        if not 0 < len(frames) <= plan.rows:
            raise ValueError(f"{len(frames)} frames for a preprocessing graph of {plan.rows} rows")
        fw, fh = plan.frame
        binding = self.session.io_binding()
        for i, name in enumerate(self._names):
            frame = frames[i] if i < len(frames) else self._blank
            if frame.shape != (fh, fw, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frame {i} is {frame.shape} {frame.dtype}, the graph takes ({fh}, {fw}, 3) uint8")
            binding.bind_cpu_input(name, np.ascontiguousarray(frame))
        binding.bind_output(OUTPUT, *self.device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]
