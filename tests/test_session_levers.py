"""fp16 models and the TensorRT provider (issue 7's levers), checked on the CPU machine.

fp16: the shipped detectors converted at load must find the same faces as in fp32, boxes
and landmarks within 1 px. onnxruntime's CPU provider runs the converted graph (the GPU
check, with real half-precision arithmetic, is in tests/test_gpu.py).

TensorRT: absent from onnxruntime here and on the GPU machine, so what is checked is the
provider list handed to onnxruntime (TensorRT first only when present, its engine cache
keyed by the model's sha256, the precision and onnxruntime's version) and the fallback to
CUDA, reported as such, with onnxruntime's own answers replaced by stand-ins.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from facefleet.errors import ModelError
from facefleet.models import session as session_module
from facefleet.models.manifest import get_model
from facefleet.models.session import (
    CPU,
    CUDA,
    GPU_CALLS_AT_ONCE,
    TENSORRT,
    ModelSession,
    create_session,
    free_dims,
    provider_list,
    read_verified,
    tensorrt_cache_dir,
    to_fp16,
)
from facefleet.models.store import ModelStore
from facefleet.pipeline.spec import PipelineSpec
from photos import assert_sessions_find_the_same_faces


def shipped_bytes(name: str) -> bytes:
    model = ModelStore().locate(get_model(name))
    return read_verified(model.path, model.sha256)


def test_fp16_conversion_keeps_float32_inputs_and_outputs():
    original = free_dims(shipped_bytes("centerface"), get_model("centerface").make_dynamic)
    converted = onnx.load_from_string(to_fp16(original))
    io = list(converted.graph.input) + list(converted.graph.output)
    assert {v.type.tensor_type.elem_type for v in io} == {onnx.TensorProto.FLOAT}
    assert weight_types(converted.SerializeToString()) == {onnx.TensorProto.FLOAT16}
    assert len(converted.SerializeToString()) < 0.6 * len(original)


@pytest.mark.parametrize("name", ["centerface", "yunet"])
def test_fp16_detectors_find_the_same_faces_as_fp32(name, data_dir):
    fp32 = create_session(get_model(name), provider="cpu")
    fp16 = create_session(get_model(name), provider="cpu", precision="fp16")
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16")
    assert fp16.label == f"{CPU} fp16" and fp32.label == CPU
    assert_sessions_find_the_same_faces(fp32, fp16, data_dir)


def test_unknown_precision_and_provider_are_refused():
    with pytest.raises(ModelError, match="unknown precision 'fp64'"):
        create_session(get_model("centerface"), provider="cpu", precision="fp64")
    with pytest.raises(ValueError, match="--precision must be one of fp32, fp16"):
        PipelineSpec(precision="half")
    with pytest.raises(ValueError, match="--execution-providers must be one of auto, cuda, tensorrt, cpu"):
        PipelineSpec(provider="rocm")


def test_tensorrt_engine_cache_is_keyed_by_model_precision_and_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFLEET_TENSORRT_CACHE", str(tmp_path))
    a = tensorrt_cache_dir("a" * 64, "fp32")
    assert a.parent == tmp_path and ort.__version__ in a.name
    assert tensorrt_cache_dir("b" * 64, "fp32") != a  # other weights
    assert tensorrt_cache_dir("a" * 64, "fp16") != a  # other precision
    monkeypatch.setattr(ort, "__version__", "0.0.1")
    assert tensorrt_cache_dir("a" * 64, "fp32") != a  # another onnxruntime's engines are never read


def test_provider_list_puts_tensorrt_first_only_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFLEET_TENSORRT_CACHE", str(tmp_path))
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    absent = provider_list(TENSORRT, "c" * 64, "fp16", gpu_mem_limit=2**30)
    assert [p if isinstance(p, str) else p[0] for p in absent] == [CUDA, CPU]
    assert absent[0][1]["gpu_mem_limit"] == str(2**30)
    assert absent[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    present = provider_list(TENSORRT, "c" * 64, "fp16")
    assert [p if isinstance(p, str) else p[0] for p in present] == [TENSORRT, CUDA, CPU]
    trt = present[0][1]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tensorrt_cache_dir("c" * 64, "fp16"))
    assert (tmp_path / tensorrt_cache_dir("c" * 64, "fp16").name).is_dir()
    assert provider_list(CUDA, "c" * 64, "fp32", cuda_options={"cudnn_conv_algo_search": "EXHAUSTIVE"})[0] == (
        CUDA,
        {"cudnn_conv_algo_search": "EXHAUSTIVE"},
    )
    assert provider_list(CPU, "c" * 64, "fp32") == [CPU]


def weight_types(model_bytes: bytes) -> set[int]:
    """Element types of a model's weight tensors (initializers of rank > 1)."""
    return {i.data_type for i in onnx.load_from_string(model_bytes).graph.initializer if len(i.dims) > 1}


class StandInSession:
    """A real CPU session that answers as if onnxruntime had started `runs_on`."""

    asked: list = []

    def __init__(self, data, sess_options=None, providers=None, runs_on=CUDA):
        StandInSession.asked.append((data, providers))
        self._real = REAL_SESSION(data, sess_options=sess_options, providers=[CPU])
        self._runs_on = runs_on

    def get_providers(self):
        return [self._runs_on, CPU]

    def __getattr__(self, name):
        return getattr(self._real, name)


REAL_SESSION = ort.InferenceSession


@pytest.mark.parametrize("trt_present", [False, True])
def test_tensorrt_asked_runs_cuda_when_absent_and_says_so(trt_present, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFLEET_TENSORRT_CACHE", str(tmp_path))
    available = [TENSORRT, CUDA, CPU] if trt_present else [CUDA, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    runs_on = TENSORRT if trt_present else CUDA
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: StandInSession(*a, runs_on=runs_on, **k))
    monkeypatch.setattr(session_module, "_preload_cuda_libraries", lambda: None)
    StandInSession.asked.clear()
    model = create_session(get_model("centerface"), provider="tensorrt", precision="fp16")
    data, providers = StandInSession.asked[-1]
    assert model.requested == TENSORRT and model.on_gpu
    if trt_present:
        assert providers[0][0] == TENSORRT and model.provider == TENSORRT
        assert model.precision == "fp16" and not model.fell_back  # TensorRT builds fp16 engines itself
        assert onnx.TensorProto.FLOAT16 not in weight_types(data)  # not converted
    else:
        assert providers[0][0] == CUDA and model.provider == CUDA and model.fell_back
        assert model.precision == "fp16" and weight_types(data) == {onnx.TensorProto.FLOAT16}  # converted for CUDA
        assert model.label == f"{CUDA} fp16 (TensorRT unavailable)"


class SlowSession:
    """An onnxruntime session stand-in whose calls take a while and count who is inside."""

    def __init__(self):
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()

    def run(self, outputs, feeds):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.05)
        with self.lock:
            self.inside -= 1
        return [np.zeros(1)]


@pytest.mark.parametrize("provider, most", [(CUDA, GPU_CALLS_AT_ONCE), (TENSORRT, GPU_CALLS_AT_ONCE), (CPU, 6)])
def test_calls_into_one_gpu_session_are_bounded(provider, most):
    """Eight enhancer calls at once ran a half-GPU worker out of memory: a GPU session lets
    GPU_CALLS_AT_ONCE in at a time (they share one CUDA stream); a CPU session all."""
    fake = SlowSession()
    model = ModelSession(spec=get_model("centerface"), session=fake, provider=provider, requested=provider)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: model.run({"x": np.zeros(1)}), range(6)))
    assert fake.most == most
