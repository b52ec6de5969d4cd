"""onnxruntime session factory: verified model bytes, provider choice, provider check.

onnxruntime falls back to the CPU silently when CUDA cannot start, so the provider
actually in use is read back from the session after creating it and reported.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facefleet.errors import ModelError
from facefleet.models.manifest import ModelSpec, model_path

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "cuda", "cpu")


@dataclass
class ModelSession:
    """A loaded model: the onnxruntime session plus what actually runs it."""

    spec: ModelSpec
    session: Any  # onnxruntime.InferenceSession
    provider: str  # provider actually in use, e.g. "CUDAExecutionProvider"
    requested: str  # provider that was asked for

    @property
    def fell_back(self) -> bool:
        return self.provider != self.requested

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        return self.session.run(None, feeds)


def read_verified(path: Path, sha256: str) -> bytes:
    """Return the file's bytes if their sha256 matches, else raise ModelError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelError(
            f"model file {path} has sha256 {digest}, expected {sha256}; "
            "the file is corrupt or a different model: replace it"
        )
    return data


def free_dims(model_bytes: bytes, names: tuple[str, ...]) -> bytes:
    """Make fixed NCHW input dims dynamic and drop initializers listed as graph inputs.

    Some exported graphs (CenterFace) pin the batch and spatial sizes they were traced
    with although every operator supports any size. Output and intermediate shapes are
    cleared so onnxruntime infers them again.
    """
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    real_inputs = [inp for inp in graph.input if inp.name not in initializers]
    del graph.input[:]
    graph.input.extend(real_inputs)
    axis_of = {"batch": 0, "height": 2, "width": 3}
    dims = graph.input[0].type.tensor_type.shape.dim
    for name in names:
        dim = dims[axis_of[name]]
        dim.ClearField("dim_value")
        dim.dim_param = name
    for out in graph.output:
        for i, dim in enumerate(out.type.tensor_type.shape.dim):
            dim.ClearField("dim_value")
            dim.dim_param = f"{out.name}_d{i}"
    del graph.value_info[:]
    return model.SerializeToString()


def gpu_visible() -> bool:
    """True when this process may use an NVIDIA GPU: a driver answers and one is visible."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU
        return False


def choose_provider(request: str = "auto") -> str:
    """Pick the provider to ask for: CUDA when asked or usable, else CPU."""
    import onnxruntime as ort

    if request not in PROVIDER_CHOICES:
        raise ModelError(f"unknown execution provider {request!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    cuda_built = CUDA in ort.get_available_providers()
    if request == "cuda":
        if not cuda_built:
            raise ModelError("CUDA was asked for but this onnxruntime has no CUDA provider; install onnxruntime-gpu")
        return CUDA
    if request == "auto" and cuda_built and gpu_visible():
        return CUDA
    return CPU


def _preload_cuda_libraries() -> None:
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # libraries may already be on the loader path
            pass


def create_session(
    spec: ModelSpec,
    provider: str = "auto",
    threads: int = 0,
    path: Path | None = None,
) -> ModelSession:
    """Load a model for inference and report the provider that actually runs it."""
    import onnxruntime as ort

    requested = choose_provider(provider)
    if spec.sha256 is None:
        raise ModelError(f"model {spec.name} has no pinned sha256; it must be loaded through the model store")
    data = read_verified(path or model_path(spec), spec.sha256)
    if spec.make_dynamic:
        data = free_dims(data, spec.make_dynamic)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle onnxruntime threads spin by default, taking cores from the decode and encode
    # threads that run beside every session here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if requested == CUDA:
        threads = threads or 1  # the CPU side of a CUDA session is small: don't start a pool
    if threads > 0:
        options.intra_op_num_threads = threads
    providers: list[Any] = [CPU]
    if requested == CUDA:
        _preload_cuda_libraries()
        providers = [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load model {spec.name}: {exc}") from None
    return ModelSession(spec=spec, session=session, provider=session.get_providers()[0], requested=requested)
