"""Embedding stage with a signature-compatible test recognizer (not a trained ArcFace).

The test model (tests/fakes.py) has ArcFace's input and output signature and computes a
fixed projection of the aligned crop, so these tests check alignment, normalisation,
batching, distances and reference selection exactly; the distances it gives say nothing
about how well a trained recognizer tells people apart.
"""

import cv2
import numpy as np
import pytest

import fakes
from facefleet.errors import FacefleetError
from facefleet.pipeline.align import warp_face
from facefleet.pipeline.embed import (
    REFERENCE_FACE_DISTANCE,
    Recognizer,
    face_distance,
    face_order,
    reference_embedding,
    select_reference,
)


@pytest.fixture(scope="module")
def test_recognizer(tmp_path_factory):
    path = fakes.recognizer_model(tmp_path_factory.mktemp("models") / "recognizer.onnx", seed=3)
    return fakes.session(path, fakes.ARCFACE_LIKE)


@pytest.fixture(scope="module")
def photos(data_dir):
    """Frames with CenterFace's detections: obama, obama again 1.6x larger elsewhere,
    biden, two people, an empty frame."""
    obama = cv2.imread(str(data_dir / "obama.jpg"))
    frames = [
        fakes.place(obama),
        fakes.place(cv2.resize(obama, None, fx=1.6, fy=1.6), x=50, y=20),
        fakes.place(cv2.imread(str(data_dir / "biden.jpg")), x=100),
        fakes.place(cv2.imread(str(data_dir / "two_people.jpg"))),
        np.full((512, 640, 3), 90, np.uint8),
    ]
    found = fakes.centerface_detector().detect(frames)
    assert [len(d) for d in found] == [1, 1, 1, 2, 0]
    return frames, found


def reference_embeddings(crops: np.ndarray, seed: int = 3) -> np.ndarray:
    """What the test model must return, computed here in numpy from the BGR crops."""
    rgb = crops[..., ::-1].astype(np.float64)
    x = (rgb - 127.5) / 127.5
    n, h, w, _ = x.shape
    pooled = x.reshape(n, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2).reshape(n, -1)
    out = pooled @ fakes.recognizer_projection(seed).astype(np.float64)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_recognizer_normalisation_with_signature_compatible_test_model(test_recognizer):
    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    recorder = fakes.RecordingSession(test_recognizer)
    embeddings = Recognizer(recorder, batch_size=2).embed(crops)
    assert embeddings.shape == (5, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, reference_embeddings(crops), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-6)
    assert recorder.batches == [2, 2, 1]
    # a BGR/RGB mix-up would change the result
    swapped = Recognizer(test_recognizer).embed(np.ascontiguousarray(crops[..., ::-1]))
    assert np.abs(swapped - embeddings).max() > 1e-2
    with pytest.raises(ValueError):
        Recognizer(test_recognizer).embed(crops[:, :100])


def test_embed_faces_aligns_with_arcface_112_v2_with_signature_compatible_test_model(test_recognizer, photos):
    frames, found = photos
    recorder = fakes.RecordingSession(test_recognizer)
    embeddings = Recognizer(recorder, batch_size=4).embed_faces(frames, [d.landmarks for d in found])
    assert [e.shape for e in embeddings] == [(1, 512), (1, 512), (1, 512), (2, 512), (0, 512)]
    assert recorder.batches == [4, 1]  # 5 faces of 5 frames pooled into batches
    crop, _ = warp_face(frames[3], found[3].landmarks[1], "arcface_112_v2", 112)
    np.testing.assert_allclose(embeddings[3][1], reference_embeddings(crop[None])[0], atol=2e-6)


def test_face_distance_is_cosine_distance():
    a = np.array([3.0, 0, 0])
    assert face_distance(a, a) == pytest.approx(0, abs=1e-7)
    assert face_distance(a, np.array([0, 2.0, 0])) == pytest.approx(1)
    assert face_distance(a, -a) == pytest.approx(2)
    many = np.eye(3)
    assert face_distance(many, a).shape == (3,)
    np.testing.assert_allclose(face_distance(many, many), 1 - np.eye(3), atol=1e-7)


def test_reference_selection_keeps_only_faces_near_the_reference_with_signature_compatible_test_model(
    test_recognizer, photos
):
    frames, found = photos
    recognizer = Recognizer(test_recognizer)
    reference = reference_embedding(recognizer, frames[0], found[0].landmarks, found[0].boxes)
    embeddings = recognizer.embed_faces(frames[1:], [d.landmarks for d in found[1:]])
    distances = [face_distance(e, reference) if len(e) else e for e in embeddings]
    # the same photo at another size and place is near; other photos are far (for this
    # test model's projection, which only compares aligned pixels)
    assert distances[0][0] < 0.1
    assert min(d.min() for d in distances[1:3]) > 0.5
    masks = select_reference(embeddings, reference, REFERENCE_FACE_DISTANCE)
    assert [m.tolist() for m in masks] == [[True], [False], [False, False], []]
    # several references: a face is kept when any of them is near
    other = embeddings[2][1]
    both = np.stack([reference, other])
    kept = select_reference(embeddings, both)
    assert kept[0].tolist() == [True] and kept[2][1]
    for e, m in zip(embeddings, kept):
        if len(e):
            near = (face_distance(e, reference) < 0.3) | (face_distance(e, other) < 0.3)
            assert m.tolist() == near.tolist()
    assert select_reference(embeddings, reference, 0.0)[0].tolist() == [False]
    with pytest.raises(ValueError):
        select_reference(embeddings, reference, 3)


def test_reference_face_is_the_largest_unless_a_position_is_given(test_recognizer, photos):
    frames, found = photos
    recognizer = Recognizer(test_recognizer)
    two = found[3]
    order = face_order(two.landmarks, two.boxes)
    areas = (two.boxes[:, 2] - two.boxes[:, 0]) * (two.boxes[:, 3] - two.boxes[:, 1])
    assert areas[order[0]] >= areas[order[1]]
    all_two = recognizer.embed_faces([frames[3]], [two.landmarks])[0]
    first = reference_embedding(recognizer, frames[3], two.landmarks, two.boxes)
    second = reference_embedding(recognizer, frames[3], two.landmarks, two.boxes, position=1)
    np.testing.assert_allclose(first, all_two[order[0]], atol=1e-6)
    np.testing.assert_allclose(second, all_two[order[1]], atol=1e-6)
    with pytest.raises(FacefleetError, match="no face"):
        reference_embedding(recognizer, frames[4], found[4].landmarks)
    with pytest.raises(FacefleetError, match="out of range"):
        reference_embedding(recognizer, frames[3], two.landmarks, position=2)


def test_faces_that_cannot_be_aligned_get_a_zero_embedding(test_recognizer, photos):
    frames, found = photos
    landmarks = np.concatenate([found[0].landmarks, np.full((1, 5, 2), 40.0, np.float32)])
    embeddings = Recognizer(test_recognizer).embed_faces([frames[0]], [landmarks])[0]
    assert np.linalg.norm(embeddings[0]) == pytest.approx(1, abs=1e-5)
    assert not embeddings[1].any()
    assert face_distance(embeddings[1], embeddings[0]) == pytest.approx(1)
