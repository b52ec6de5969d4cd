"""Enhancement stage with signature-compatible test models (not trained enhancers).

The test models (tests/fakes.py) have GFPGAN's and CodeFormer's input/output signatures
and compute the identity or a colour inversion, so alignment, normalisation, the box
mask, paste-back, blending and batching are checked exactly. Nothing here is a real
enhancement.
"""

import time
import tracemalloc

import cv2
import numpy as np
import pytest

import fakes
from facefleet.errors import ModelError
from facefleet.pipeline.align import align_matrix, box_mask, paste_rect, template_points
from facefleet.pipeline.enhance import Enhancer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "identity": fakes.session(fakes.enhancer_model(root / "identity.onnx", "identity"), fakes.GFPGAN_LIKE),
        "invert": fakes.session(fakes.enhancer_model(root / "invert.onnx", "invert"), fakes.GFPGAN_LIKE),
        "codeformer": fakes.session(
            fakes.enhancer_model(root / "codeformer.onnx", weight_input=True),
            fakes.GFPGAN_LIKE,
            name="test_codeformer",
            extra_inputs=(("weight", 0.5),),
        ),
    }


@pytest.fixture(scope="module")
def astronaut(data_dir):
    frame = fakes.place(cv2.imread(str(data_dir / "astronaut.jpg")), x=100, y=100)
    found = fakes.centerface_detector().detect([frame])[0]
    assert len(found) == 1
    return frame, found.landmarks


def face_rect(landmarks, frame):
    return paste_rect(align_matrix(landmarks, "ffhq_512", 512), (512, 512), frame.shape[1::-1])


def changed(a, b):
    return np.abs(a.astype(np.int16) - b).max(axis=2)


def outside(diff, rect):
    x1, y1, x2, y2 = rect
    out = diff.copy()
    out[y1:y2, x1:x2] = 0
    return out


def test_enhancer_paste_back_of_signature_compatible_identity_model_leaves_the_frame(models, astronaut):
    frame, landmarks = astronaut
    out = frame.copy()
    Enhancer(models["identity"], blend=100).enhance([out], [landmarks])
    diff = changed(out, frame)
    rect = face_rect(landmarks[0], frame)
    assert outside(diff, rect).max() == 0
    x1, y1, x2, y2 = rect
    inside = diff[y1:y2, x1:x2]
    assert inside.mean() < 1.0 and np.percentile(inside, 99) <= 10  # resampling noise only


def test_enhancer_with_signature_compatible_inverting_model_changes_only_the_face_box(models, astronaut):
    frame, landmarks = astronaut
    out = frame.copy()
    Enhancer(models["invert"], blend=80, mask_blur=0.3).enhance([out], [landmarks])
    diff = changed(out, frame)
    rect = face_rect(landmarks[0], frame)
    assert outside(diff, rect).max() == 0
    # at the nose the mask is 1: 80 % of the inverted pixel, 20 % of the original
    x, y = np.round(landmarks[0][2]).astype(int)
    expected = 0.2 * frame[y, x].astype(float) + 0.8 * (255 - frame[y, x].astype(float))
    assert np.abs(out[y, x] - expected).max() <= 4
    # the whole face region changed, the mask's blurred border less than its centre
    x1, y1, x2, y2 = rect
    assert (diff[y1:y2, x1:x2] > 0).mean() > 0.5


def test_enhancer_blend_zero_leaves_the_frame_unchanged_and_skips_the_model(models, astronaut):
    frame, landmarks = astronaut
    out = frame.copy()
    recorder = fakes.RecordingSession(models["invert"])
    Enhancer(recorder, blend=0).enhance([out], [landmarks])
    assert np.array_equal(out, frame) and recorder.batches == []


def test_enhancer_blend_scales_the_change(models, astronaut):
    frame, landmarks = astronaut
    full, half = frame.copy(), frame.copy()
    Enhancer(models["invert"], blend=100).enhance([full], [landmarks])
    Enhancer(models["invert"], blend=50).enhance([half], [landmarks])
    d_full = full.astype(float) - frame
    d_half = half.astype(float) - frame
    moved = np.abs(d_full) > 20
    np.testing.assert_allclose(d_half[moved], d_full[moved] / 2, atol=1.01)


def test_frames_without_faces_pass_through_unchanged(models, astronaut):
    frame, landmarks = astronaut
    empty = np.full((360, 640, 3), 77, np.uint8)
    recorder = fakes.RecordingSession(models["invert"])
    enhancer = Enhancer(recorder)
    enhancer.enhance([empty], [np.zeros((0, 5, 2), np.float32)])
    assert (empty == 77).all() and recorder.batches == []
    # mixed with a frame that has a face: only that one changes
    a, b = frame.copy(), frame.copy()
    enhancer.enhance([a, b], [landmarks, np.zeros((0, 5, 2))])
    assert not np.array_equal(a, frame) and np.array_equal(b, frame)
    enhancer.enhance([], [])


def test_codeformer_weight_input_reaches_the_signature_compatible_test_model(models, astronaut, tmp_path):
    frame, landmarks = astronaut
    model = models["codeformer"]
    weight = {inp.name: inp for inp in model.session.get_inputs()}["weight"]
    assert weight.type == "tensor(double)"  # FaceFusion's CodeFormer export takes float64
    as_identity, as_invert, from_spec = frame.copy(), frame.copy(), frame.copy()
    Enhancer(model, blend=100, weight=0.0).enhance([as_identity], [landmarks])
    Enhancer(model, blend=100, weight=1.0).enhance([as_invert], [landmarks])
    Enhancer(model, blend=100).enhance([from_spec], [landmarks])  # the spec's 0.5: gain 0 -> grey
    x, y = np.round(landmarks[0][2]).astype(int)
    assert np.abs(as_identity[y, x].astype(int) - frame[y, x]).max() <= 3
    assert np.abs(as_invert[y, x].astype(int) - (255 - frame[y, x].astype(int))).max() <= 3
    assert np.abs(from_spec[y, x].astype(int) - 128).max() <= 1
    feeds = Enhancer(model).extra_feeds
    assert feeds["weight"].dtype == np.float64 and feeds["weight"].tolist() == [0.5]
    # a file with a weight input that the manifest entry does not list is refused at load
    with pytest.raises(ModelError, match="does not match"):
        fakes.session(fakes.enhancer_model(tmp_path / "codeformer.onnx", weight_input=True), fakes.GFPGAN_LIKE)
    extra = Enhancer(models["identity"], weight=0.7).extra_feeds
    assert extra == {}  # a GFPGAN-signature model takes no weight: none is fed
    with pytest.raises(ValueError):
        Enhancer(model, weight=2.0)


def test_overlapping_faces_do_not_depend_on_batch_size(models, astronaut):
    frame, landmarks = astronaut
    lm = landmarks[0]
    faces = np.stack([lm, lm + [25, 10], lm + [50, -5], lm * 0.9 + [30, 30], lm + [-20, 40]])
    results = []
    for batch_size in (1, 2, 3, 16):
        frames = [frame.copy(), frame.copy()]
        Enhancer(models["invert"], batch_size=batch_size).enhance(frames, [faces, faces[:2]])
        results.append(frames)
    for other in results[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(results[0], other))


def test_selected_faces_only(models, astronaut):
    frame, landmarks = astronaut
    two = np.stack([landmarks[0], landmarks[0] + [300, 0]])
    out = frame.copy()
    Enhancer(models["invert"]).enhance([out], [two], selected=[np.array([False, True])])
    diff = changed(out, frame)
    assert outside(diff, face_rect(two[1], frame)).max() == 0 and diff.max() > 0


def test_three_hundred_faces_in_one_frame_run_in_bounded_batches(models):
    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    template = template_points("ffhq_512", 512) / 512 * 64  # 64 px faces on a 20 x 15 grid
    faces = np.stack([template + [col * 96, row * 72] for row in range(15) for col in range(20)])
    assert len(faces) == 300
    recorder = fakes.RecordingSession(models["invert"])
    enhancer = Enhancer(recorder, batch_size=8)
    out = frame.copy()
    tracemalloc.start()
    t0 = time.perf_counter()
    enhancer.enhance([out], [faces])
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert recorder.batches == [8] * 37 + [4]
    # numpy memory held at once: about one batch of crops and tensors, not 300 faces' worth
    # (300 float32 512x512 crops alone would be 900 MiB)
    assert peak < 160 * 2**20, peak / 2**20
    assert seconds < 20
    assert (changed(out, frame) > 0).mean() > 0.3  # the faces cover about half the frame


def test_a_model_with_a_fixed_batch_of_one_runs_face_by_face(tmp_path, astronaut):
    import onnx

    path = fakes.enhancer_model(tmp_path / "fixed.onnx", "invert")
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    recorder = fakes.RecordingSession(fakes.session(path, fakes.GFPGAN_LIKE))
    frame, landmarks = astronaut
    out = frame.copy()
    Enhancer(recorder, batch_size=4).enhance([out], [np.repeat(landmarks, 3, axis=0)])
    assert recorder.batches == [1, 1, 1]


def test_enhancer_options_are_checked(models):
    with pytest.raises(ValueError, match="blend"):
        Enhancer(models["identity"], blend=101)
    with pytest.raises(ValueError, match="blur"):
        Enhancer(models["identity"], mask_blur=-0.1)
    with pytest.raises(ValueError, match="padding"):
        Enhancer(models["identity"], mask_padding=(0, 0, 0, 101))
    enhancer = Enhancer(models["identity"], mask_blur=0.5, mask_padding=(10, 0, 0, 0))
    np.testing.assert_array_equal(enhancer.mask, box_mask(512, 0.5, (10, 0, 0, 0)))
