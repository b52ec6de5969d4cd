"""The shipped detectors on a real photo, with the figures from ../shared/models/README.md."""

import cv2
import numpy as np
import pytest

from facefleet.errors import ModelError
from facefleet.models.manifest import get_model, model_path
from facefleet.models.session import CPU, choose_provider, create_session, free_dims, read_verified
from facefleet.pipeline.detect import FaceDetector
from facefleet.pipeline.geometry import box_iou

MEDIA_ASTRONAUT = "astronaut.jpg"


@pytest.fixture(scope="module")
def astronaut(data_dir):
    # tests/data/astronaut.jpg is a crop of skimage's astronaut: x offset 110, y offset 0.
    image = cv2.imread(str(data_dir / MEDIA_ASTRONAUT))
    canvas = np.zeros((512, 512, 3), np.uint8)
    canvas[0:260, 110:350] = image
    return canvas


@pytest.fixture(scope="module", params=["centerface", "yunet"])
def detector(request):
    return FaceDetector(create_session(get_model(request.param), provider="cpu"), detect_size=512, threshold=0.5)


EXPECTED = {"centerface": ([181, 58, 270, 178], 0.90), "yunet": ([178, 63, 268, 176], 0.93)}


def test_detector_finds_the_published_box(detector, astronaut):
    found = detector.detect([astronaut])[0]
    box, score = EXPECTED[detector.model.spec.name]
    assert len(found) == 1
    assert box_iou(np.array(box, np.float32), found.boxes)[0] > 0.85
    assert found.scores[0] == pytest.approx(score, abs=0.05)
    # landmarks: eyes above nose above mouth, all inside the box
    lm = found.landmarks[0]
    assert lm[0, 1] < lm[2, 1] < lm[3, 1] and lm[0, 0] < lm[1, 0]
    x1, y1, x2, y2 = found.boxes[0]
    assert ((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)).all()


def test_batched_detection_equals_one_by_one(detector, astronaut):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    empty = np.full_like(astronaut, 127)
    batch = detector.detect([astronaut, flipped, empty])
    single = [detector.detect([f])[0] for f in (astronaut, flipped, empty)]
    for b, s in zip(batch, single):
        np.testing.assert_allclose(b.boxes, s.boxes, atol=0.05)
    assert len(batch[2]) == 0
    # the flipped face is found mirrored
    assert batch[1].boxes[0, 0] == pytest.approx(512 - batch[0].boxes[0, 2], abs=4)


def test_boxes_map_back_to_full_resolution(detector, astronaut):
    big = cv2.resize(astronaut, (1024, 1024))
    small_box = detector.detect([astronaut])[0].boxes[0]
    big_box = detector.detect([big])[0].boxes[0]
    np.testing.assert_allclose(big_box, small_box * 2, atol=6)


def test_centerface_dims_freed_at_load_keep_outputs():
    import onnx

    spec = get_model("centerface")
    data = read_verified(model_path(spec), spec.sha256)
    freed = onnx.load_from_string(free_dims(data, spec.make_dynamic))
    dims = [d.dim_param or d.dim_value for d in freed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert len(freed.graph.input) == 1


def test_corrupt_model_is_refused(tmp_path):
    spec = get_model("centerface")
    bad = tmp_path / "centerface.onnx"
    data = bytearray(model_path(spec).read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        create_session(spec, provider="cpu", path=bad)


def test_provider_actually_running_is_reported():
    session = create_session(get_model("yunet"), provider="auto")
    assert session.provider == session.session.get_providers()[0]
    assert choose_provider("cpu") == CPU


def test_unknown_model_and_provider_are_clear_errors():
    with pytest.raises(ModelError, match="known models"):
        get_model("nope")
    with pytest.raises(ModelError, match="execution provider"):
        choose_provider("tpu")
