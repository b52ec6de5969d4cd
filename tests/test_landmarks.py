"""Dense landmarks: the shipped FaceMesh on real photos, 2DFAN4 through a signature-compatible
test model (a constant ONNX graph, not trained), the 5-from-dense refinement, batching."""

import json
import math

import cv2
import numpy as np
import pytest

from detector_fakes import RecordingSession, fan68_like, session_for, shipped_session
from facefleet.models.manifest import get_model
from facefleet.models.session import create_session
from facefleet.pipeline.detect import Detections, FaceDetector, fixed_batch, unrotate_points
from facefleet.pipeline.geometry import box_iou, scale_boxes
from facefleet.pipeline.landmarks import (
    MESH_EYE_IMAGE_LEFT,
    MESH_EYE_IMAGE_RIGHT,
    FaceMesh,
    Landmarker68,
    crop_matrices,
    five_from_dense,
    refine_five,
    uncrop_points,
    with_refined_five,
)


@pytest.fixture(scope="module")
def centerface():
    return create_session(get_model("centerface"), provider="cpu")


@pytest.fixture(scope="module")
def facemesh():
    return shipped_session("facemesh_468")


@pytest.fixture(scope="module")
def facemesh_batched():
    # the graph takes any batch (it has no reshapes); freed in case the manifest pins it
    return shipped_session("facemesh_468", free_batch=True)


@pytest.fixture(scope="module")
def astronaut(data_dir):
    return cv2.imread(str(data_dir / "astronaut.jpg"))


@pytest.fixture(scope="module")
def astronaut_faces(centerface, astronaut):
    return FaceDetector(centerface, detect_size=640).detect([astronaut])


# ----------------------------------------------------------------------------- FaceMesh


def test_facemesh_on_the_astronaut(facemesh, astronaut, astronaut_faces):
    found = FaceMesh(facemesh).landmarks([astronaut], astronaut_faces)[0]
    assert found.points.shape == (1, 468, 3)
    assert found.scores[0] > 0.99  # presence 1.0 in shared/models/README.md
    pts = found.points[0]
    x1, y1, x2, y2 = scale_boxes(astronaut_faces[0].boxes, 1.1, 240, 260)[0]
    assert ((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2)).all()
    eye_l, eye_r = pts[list(MESH_EYE_IMAGE_LEFT), :2].mean(0), pts[list(MESH_EYE_IMAGE_RIGHT), :2].mean(0)
    mouth_l, mouth_r, nose = pts[61, :2], pts[291, :2], pts[1, :2]
    assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_five_from_facemesh_is_close_to_the_detectors(facemesh, astronaut, astronaut_faces):
    found = FaceMesh(facemesh).landmarks([astronaut], astronaut_faces)[0]
    five = refine_five(found.points, found.scores, 0.5, astronaut_faces[0].landmarks)
    error = np.linalg.norm(five[0] - astronaut_faces[0].landmarks[0], axis=1)
    # eye centres within a few pixels, nose and mouth corners (the mesh's lip corners) near; box is 96 x 122
    assert error[:2].max() < 4 and error.max() < 9 and error.mean() < 5
    refined = with_refined_five(astronaut_faces, [found])[0]
    np.testing.assert_allclose(refined.landmarks, five)
    np.testing.assert_array_equal(refined.boxes, astronaut_faces[0].boxes)


@pytest.mark.parametrize("name", ["astronaut.jpg", "obama.jpg", "biden.jpg", "two_people.jpg"])
def test_facemesh_on_the_known_faces(facemesh, centerface, data_dir, name):
    known = np.array(json.loads((data_dir / "faces.json").read_text())[name], np.float32)
    image = cv2.imread(str(data_dir / name))
    h, w = image.shape[:2]
    faces = FaceDetector(centerface, detect_size=640).detect([image])
    assert len(faces[0]) == len(known)
    found = FaceMesh(facemesh).landmarks([image], faces)[0]
    assert (found.scores > 0.99).all()
    for box, pts, five in zip(faces[0].boxes, found.points, faces[0].landmarks):
        assert box_iou(box, known).max() > 0.9
        x1, y1, x2, y2 = box
        inside = (pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)
        assert inside.mean() > 0.9  # the mesh's face oval reaches a little past the detector's box
        x1, y1, x2, y2 = scale_boxes(box, 1.2, w, h)[0]
        assert ((pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)).all()
        mesh_five = five_from_dense(pts[None])[0]
        assert mesh_five[0, 0] < mesh_five[2, 0] < mesh_five[1, 0] and mesh_five[3, 0] < mesh_five[4, 0]
        assert max(mesh_five[0, 1], mesh_five[1, 1]) < mesh_five[2, 1] < min(mesh_five[3, 1], mesh_five[4, 1])
        error = np.linalg.norm(mesh_five - five, axis=1) / (box[2] - box[0])
        assert error[:2].max() < 0.07 and error.max() < 0.1


def test_facemesh_presence_is_low_without_a_face_and_the_detector_five_is_kept(facemesh, astronaut_faces):
    noise = np.random.default_rng(3).integers(0, 256, (260, 240, 3), dtype=np.uint8)
    found = FaceMesh(facemesh).landmarks([noise], astronaut_faces)[0]
    assert found.scores[0] < 0.1
    kept = refine_five(found.points, found.scores, 0.5, astronaut_faces[0].landmarks)
    np.testing.assert_array_equal(kept, astronaut_faces[0].landmarks)


def test_facemesh_batches_faces_of_all_frames(facemesh, facemesh_batched, centerface, data_dir):
    frames = [cv2.imread(str(data_dir / "two_people.jpg"))]
    frames += [np.ascontiguousarray(frames[0][:, ::-1]), np.full_like(frames[0], 127)]
    detections = FaceDetector(centerface, detect_size=640).detect(frames)
    assert [len(d) for d in detections] == [2, 2, 0]
    model = RecordingSession(facemesh_batched)
    batch = FaceMesh(model).landmarks(frames, detections)
    assert model.batches == [4]
    # the manifest's own session, batch pinned or not, gives the same
    pinned = fixed_batch(facemesh)
    shipped = RecordingSession(facemesh)
    same = FaceMesh(shipped).landmarks(frames, detections)
    assert shipped.batches == ([pinned] * (4 // pinned) if pinned else [4])
    for a, b in zip(batch, same):
        np.testing.assert_allclose(a.points, b.points, atol=1e-3)
    assert batch[2].points.shape == (0, 468, 3) and batch[2].scores.shape == (0,)
    for frame, det, b in zip(frames[:2], detections[:2], batch[:2]):
        single = FaceMesh(facemesh).landmarks([frame], [det])[0]
        np.testing.assert_allclose(b.points, single.points, atol=1e-3)
        assert (b.scores > 0.99).all()


def test_facemesh_on_a_turned_face_uses_the_eye_line(facemesh, centerface, astronaut, astronaut_faces):
    turned = np.ascontiguousarray(np.rot90(astronaut, k=-1))  # clockwise
    faces = FaceDetector(centerface, detect_size=640, angles=(0, 90, 180, 270)).detect([turned])
    found = FaceMesh(facemesh).landmarks([turned], faces)[0]
    level = FaceMesh(facemesh, rotate=False).landmarks([turned], faces)[0]
    assert found.scores[0] > 0.99 and level.scores[0] < found.scores[0]
    upright = FaceMesh(facemesh).landmarks([astronaut], astronaut_faces)[0]
    th, tw = turned.shape[:2]
    expected = unrotate_points(five_from_dense(upright.points)[0], 90, tw, th)
    assert np.linalg.norm(five_from_dense(found.points)[0] - expected, axis=1).max() < 2


@pytest.mark.parametrize("batch", ["free", "manifest"])
def test_hundreds_of_faces_run_batched_and_bounded(facemesh, facemesh_batched, centerface, astronaut, batch):
    tile = cv2.resize(astronaut[50:190, 55:175], (64, 64), interpolation=cv2.INTER_AREA)
    crowd = np.tile(tile, (10, 10, 1))  # 100 faces in a 640 x 640 frame
    frames = [crowd, crowd.copy()]
    before = [f.copy() for f in frames]
    detector_model = RecordingSession(centerface)
    detections = FaceDetector(detector_model, detect_size=640, max_batch=1).detect(frames)
    assert detector_model.batches == [1, 1]
    assert [len(d) for d in detections] == [100, 100]
    mesh_model = RecordingSession(facemesh_batched if batch == "free" else facemesh)
    found = FaceMesh(mesh_model, max_faces=48).landmarks(frames, detections)
    step = min(48, fixed_batch(mesh_model) or 48)
    assert max(mesh_model.batches) <= step and sum(mesh_model.batches) == 200
    assert len(mesh_model.batches) == math.ceil(200 / step)
    for det, lm in zip(detections, found):
        assert lm.points.shape == (100, 468, 3)
        assert (lm.scores > 0.5).mean() > 0.9
        # every face's mesh centre lies in the tile its box is in
        centre = lm.points[:, :, :2].mean(axis=1)
        box_tile = ((det.boxes[:, :2] + det.boxes[:, 2:]) / 2 // 64).astype(int)
        np.testing.assert_array_equal((centre // 64).astype(int), box_tile)
    for f, b in zip(frames, before):
        np.testing.assert_array_equal(f, b)


def test_no_faces_no_model_call(facemesh):
    model = RecordingSession(facemesh)
    frame = np.zeros((64, 64, 3), np.uint8)
    found = FaceMesh(model).landmarks([frame, frame], [Detections(), Detections()])
    assert model.batches == [] and [len(f) for f in found] == [0, 0]
    assert found[0].points.shape == (0, 468, 3)
    assert with_refined_five([Detections()], found[:1])[0].landmarks.shape == (0, 5, 2)
    with pytest.raises(ValueError, match="detection lists"):
        FaceMesh(model).landmarks([frame], [])


# ----------------------------------------------------------------------------- 2DFAN4

# designed 68 points in 64 x 64 heatmap pixels: a grid, so every index is distinct
POINTS64 = np.stack([8 + (np.arange(68) % 9) * 6, 6 + (np.arange(68) // 9) * 7], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def fan_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fan")
    spec = dict(kind="landmarker", decoder="2dfan4", channels="BGR", scale=1 / 255, input_size=(256, 256))
    return {
        peak: session_for(tmp, fan68_like(POINTS64, peak), name=f"2dfan4_signature_test_{i}", **spec)
        for i, peak in enumerate((0.9, 0.45))
    }


def face(box, eye_angle_deg=0.0):
    """A detection whose eyes are 40 px apart at the given roll."""
    box = np.array(box, np.float32)
    c = (box[:2] + box[2:]) / 2
    t = math.radians(eye_angle_deg)
    d = np.array([math.cos(t), math.sin(t)]) * 20
    five = np.array([c - d, c + d, c, c - d, c + d], np.float32)
    return Detections(boxes=box[None], scores=np.ones(1, np.float32), landmarks=five[None])


def expected_fan_points(box, angle_deg):
    box = np.array(box, np.float64)
    centre = (box[:2] + box[2:]) / 2
    s = 195 / (box[2:] - box[:2]).max()
    crop = POINTS64.astype(np.float64) / 64 * 256 - 128
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return crop @ rot.T / s + centre


def test_2dfan4_signature_test_model_maps_points_back_exactly(fan_models):
    frame = np.full((300, 400, 3), 255, np.uint8)
    box = (100, 50, 200, 170)
    found = Landmarker68(fan_models[0.9]).landmarks([frame], [face(box)])[0]
    assert found.points.shape == (1, 68, 2)
    np.testing.assert_allclose(found.points[0], expected_fan_points(box, 0), atol=1e-3)
    assert found.scores[0] == pytest.approx(1.0)  # mean heatmap peak 0.9 -> 1 (FaceFusion's scale)
    half = Landmarker68(fan_models[0.45]).landmarks([frame], [face(box)])[0]
    assert half.scores[0] == pytest.approx(0.5, abs=1e-6)


def test_2dfan4_signature_test_model_turns_the_crop_by_quarter_turns(fan_models):
    frame = np.full((300, 400, 3), 255, np.uint8)
    box = (150, 60, 270, 160)
    # eyes at 80 degrees: FaceFusion rounds the face angle to 90
    found = Landmarker68(fan_models[0.9]).landmarks([frame], [face(box, 80)])[0]
    np.testing.assert_allclose(found.points[0], expected_fan_points(box, 90), atol=1e-3)


def test_2dfan4_signature_test_model_five_over_68(fan_models):
    white = np.full((300, 400, 3), 255, np.uint8)
    black = np.zeros_like(white)  # the test model's peaks follow the image: no confidence
    dets = [face((100, 50, 200, 170)), face((100, 50, 200, 170))]
    model = RecordingSession(fan_models[0.9])
    found = Landmarker68(model, max_faces=1).landmarks([white, black], dets)
    assert model.batches == [1, 1]
    # (the black crop is lifted a little by the CLAHE step FaceFusion applies to dark crops)
    assert found[0].scores[0] == pytest.approx(1.0) and found[1].scores[0] < 0.1
    refined = with_refined_five(dets, found, threshold=0.5)
    pts = found[0].points[0]
    np.testing.assert_allclose(
        refined[0].landmarks[0], [pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]], atol=1e-5
    )
    np.testing.assert_array_equal(refined[1].landmarks, dets[1].landmarks)


# ----------------------------------------------------------------------------- pure functions


def test_five_from_dense_index_sets():
    rng = np.random.default_rng(0)
    p68 = rng.normal(size=(2, 68, 2)).astype(np.float32)
    five = five_from_dense(p68)
    np.testing.assert_allclose(five[:, 0], p68[:, 36:42].mean(1), atol=1e-6)
    np.testing.assert_allclose(five[:, 1], p68[:, 42:48].mean(1), atol=1e-6)
    np.testing.assert_array_equal(five[:, 2:], p68[:, [30, 48, 54]])
    p468 = rng.normal(size=(1, 468, 3)).astype(np.float32)
    five = five_from_dense(p468)
    np.testing.assert_allclose(five[0, 0], p468[0, list(MESH_EYE_IMAGE_LEFT), :2].mean(0), atol=1e-6)
    np.testing.assert_array_equal(five[0, 2:], p468[0, [1, 61, 291], :2])
    with pytest.raises(ValueError, match="68 or 468"):
        five_from_dense(np.zeros((1, 5, 2)))


def test_refine_five_threshold():
    dense = np.zeros((3, 68, 2), np.float32)
    dense[:, :, 0] = 1.0
    detector = np.full((3, 5, 2), 7.0, np.float32)
    out = refine_five(dense, np.array([0.9, 0.5, 0.1]), 0.5, detector)
    np.testing.assert_array_equal(out[0], np.tile([1.0, 0.0], (5, 1)))
    np.testing.assert_array_equal(out[1:], detector[1:])
    assert np.isnan(refine_five(dense, np.zeros(3), 0.5)).all()


def test_crop_matrices_round_trip():
    boxes = np.array([[10, 20, 110, 140], [300, 40, 360, 90]], np.float32)
    angles = np.radians([0.0, 37.0])
    m = crop_matrices(boxes, angles, 192, 1.5)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    crop_centres = np.einsum("nij,nj->ni", m[:, :, :2], centres) + m[:, :, 2]
    np.testing.assert_allclose(crop_centres, 96, atol=1e-6)
    pts = np.random.default_rng(1).uniform(0, 192, (2, 7, 3))
    there = uncrop_points(pts, m)
    back = np.einsum("nij,nkj->nki", m[:, :, :2], there[..., :2].astype(np.float64)) + m[:, None, :, 2]
    np.testing.assert_allclose(back, pts[..., :2], atol=1e-3)
    np.testing.assert_allclose(there[1, :, 2], pts[1, :, 2] * 1.5 * 60 / 192, rtol=1e-5)
