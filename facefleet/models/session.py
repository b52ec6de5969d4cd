"""onnxruntime session factory: verified model bytes, provider choice, provider check.

onnxruntime falls back to the CPU silently when CUDA cannot start, so the provider
actually in use is read back from the session after creating it and reported. The
session's inputs are compared with the model's manifest entry, so a file that is some
other model is refused at load instead of producing nonsense.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facefleet.errors import ModelError
from facefleet.models.manifest import LAYOUT_RANK, ModelSpec, license_notice
from facefleet.models.store import ModelStore, ResolvedModel

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

# How onnxruntime and CUDA word an allocation failure
OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "bad_alloc")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an error is an allocation failure (onnxruntime/CUDA word it several ways)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in OOM_MARKERS)
CPU = "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "cuda", "tensorrt", "cpu")
PRECISIONS = ("fp32", "fp16")
SHORT_NAMES = {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}

# CUDA provider options every GPU session starts from (bench/cuda_options.py measured them).
# HEURISTIC: cuDNN picks convolution algorithms from its heuristics instead of timing each
# (EXHAUSTIVE, onnxruntime's default), which costs seconds of CPU per new input shape.
CUDA_OPTIONS: dict[str, str] = {"cudnn_conv_algo_search": "HEURISTIC"}
# Calls at once into one GPU session. They queue on the session's one CUDA stream anyway,
# so more add nothing but memory: each call holds its own activations, and eight chunks'
# enhancer calls at once ran a half-GPU worker out of memory (bench/results/enhance_e2e_h100-levers).
GPU_CALLS_AT_ONCE = 2
TENSORRT_CACHE_ENV = "FACEFLEET_TENSORRT_CACHE"


@dataclass
class ModelSession:
    """A loaded model: the onnxruntime session plus what actually runs it."""

    spec: ModelSpec
    session: Any  # onnxruntime.InferenceSession
    provider: str  # provider actually in use, e.g. "CUDAExecutionProvider"
    requested: str  # provider that was asked for
    precision: str = "fp32"  # of the arithmetic: "fp16" when the weights were converted (or TensorRT builds fp16)
    path: Path | None = None  # the file it was loaded from
    sha256: str | None = None  # of the bytes loaded
    verified_by: str = "manifest"  # "manifest" | "lock" | "trusted": record it in reports
    _gate: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self._gate = threading.BoundedSemaphore(GPU_CALLS_AT_ONCE) if self.on_gpu else contextlib.nullcontext()

    @property
    def fell_back(self) -> bool:
        return self.provider != self.requested

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    @property
    def label(self) -> str:
        """The provider in use for reports: " fp16" when it computes in half precision, and
        the provider asked for when that one could not run, e.g.
        "CUDAExecutionProvider (TensorRT unavailable)"."""
        label = self.provider + (" fp16" if self.precision == "fp16" else "")
        if self.fell_back:
            label += f" ({SHORT_NAMES.get(self.requested, self.requested)} unavailable)"
        return label

    @property
    def trusted(self) -> bool:
        return self.verified_by == "trusted"

    @property
    def license_notice(self) -> str | None:
        """One line for the caller to print when the model is not for commercial use."""
        return license_notice(self.spec)

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        with self._gate:
            return self.session.run(None, feeds)

    @property
    def provider_options(self) -> dict[str, Any]:
        """The options the provider in use runs with (device id, memory cap), as strings."""
        try:
            return dict(self.session.get_provider_options().get(self.provider, {}))
        except Exception:  # a stand-in session
            return {}

    def run_on_device(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Run with inputs that are onnxruntime OrtValues, possibly already on the GPU
        (IO binding: nothing goes through the host); outputs come back as numpy."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, value)
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cpu")
        with self._gate:
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()

    @property
    def pads_batches(self) -> bool:
        """Whether calls should keep one batch shape (see `pad_rows`): on a GPU provider.

        onnxruntime's CUDA convolutions plan their algorithms again whenever a call's input
        shape differs from the previous call's: about 3 s of CPU time per change for
        CenterFace on an H100 (bench/detect_calls.py), paid twice per chunk when its last
        batch was short. Zero rows cost the GPU far less; on the CPU they cost real work.
        """
        return self.on_gpu


def pad_rows(tensor: np.ndarray, size: int) -> np.ndarray:
    """`tensor` with zero rows appended along the batch axis up to `size` rows."""
    if len(tensor) >= size:
        return tensor
    return np.concatenate([tensor, np.zeros((size - len(tensor), *tensor.shape[1:]), tensor.dtype)])


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
    """Pick the provider to ask for: CUDA when asked or usable, else CPU; TensorRT only
    when asked (`create_session` runs CUDA instead when this onnxruntime has no TensorRT)."""
    import onnxruntime as ort

    if request not in PROVIDER_CHOICES:
        raise ModelError(f"unknown execution provider {request!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    cuda_built = CUDA in ort.get_available_providers()
    if request in ("cuda", "tensorrt"):
        if not cuda_built:
            raise ModelError(f"{request} was asked for but this onnxruntime has no CUDA provider; install onnxruntime-gpu")
        return TENSORRT if request == "tensorrt" else CUDA
    if request == "auto" and cuda_built and gpu_visible():
        return CUDA
    return CPU


def to_fp16(model_bytes: bytes) -> bytes:
    """The model with float16 weights and arithmetic; its inputs and outputs stay float32,
    so callers feed and read it as before (onnxruntime's own converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
    return model.SerializeToString()


def tensorrt_cache_dir(sha256: str, precision: str) -> Path:
    """Where TensorRT keeps the engines it builds for one model file: keyed by the file's
    sha256, the precision and the onnxruntime version (an engine built by another version
    or for other weights is never picked up). Under $FACEFLEET_TENSORRT_CACHE, else
    ~/.cache/facefleet/tensorrt."""
    import onnxruntime as ort

    root = os.environ.get(TENSORRT_CACHE_ENV) or Path.home() / ".cache" / "facefleet" / "tensorrt"
    return Path(root) / f"{sha256[:16]}-{precision}-ort{ort.__version__}"


def provider_list(requested: str, sha256: str, precision: str, gpu_mem_limit: int = 0, cuda_options: dict | None = None) -> list[Any]:
    """What to hand onnxruntime for a session asked to run on `requested`: the providers in
    order of preference with their options. TensorRT comes first only when this
    onnxruntime has it; CUDA follows (TensorRT hands it the nodes it cannot run, and it
    runs everything when TensorRT is absent); the CPU last."""
    import onnxruntime as ort

    if requested == CPU:
        return [CPU]
    cuda = {**CUDA_OPTIONS, **(cuda_options or {})}
    if gpu_mem_limit:
        cuda["gpu_mem_limit"] = str(int(gpu_mem_limit))
    providers: list[Any] = [(CUDA, cuda), CPU]
    if requested == TENSORRT and TENSORRT in ort.get_available_providers():
        cache = tensorrt_cache_dir(sha256, precision)
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        trt = {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": str(precision == "fp16"),
        }
        providers.insert(0, (TENSORRT, trt))
    return providers


def _preload_cuda_libraries() -> None:
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # libraries may already be on the loader path
            pass


def expected_signature(spec: ModelSpec) -> list[tuple[str, list[int | str]]]:
    """The inputs a model's manifest entry promises: (name, dims), "?" where any size goes."""
    rank = LAYOUT_RANK.get(spec.layout)
    if rank is None:
        raise ModelError(f"model {spec.name}: unknown layout {spec.layout!r} in the manifest")
    dims: list[int | str] = ["?"] * rank
    if spec.layout in ("NCHW", "NHWC"):
        width, height = spec.input_size or ("?", "?")
        dims = ["?", 3, height, width] if spec.layout == "NCHW" else ["?", height, width, 3]
    return [(spec.input_name, dims)] + [(name, ["?"]) for name, _ in spec.extra_inputs]


def session_signature(session: Any) -> list[tuple[str, list[int | str]]]:
    """The inputs an onnxruntime session takes: (name, dims), symbolic dims as "?"."""
    return [(i.name, [d if isinstance(d, int) else "?" for d in i.shape]) for i in session.get_inputs()]


def format_signature(signature: list[tuple[str, list[int | str]]]) -> str:
    return ", ".join(f"{name}[{','.join(str(d) for d in dims)}]" for name, dims in signature)


def signature_matches(spec: ModelSpec, actual: list[tuple[str, list[int | str]]]) -> bool:
    """Same input names; for the main input the same rank and the same fixed dims."""
    expected = expected_signature(spec)
    if sorted(name for name, _ in actual) != sorted(name for name, _ in expected):
        return False
    want = expected[0][1]
    have = dict(actual)[spec.input_name]
    if len(have) != len(want):
        return False
    return all(not (isinstance(w, int) and isinstance(h, int) and w != h) for w, h in zip(want, have))


def check_signature(spec: ModelSpec, session: Any, path: Path | None = None) -> None:
    actual = session_signature(session)
    if not signature_matches(spec, actual):
        where = f" at {path}" if path else ""
        raise ModelError(
            f"model {spec.name}{where} does not match its manifest entry: expected inputs "
            f"{format_signature(expected_signature(spec))}, the file has {format_signature(actual)}; "
            "it is a different model or export: refused"
        )


def _resolve(
    model: ModelSpec | ResolvedModel, path: Path | None, store: ModelStore | None
) -> ResolvedModel:
    if isinstance(model, ResolvedModel):
        return model
    store = store or ModelStore()
    if path is not None:
        return store.resolve(Path(path), spec=model)
    return store.locate(model)


def create_session(
    spec: ModelSpec | ResolvedModel,
    provider: str = "auto",
    threads: int = 0,
    path: Path | None = None,
    store: ModelStore | None = None,
    gpu_mem_limit: int = 0,
    precision: str = "fp32",
    cuda_options: dict[str, str] | None = None,
) -> ModelSession:
    """Load a model for inference and report the provider that actually runs it.

    `gpu_mem_limit` (bytes, 0: none) caps the CUDA provider's memory arena, for workers
    that share a GPU. `precision` "fp16" converts the weights and arithmetic to float16 at
    load (inputs and outputs stay float32); with TensorRT, TensorRT builds fp16 engines
    instead. `cuda_options` override CUDA_OPTIONS (benchmarks).

    `spec` is a manifest entry (its file is found and checked by `store`, by default the
    user's models directories and the shipped weights; `path` names a file instead) or a
    ResolvedModel from `ModelStore.resolve` (e.g. a trusted custom file). The bytes loaded
    are checked against the sha256 the file was accepted with.
    """
    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    requested = choose_provider(provider)
    model = _resolve(spec, path, store)
    entry = model.spec
    data = read_verified(model.path, model.sha256)
    if entry.make_dynamic:
        data = free_dims(data, entry.make_dynamic)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle onnxruntime threads spin by default, taking cores from the decode and encode
    # threads that run beside every session here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if requested != CPU:
        threads = threads or 1  # the CPU side of a GPU session is small: don't start a pool
        _preload_cuda_libraries()
    if threads > 0:
        options.intra_op_num_threads = threads
    providers = provider_list(requested, model.sha256, precision, gpu_mem_limit, cuda_options)
    on_tensorrt = isinstance(providers[0], tuple) and providers[0][0] == TENSORRT
    converted = precision == "fp16" and not on_tensorrt  # TensorRT makes its own fp16 engines
    try:
        if converted:
            data = to_fp16(data)
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise ModelError(f"onnxruntime cannot load model {entry.name} from {model.path}: {reason}") from None
    check_signature(entry, session, model.path)
    actual = session.get_providers()[0]
    return ModelSession(
        spec=entry,
        session=session,
        provider=actual,
        requested=requested,
        precision="fp16" if converted or (precision == "fp16" and actual == TENSORRT) else "fp32",
        path=model.path,
        sha256=model.sha256,
        verified_by=model.verified_by,
    )
