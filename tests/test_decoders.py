"""Detector decoders: exact decoding on signature-compatible test models (SCRFD, RetinaFace,
YOLO face: small constant ONNX graphs, not trained models), the shipped BlazeFace on a real
photo, detection at rotated angles, frames without faces."""

import json

import cv2
import numpy as np
import pytest

from detector_fakes import (
    AnchorFace,
    RecordingSession,
    blazeface_like,
    scrfd_like,
    session_for,
    shipped_session,
    yolo_face_like,
)
from facefleet.models.manifest import get_model
from facefleet.models.session import create_session
from facefleet.pipeline.detect import (
    FaceDetector,
    blazeface_anchors,
    decode_blazeface,
    decode_scrfd,
    grid_anchors,
    unrotate_points,
)
from facefleet.pipeline.geometry import box_iou

WHITE = np.full((320, 320, 3), 255, np.uint8)
BLACK = np.zeros((320, 320, 3), np.uint8)

# Designed predictions of a 160 x 160 SCRFD-like input (frames of 320 px: scale 0.5).
FACE_A = AnchorFace(16, 3, 5, 1, 0.9, (1.0, 1.5, 2.0, 2.5), (-0.5, -0.5, 1.0, -0.5, 0.25, 0.5, -0.25, 1.5, 0.75, 1.5))
FACE_B = AnchorFace(8, 14, 4, 0, 0.8, (1.0, 1.0, 1.0, 1.5), (-0.5, -0.2, 0.5, -0.2, 0.0, 0.3, -0.4, 0.9, 0.4, 0.9))
# same box as A from a stride-8 anchor, lower score: NMS drops it
DUPLICATE_A = AnchorFace(8, 6, 11, 0, 0.7, (3.0, 3.0, 3.0, 5.0), (0,) * 10)
BELOW = AnchorFace(32, 2, 2, 1, 0.3, (1.0, 1.0, 1.0, 1.0), (0,) * 10)
SCRFD_FACES = (FACE_A, FACE_B, DUPLICATE_A, BELOW)
SCRFD_SPEC = dict(channels="BGR", mean=(127.5,) * 3, std=(128.0,) * 3, input_size=(160, 160))


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("signature_test_models")


def scrfd_test_model(tmp, decoder="scrfd", **build):
    data = scrfd_like(SCRFD_FACES, **build)
    return session_for(tmp, data, name=f"{decoder}_signature_test_{len(build)}", decoder=decoder, **SCRFD_SPEC)


def check_scrfd_faces(found, scale=0.5):
    assert len(found) == 2
    np.testing.assert_allclose(found.scores, [0.9, 0.8], atol=1e-6)
    np.testing.assert_allclose(found.boxes[0], FACE_A.box() / scale, atol=1e-4)
    np.testing.assert_allclose(found.boxes[1], FACE_B.box() / scale, atol=1e-4)
    np.testing.assert_allclose(found.landmarks[0], FACE_A.landmarks() / scale, atol=1e-4)
    np.testing.assert_allclose(found.landmarks[1], FACE_B.landmarks() / scale, atol=1e-4)


@pytest.mark.parametrize("decoder", ["scrfd", "retinaface"])
def test_scrfd_and_retinaface_signature_test_models_decode_exactly(module_tmp, decoder):
    model = scrfd_test_model(module_tmp, decoder)
    found = FaceDetector(model, threshold=0.5).detect([WHITE])[0]
    # FACE_A: anchor centre (80, 48), distances (16, 24, 32, 40): box (64, 24, 112, 88) in the input
    np.testing.assert_allclose(FACE_A.box(), [64, 24, 112, 88])
    check_scrfd_faces(found)


def test_scrfd_signature_test_model_batch_keeps_images_apart(module_tmp):
    model = RecordingSession(scrfd_test_model(module_tmp))
    results = FaceDetector(model, threshold=0.5).detect([WHITE, BLACK, WHITE])
    assert [len(r) for r in results] == [2, 0, 2]
    check_scrfd_faces(results[2])
    assert model.batches == [3]


def test_scrfd_signature_test_model_folded_outputs(module_tmp):
    # non-batched InsightFace exports give (B*A, C) outputs
    model = scrfd_test_model(module_tmp, fold_batch=True)
    assert len(model.session.get_outputs()[0].shape) == 2
    results = FaceDetector(model, threshold=0.5).detect([BLACK, WHITE])
    assert len(results[0]) == 0
    check_scrfd_faces(results[1])


def test_scrfd_signature_test_model_with_pinned_batch_is_called_per_frame(module_tmp):
    model = RecordingSession(scrfd_test_model(module_tmp, batch=1))
    results = FaceDetector(model, threshold=0.5).detect([WHITE, WHITE, BLACK])
    assert model.batches == [1, 1, 1]
    assert [len(r) for r in results] == [2, 2, 0]


def test_scrfd_signature_test_model_threshold_and_frame_shape(module_tmp):
    model = scrfd_test_model(module_tmp)
    assert len(FaceDetector(model, threshold=0.85).detect([WHITE])[0]) == 1
    assert len(FaceDetector(model, threshold=0.95).detect([WHITE])[0]) == 0
    # 320 x 160 frame: letterboxed into the top of the 160 x 160 input, boxes clipped to the frame
    wide = np.full((160, 320, 3), 255, np.uint8)
    found = FaceDetector(model, threshold=0.5).detect([wide])[0]
    np.testing.assert_allclose(found.boxes[0], [128, 48, 224, 160], atol=1e-4)
    np.testing.assert_allclose(found.landmarks[0], FACE_A.landmarks() * 2, atol=1e-4)


def test_grid_anchors_follow_insightface_order():
    # 32 x 16 input, stride 8: 4 columns, 2 rows, x fastest, each centre twice
    anchors = grid_anchors(32, 16, 8, 2)
    expected = np.stack(np.mgrid[:2, :4][::-1], axis=-1).reshape(-1, 2) * 8
    np.testing.assert_array_equal(anchors, np.repeat(expected, 2, axis=0))
    assert anchors[:4].tolist() == [[0, 0], [0, 0], [8, 0], [8, 0]]


def test_decode_scrfd_refuses_mismatched_outputs():
    with pytest.raises(ValueError, match="anchors"):
        decode_scrfd([np.ones((7, 1))], [np.zeros((7, 4))], [np.zeros((7, 10))], 32, 32, 0.5, strides=(8,))


def test_yolo_face_signature_test_model_decodes_exactly(module_tmp):
    rows = np.zeros((5, 20), np.float32)
    lm = [180, 130, 0.9, 220, 130, 0.9, 200, 150, 0.9, 185, 175, 0.9, 215, 175, 0.9]
    rows[0] = [200, 150, 100, 120, 0.85, *lm]
    rows[1] = [400, 400, 50, 50, 0.30, *([0] * 15)]  # below threshold
    rows[2] = [205, 152, 100, 120, 0.70, *([0] * 15)]  # overlaps row 0: suppressed
    rows[3] = [450, 300, 60, 80, 0.60, *([1] * 15)]
    model = session_for(
        module_tmp, yolo_face_like(rows), name="yolo_face_signature_test", decoder="yolo_face",
        channels="BGR", scale=1 / 255, input_size=(640, 640),
    )
    frame = np.full((720, 1280, 3), 255, np.uint8)  # scale 0.5 into 640 x 640
    results = FaceDetector(model, threshold=0.5).detect([frame, np.zeros_like(frame)])
    found = results[0]
    assert len(found) == 2 and len(results[1]) == 0
    np.testing.assert_allclose(found.scores, [0.85, 0.60], atol=1e-6)
    np.testing.assert_allclose(found.boxes, [[300, 180, 500, 420], [840, 520, 960, 680]], atol=1e-3)
    np.testing.assert_allclose(found.landmarks[0], np.array(lm).reshape(5, 3)[:, :2] * 2, atol=1e-3)
    np.testing.assert_allclose(found.landmarks[1], 2.0, atol=1e-6)


def blazeface_design():
    regressors = np.zeros((896, 16), np.float32)
    logits = np.full(896, -10.0, np.float32)
    i = 512 + (2 * 8 + 3) * 6 + 4  # stride 16, row 2, col 3, anchor 4: centre (56, 40)
    regressors[i] = [2, -3, 40, 48, -8, -6, 8, -6, 0, 2, 0, 12, -18, 0, 18, 0]
    logits[i] = 2.0
    return regressors, logits, i


def test_blazeface_anchors_follow_mediapipe():
    anchors = blazeface_anchors()
    assert anchors.shape == (896, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])  # 2 anchors per stride-8 cell
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8]] * 6)  # 6 per stride-16 cell
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_decode_blazeface_exactly():
    regressors, logits, i = blazeface_design()
    boxes, scores, lms = decode_blazeface(regressors, logits[:, None], 128, 128, 0.5)
    np.testing.assert_allclose(blazeface_anchors()[i] * 128, [56, 40])
    np.testing.assert_allclose(boxes, [[38, 13, 78, 61]], atol=1e-4)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0))], atol=1e-6)
    half = 16 * (0.62086607 - 0.37913393) / 2 / (0.64526786 - 0.35473214)
    expected = [[48, 34], [64, 34], [56, 42], [56 - half, 52], [56 + half, 52]]
    np.testing.assert_allclose(lms[0], expected, atol=1e-4)


def test_blazeface_signature_test_model_through_the_detector(module_tmp):
    regressors, logits, _ = blazeface_design()
    model = session_for(
        module_tmp, blazeface_like(regressors, logits), name="blazeface_signature_test", decoder="blazeface",
        channels="RGB", scale=1 / 127.5, mean=(1.0,) * 3, input_size=(128, 128),
    )
    frame = np.zeros((256, 256, 3), np.uint8)
    results = FaceDetector(model, threshold=0.5).detect([frame, frame])
    for found in results:
        np.testing.assert_allclose(found.boxes, [[76, 26, 156, 122]], atol=1e-3)


# ----------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def astronaut(data_dir):
    # the crop placed back where it sits in skimage's 512 x 512 astronaut
    canvas = np.zeros((512, 512, 3), np.uint8)
    canvas[0:260, 110:350] = cv2.imread(str(data_dir / "astronaut.jpg"))
    return canvas


@pytest.fixture(scope="module")
def centerface():
    return create_session(get_model("centerface"), provider="cpu")


@pytest.fixture(scope="module")
def blazeface():
    return shipped_session("blazeface_short_128")


@pytest.fixture(scope="module")
def blazeface_batched():
    # with a free batch the TFLite-converted heads fold images layer by layer: unfolded by the decoder
    return shipped_session("blazeface_short_128", free_batch=True)


def test_blazeface_finds_the_astronaut(blazeface, centerface, astronaut):
    found = FaceDetector(blazeface, threshold=0.5).detect([astronaut])[0]
    reference = FaceDetector(centerface, detect_size=512).detect([astronaut])[0]
    assert len(found) == 1
    assert found.scores[0] == pytest.approx(0.92, abs=0.03)  # figure in shared/models/README.md
    assert box_iou(reference.boxes[0], found.boxes)[0] > 0.6
    lm = found.landmarks[0]
    assert lm[0, 0] < lm[2, 0] < lm[1, 0]  # eyes left and right of the nose
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])  # eyes, nose, mouth downwards
    assert lm[3, 0] < lm[4, 0]
    x1, y1, x2, y2 = found.boxes[0]
    assert ((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)).all()
    # each eye within a few pixels of CenterFace's
    assert np.linalg.norm(lm[:2] - reference.landmarks[0, :2], axis=1).max() < 8


@pytest.mark.parametrize("name", ["astronaut.jpg", "obama.jpg", "biden.jpg", "two_people.jpg"])
def test_blazeface_finds_the_known_faces(blazeface, data_dir, name):
    known = np.array(json.loads((data_dir / "faces.json").read_text())[name], np.float32)
    found = FaceDetector(blazeface, threshold=0.5).detect([cv2.imread(str(data_dir / name))])[0]
    assert len(found) == len(known)
    assert (found.scores > 0.8).all()
    for box, lm in zip(found.boxes, found.landmarks):
        # BlazeFace boxes are square and tighter than CenterFace's (faces.json)
        assert box_iou(box, known).max() > 0.6
        x1, y1, x2, y2 = box
        assert ((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)).all()
        assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])


def test_blazeface_batch_equals_one_by_one(blazeface, blazeface_batched, astronaut):
    frames = [astronaut, np.ascontiguousarray(astronaut[:, ::-1]), np.full_like(astronaut, 127)]
    model = RecordingSession(blazeface_batched)
    batch = FaceDetector(model, threshold=0.5).detect(frames)
    assert model.batches == [3]
    single = [FaceDetector(blazeface, threshold=0.5).detect([f])[0] for f in frames]
    assert [len(b) for b in batch] == [1, 1, 0]
    for b, s in zip(batch, single):
        np.testing.assert_allclose(b.boxes, s.boxes, atol=0.05)
        np.testing.assert_allclose(b.landmarks, s.landmarks, atol=0.05)
    # mirrored frame: mirrored box, and the image-left eye is still first
    assert batch[1].boxes[0, 0] == pytest.approx(512 - batch[0].boxes[0, 2], abs=4)
    assert batch[1].landmarks[0, 0, 0] < batch[1].landmarks[0, 1, 0]


def test_unrotate_points_inverts_rot90():
    h, w = 3, 5
    frame = np.arange(h * w).reshape(h, w)
    for angle in (0, 90, 180, 270):
        turned = np.rot90(frame, k=angle // 90)
        for r in range(turned.shape[0]):
            for c in range(turned.shape[1]):
                x, y = unrotate_points(np.array([c + 0.5, r + 0.5]), angle, w, h)
                assert frame[int(y), int(x)] == turned[r, c]


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_rotated_angles_find_a_turned_face_and_map_it_back(centerface, data_dir, turns):
    image = cv2.imread(str(data_dir / "astronaut.jpg"))
    h, w = image.shape[:2]
    upright = FaceDetector(centerface, detect_size=640).detect([image])[0]
    turned = np.ascontiguousarray(np.rot90(image, k=-turns))  # clockwise by 90 * turns
    plain = FaceDetector(centerface, detect_size=640).detect([turned])[0]
    found = FaceDetector(centerface, detect_size=640, angles=(0, 90, 180, 270)).detect([turned])[0]
    assert len(found) == 1
    # where the upright face lands in the turned frame: turning that frame counter-clockwise
    # by 90 * turns gives the upright image back, so its points map as detections at that angle
    back = 90 * turns
    corners = upright.boxes[0][[0, 1, 2, 1, 2, 3, 0, 3]].reshape(4, 2)
    th, tw = turned.shape[:2]
    expected_corners = unrotate_points(corners, back, tw, th)
    expected = np.concatenate([expected_corners.min(0), expected_corners.max(0)])
    np.testing.assert_allclose(found.boxes[0], expected, atol=1.0)
    np.testing.assert_allclose(found.landmarks[0], unrotate_points(upright.landmarks[0], back, tw, th), atol=1.0)
    assert found.scores[0] == pytest.approx(upright.scores[0], abs=1e-3)
    # the face turned away from upright is found worse, if at all, without the angles
    if len(plain):
        assert plain.scores.max() < found.scores[0]
    assert turned.shape[:2] == ((w, h) if turns % 2 else (h, w))


def test_angles_must_be_quarter_turns(centerface):
    with pytest.raises(ValueError, match="multiples of 90"):
        FaceDetector(centerface, angles=(0, 45))
    assert FaceDetector(centerface, angles=(0, 360, -90)).angles == (0, 270)


@pytest.mark.parametrize("name", ["centerface", "yunet", "blazeface_short_128"])
def test_frames_without_faces_give_no_detections_and_stay_unchanged(name):
    model = shipped_session(name) if name.startswith("blaze") else create_session(get_model(name), provider="cpu")
    rng = np.random.default_rng(7)
    frames = [np.full((240, 320, 3), 127, np.uint8), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]
    copies = [f.copy() for f in frames]
    for angles in ((0,), (0, 90, 180, 270)):
        results = FaceDetector(model, detect_size=320, angles=angles).detect(frames)
        assert [len(r) for r in results] == [0, 0]
        assert results[0].boxes.shape == (0, 4) and results[0].landmarks.shape == (0, 5, 2)
    for f, c in zip(frames, copies):
        np.testing.assert_array_equal(f, c)
    assert FaceDetector(model).detect([]) == []
