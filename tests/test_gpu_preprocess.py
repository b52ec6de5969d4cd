"""Detector preprocessing as an ONNX graph (the GPU path), checked on the CPU provider.

The graph must give the tensor `prepare_batch` gives, within one pixel level before
normalisation: OpenCV resizes uint8 in fixed point (11-bit weights) and rounds to whole
levels, the graph resizes in float, so a resampled value differs by the rounding (< 0.5)
plus the weights' quantisation (seen: at most 0.81 levels). Where no interpolation
happens (1920x1080 -> 640x360 samples whole source pixels) the two are equal.
"""

import warnings

import cv2
import numpy as np
import pytest

from facefleet.models.manifest import get_model
from facefleet.models.preprocess import DevicePreprocessor, InputPlan, build_graph
from facefleet.models.session import CPU, create_session
from facefleet.pipeline import detect as detect_module
from facefleet.pipeline.detect import (
    PREPROCESS_ENV,
    FaceDetector,
    fixed_geometry,
    input_plan,
    prepare_batch,
    preprocess_mode,
)
from facefleet.pipeline.geometry import detect_geometry
from photos import assert_same_detections, test_photos

LEVEL_TOLERANCE = 1.0  # pixel levels, before normalisation (see the module docstring)

NORMS = {
    # channels, scale, mean, std: CenterFace's plain RGB and a SCRFD-like / scaled BGR
    "rgb_plain": ("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "bgr_mean_std": ("BGR", 1.0, (127.5, 127.5, 127.5), (128.0, 128.0, 128.0)),
    "rgb_scaled": ("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

SIZES = [(1920, 1080), (1280, 720), (641, 479), (333, 777), (1000, 1000), (97, 61)]


def textured_frames(width, height, n, seed=0):
    """Frames with edges and noise, so interpolation weights matter."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
        frame = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
        noise = rng.integers(-20, 21, frame.shape)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def graph_batch(frames, geom, rows, channels, scale, mean, std):
    h, w = frames[0].shape[:2]
    plan = InputPlan((w, h), geom.resized, geom.padded, rows, channels, scale, mean, std)
    return DevicePreprocessor(plan, CPU, threads=1)(frames).numpy()


def assert_same_tensor(graph, host, scale, std):
    level = scale / min(std)  # one pixel level in normalised units
    diff = np.abs(graph - host) / level
    assert diff.max() <= LEVEL_TOLERANCE + 1e-4, f"max {diff.max():.3f} levels"
    assert diff.mean() < 0.35, f"mean {diff.mean():.3f} levels"


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_graph_gives_prepare_batch_tensor(size, norm):
    channels, scale, mean, std = NORMS[norm]
    width, height = size
    frames = textured_frames(width, height, 2, seed=width)
    geom = detect_geometry(width, height, 640, 32)
    host = prepare_batch(frames, geom, channels, scale, mean, std)
    graph = graph_batch(frames, geom, 2, channels, scale, mean, std)
    assert graph.shape == host.shape and graph.dtype == np.float32
    assert_same_tensor(graph, host, scale, std)
    # the padding is a zero pixel normalised, exactly as prepare_batch makes it
    rw, rh = geom.resized
    np.testing.assert_array_equal(graph[:, :, rh:, :], host[:, :, rh:, :])
    np.testing.assert_array_equal(graph[:, :, :, rw:], host[:, :, :, rw:])


def test_whole_pixel_downscale_is_exact():
    frames = textured_frames(1920, 1080, 2)
    geom = detect_geometry(1920, 1080, 640, 32)
    for channels in ("RGB", "BGR"):
        host = prepare_batch(frames, geom, channels)
        np.testing.assert_array_equal(graph_batch(frames, geom, 2, channels, 1.0, (0, 0, 0), (1, 1, 1)), host)


@pytest.mark.parametrize("size", [(1920, 1080), (480, 853)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_letterboxed_fixed_input(size):
    """Models with a fixed input (yunet_2023mar, yolo_face) get frames letterboxed into it."""
    frames = textured_frames(*size, 1)
    geom = fixed_geometry(*size, (640, 640))
    host = prepare_batch(frames, geom, "BGR", 1 / 255)
    assert_same_tensor(graph_batch(frames, geom, 1, "BGR", 1 / 255, (0, 0, 0), (1, 1, 1)), host, 1 / 255, (1, 1, 1))


def test_short_batch_padded_with_zero_frames():
    """A graph keeps one input shape: fewer frames than rows get zero frames appended,
    which come out as prepare_batch's pad_rows of a zero pixel would after normalising."""
    channels, scale, mean, std = NORMS["bgr_mean_std"]
    frames = textured_frames(641, 479, 3)
    geom = detect_geometry(641, 479, 640, 32)
    graph = graph_batch(frames, geom, 5, channels, scale, mean, std)
    assert graph.shape[0] == 5
    host = prepare_batch(frames + [np.zeros_like(frames[0])] * 2, geom, channels, scale, mean, std)
    assert_same_tensor(graph, host, scale, std)
    np.testing.assert_array_equal(graph[3:], host[3:])


def test_graph_checks_its_inputs():
    plan = InputPlan((64, 48), (32, 24), (32, 32), 2)
    pre = DevicePreprocessor(plan, CPU, threads=1)
    with pytest.raises(ValueError):
        pre([np.zeros((48, 64, 3), np.uint8)] * 3)  # more frames than rows
    with pytest.raises(ValueError):
        pre([np.zeros((48, 63, 3), np.uint8)])  # another frame size
    with pytest.raises(ValueError):
        InputPlan((64, 48), (32, 24), (16, 32), 1)  # padded smaller than resized
    # the graph itself is a valid ONNX model with uint8 frame inputs
    model = build_graph(plan)
    assert [i.name for i in model.graph.input] == ["frame_0", "frame_1"]


# ---------------------------------------------------------------------------- detections


@pytest.fixture(scope="module", params=["centerface", "yunet"])
def cpu_session(request):
    return create_session(get_model(request.param), provider="cpu")


@pytest.fixture(scope="module")
def photos(data_dir):
    return test_photos(data_dir)


def test_detections_agree_between_paths(cpu_session, photos):
    host = FaceDetector(cpu_session, 640, preprocess="host")
    graph = FaceDetector(cpu_session, 640, preprocess="graph")
    found_any = 0
    for name, frames in photos.items():
        a = host.detect(frames)
        b = graph.detect(frames)
        assert host.last_preprocess == "host" and graph.last_preprocess == "graph", name
        assert_same_detections(a, b)
        found_any += sum(len(x) for x in a)
    assert found_any >= 8  # the photos have faces: the comparison compared boxes
    assert graph.graph_failure is None


def test_detections_agree_with_batches_and_angles(cpu_session, photos):
    """Calls split into several model calls, and turned frames (another frame size)."""
    frames = photos["two_people"] * 3
    kwargs = dict(max_batch=4, angles=(0, 90))
    a = FaceDetector(cpu_session, 480, preprocess="host", **kwargs).detect(frames)
    b = FaceDetector(cpu_session, 480, preprocess="graph", **kwargs).detect(frames)
    assert sum(len(x) for x in a) >= 6
    assert_same_detections(a, b)


def test_split_path_feeds_the_graph_resized_frames_and_matches_the_host_path(cpu_session, photos):
    """"split": OpenCV resizes on the host (as prepare_batch does), the graph only pads,
    orders channels and normalises, so its model input equals the host path's tensor."""
    frames = photos["two_people"] * 3
    split = FaceDetector(cpu_session, 640, max_batch=4, preprocess="split")
    found = split.detect(frames)
    assert split.last_preprocess == "split" and split.graph_failure is None
    height, width = frames[0].shape[:2]
    geom = split.geometry(width, height)
    assert split.graphs
    for pre in split.graphs:
        assert pre.plan.frame == tuple(geom.resized) != (width, height)  # resized frames went in
        assert "Resize" not in {node.op_type for node in build_graph(pre.plan).graph.node}
    pre = split.graphs[0]
    some = frames[: pre.plan.rows]
    spec = cpu_session.spec
    expected = prepare_batch(some, geom, spec.channels, spec.scale, spec.mean, spec.std)
    resized = [detect_module.resized_frame(f, geom) for f in some]
    np.testing.assert_allclose(pre(resized).numpy()[: len(some)], expected, rtol=0, atol=1e-5)
    host = FaceDetector(cpu_session, 640, max_batch=4, preprocess="host").detect(frames)
    assert sum(len(x) for x in host) >= 6
    assert_same_detections(host, found)


# ---------------------------------------------------------------------------- selection


def test_auto_uses_the_host_path_on_the_cpu_provider(cpu_session, photos):
    detector = FaceDetector(cpu_session, 640, preprocess="auto")
    assert cpu_session.provider == CPU and not detector.uses_graph
    detector.detect(photos["obama"])
    assert detector.last_preprocess == "host" and detector.graphs == []


def test_auto_takes_the_split_way_for_a_detector_on_a_gpu(cpu_session, monkeypatch):
    monkeypatch.setattr(type(cpu_session), "on_gpu", property(lambda self: True))
    assert FaceDetector(cpu_session, 640).way == "split"
    assert FaceDetector(cpu_session, 640, preprocess="graph").way == "graph"
    assert FaceDetector(cpu_session, 640, preprocess="host").way == "host"


def test_mode_from_argument_and_environment(monkeypatch):
    monkeypatch.delenv(PREPROCESS_ENV, raising=False)
    assert preprocess_mode() == "auto"
    monkeypatch.setenv(PREPROCESS_ENV, "Graph")
    assert preprocess_mode() == "graph"
    assert preprocess_mode("host") == "host"  # the argument wins
    monkeypatch.setenv(PREPROCESS_ENV, "gpu-please")
    with pytest.warns(RuntimeWarning, match=PREPROCESS_ENV):
        assert preprocess_mode() == "auto"
    with pytest.raises(ValueError, match="auto, graph, split, host"):
        preprocess_mode("fast")


def test_environment_forces_the_graph(cpu_session, photos, monkeypatch):
    monkeypatch.setenv(PREPROCESS_ENV, "graph")
    detector = FaceDetector(cpu_session, 640)
    detector.detect(photos["obama"])
    assert detector.last_preprocess == "graph"


def test_a_graph_that_cannot_be_built_falls_back_once(cpu_session, photos, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no Resize here")

    monkeypatch.setattr(detect_module, "DevicePreprocessor", broken)
    expected = FaceDetector(cpu_session, 640, preprocess="host").detect(photos["two_people"])
    detector = FaceDetector(cpu_session, 640, preprocess="graph")
    with pytest.warns(RuntimeWarning, match="no Resize here"):
        found = detector.detect(photos["two_people"])
    assert detector.last_preprocess == "host" and "no Resize here" in detector.graph_failure
    assert_same_detections(found, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again = detector.detect(photos["odd"])
    assert detector.last_preprocess == "host" and len(again[0]) >= 2


def test_a_graph_whose_first_run_fails_falls_back(cpu_session, photos, monkeypatch):
    class FailsToRun(DevicePreprocessor):
        def __call__(self, frames):
            raise RuntimeError("kernel not implemented")

    monkeypatch.setattr(detect_module, "DevicePreprocessor", FailsToRun)
    detector = FaceDetector(cpu_session, 640, preprocess="graph")
    with pytest.warns(RuntimeWarning, match="kernel not implemented"):
        found = detector.detect(photos["obama"])
    assert detector.last_preprocess == "host" and len(found[0]) == 1


def test_out_of_memory_goes_up_to_halve_the_batch(cpu_session, photos, monkeypatch):
    class OutOfMemory(DevicePreprocessor):
        def __call__(self, frames):
            raise RuntimeError("CUDA failure 2: out of memory")

    monkeypatch.setattr(detect_module, "DevicePreprocessor", OutOfMemory)
    detector = FaceDetector(cpu_session, 640, preprocess="graph")
    with pytest.raises(RuntimeError, match="out of memory"):
        detector.detect(photos["obama"])
    assert detector.graph_failure is None  # not the graph's fault: the next call tries again


def test_graphs_kept_are_bounded(cpu_session):
    detector = FaceDetector(cpu_session, 160, preprocess="graph")
    for width in range(100, 100 + 6 * 10, 10):
        detector.detect([np.zeros((80, width, 3), np.uint8)])
    kept = detector.graphs
    assert len(kept) == detect_module.GRAPHS_KEPT
    assert kept[-1].plan.frame == (150, 80)  # most recently used last


def test_input_plan_follows_the_model_spec(cpu_session):
    spec = cpu_session.spec
    geom = detect_geometry(1920, 1080, 640, spec.size_multiple)
    plan = input_plan(1920, 1080, geom, 16, spec)
    assert plan.channels == spec.channels and plan.rows == 16
    assert plan.resized == (640, 360) and plan.padded == geom.padded
