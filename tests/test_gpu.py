"""On a machine with an NVIDIA GPU and onnxruntime-gpu: `make gpu-test` (marker `gpu`)."""

import cv2
import numpy as np
import pytest

from facefleet.models.manifest import get_model
from facefleet.models.session import CUDA, create_session
from facefleet.pipeline.detect import FaceDetector
from facefleet.samples import SampleSpec

pytestmark = pytest.mark.gpu


def test_cuda_session_runs_and_matches_cpu(data_dir):
    image = cv2.imread(str(data_dir / "two_people.jpg"))
    for name in ("centerface", "yunet"):
        gpu = create_session(get_model(name), provider="cuda")
        assert gpu.provider == CUDA, f"{name} fell back to {gpu.provider}"
        cpu = create_session(get_model(name), provider="cpu")
        a = FaceDetector(gpu, 640).detect([image] * 4)
        b = FaceDetector(cpu, 640).detect([image] * 4)
        assert [len(x) for x in a] == [len(x) for x in b] == [2] * 4
        np.testing.assert_allclose(a[0].boxes, b[0].boxes, atol=1.0)


def test_run_uses_cuda_workers_pinned_to_gpus(sample_factory, tmp_path):
    from facefleet.cluster.pool import WorkerPool, plan_pool
    from facefleet.cluster.runtime import ray_session
    from facefleet.jobs.runner import run_jobs
    from facefleet.jobs.spec import JobSpec
    from facefleet.pipeline.spec import PipelineSpec

    src, _ = sample_factory(SampleSpec(width=1280, height=720, frames=120))
    with ray_session() as cluster:
        assert cluster.gpus >= 1
        pool = WorkerPool(plan_pool(cluster), PipelineSpec())
        try:
            assert len(pool.infos) == pool.plan.workers >= cluster.gpus
            assert all(info.providers["detect"] == CUDA for info in pool.infos.values())
            # each worker sees exactly one GPU; together they cover every GPU
            assert all("," not in info.cuda_visible_devices for info in pool.infos.values())
            assert len({info.cuda_visible_devices for info in pool.infos.values()}) == cluster.gpus
            outcome = run_jobs([JobSpec("g", str(src), str(tmp_path / "out.mp4"), chunk_frames=40)], pool)[0]
        finally:
            pool.shutdown()
    assert outcome.error is None and outcome.frames == 120 and outcome.providers == (CUDA,)


def test_shared_gpu_workers_get_a_memory_limit():
    from facefleet.cluster.worker import shared_memory_limit

    limit = shared_memory_limit(0.5)
    assert limit > 10 * 2**30  # half of an 80 GB H100, with headroom
    session = create_session(get_model("centerface"), provider="cuda", gpu_mem_limit=limit)
    assert session.session.get_provider_options()[CUDA]["gpu_mem_limit"] == str(limit)


def test_cuda_detector_preprocesses_on_the_gpu(data_dir):
    """The auto path of a CUDA detector is the split one (frames resized on the host, then
    the preprocessing graph on CUDA, uint8 in, IO binding to the detector); it and the
    whole-graph path agree with the CPU path within 1 px."""
    two = cv2.imread(str(data_dir / "two_people.jpg"))
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[100 : 100 + two.shape[0], 300 : 300 + two.shape[1]] = two
    for name in ("centerface", "yunet"):
        gpu = create_session(get_model(name), provider="cuda")
        assert gpu.provider == CUDA, f"{name} fell back to {gpu.provider}"
        cpu = create_session(get_model(name), provider="cpu")
        for batch in ([frame] * 5, [two] * 3):  # short batches: rows padded to max_batch
            on_gpu = FaceDetector(gpu, 640, max_batch=8)
            found = on_gpu.detect(batch)
            assert on_gpu.last_preprocess == "split" and on_gpu.graph_failure is None
            assert [g.provider for g in on_gpu.graphs] == [CUDA]
            assert on_gpu.graphs[0].plan.rows == 8
            whole = FaceDetector(gpu, 640, max_batch=8, preprocess="graph")
            on_graph = whole.detect(batch)
            assert whole.last_preprocess == "graph" and [g.provider for g in whole.graphs] == [CUDA]
            host_gpu = FaceDetector(gpu, 640, max_batch=8, preprocess="host").detect(batch)
            host_cpu = FaceDetector(cpu, 640).detect(batch)
            assert [len(x) for x in found] == [len(x) for x in host_cpu] == [2] * len(batch)
            for a, b, c, d in zip(found, host_gpu, host_cpu, on_graph):
                oa, ob, oc, od = (np.argsort(x.boxes[:, 0]) for x in (a, b, c, d))
                np.testing.assert_allclose(a.boxes[oa], b.boxes[ob], atol=1.0)
                np.testing.assert_allclose(a.boxes[oa], c.boxes[oc], atol=1.0)
                np.testing.assert_allclose(d.boxes[od], c.boxes[oc], atol=1.0)


def test_fp16_on_cuda_finds_the_same_faces_as_fp32(data_dir):
    """Real half-precision arithmetic on the GPU: same faces, boxes and landmarks within 1 px."""
    from photos import assert_sessions_find_the_same_faces

    for name in ("centerface", "yunet"):
        fp32 = create_session(get_model(name), provider="cuda")
        fp16 = create_session(get_model(name), provider="cuda", precision="fp16")
        assert fp16.provider == CUDA and fp16.precision == "fp16" and fp16.label == f"{CUDA} fp16"
        assert_sessions_find_the_same_faces(fp32, fp16, data_dir)


def test_tensorrt_asked_without_tensorrt_runs_on_cuda():
    """This onnxruntime-gpu has no TensorRT provider (or no TensorRT libraries): the session
    runs on CUDA and its label says TensorRT was unavailable."""
    import onnxruntime as ort

    from facefleet.models.session import TENSORRT

    session = create_session(get_model("centerface"), provider="tensorrt")
    if TENSORRT in ort.get_available_providers() and session.provider == TENSORRT:
        pytest.skip("TensorRT is present here: nothing falls back")
    assert session.provider == CUDA and session.fell_back
    assert session.label == f"{CUDA} (TensorRT unavailable)"
    assert len(FaceDetector(session, 640).detect([np.zeros((360, 640, 3), np.uint8)])) == 1
