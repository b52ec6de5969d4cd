"""The test photos as detector inputs, and how two detectors' results are compared."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def test_photos(data_dir: Path) -> dict[str, list[np.ndarray]]:
    """The test photos, several sizes and aspects (odd ones included), by name."""
    two = cv2.imread(str(data_dir / "two_people.jpg"))
    obama = cv2.imread(str(data_dir / "obama.jpg"))
    biden = cv2.imread(str(data_dir / "biden.jpg"))
    astronaut = np.zeros((512, 512, 3), np.uint8)
    image = cv2.imread(str(data_dir / "astronaut.jpg"))
    astronaut[0:260, 110:350] = image
    wide = np.zeros((1080, 1920, 3), np.uint8)  # a 1080p frame with the faces in it
    wide[100 : 100 + two.shape[0], 300 : 300 + two.shape[1]] = two
    return {
        "two_people": [two, np.ascontiguousarray(two[:, ::-1])],
        "odd": [cv2.resize(two, (two.shape[1] * 3 // 2 + 1, two.shape[0] * 3 // 2 + 1))],
        "obama": [obama],
        "biden": [biden],
        "astronaut": [astronaut],
        "1080p": [wide, np.full_like(wide, 127), wide],
    }


test_photos.__test__ = False  # a helper, not a test


def assert_same_detections(a, b, pixels: float = 1.0, score: float = 0.02) -> None:
    """Same number of faces per frame; boxes and landmarks within `pixels`, scores within `score`."""
    assert [len(x) for x in a] == [len(x) for x in b]
    for x, y in zip(a, b):
        order_x, order_y = np.argsort(x.boxes[:, 0]), np.argsort(y.boxes[:, 0])
        np.testing.assert_allclose(x.boxes[order_x], y.boxes[order_y], atol=pixels)
        np.testing.assert_allclose(x.landmarks[order_x], y.landmarks[order_y], atol=pixels)
        np.testing.assert_allclose(x.scores[order_x], y.scores[order_y], atol=score)


def assert_sessions_find_the_same_faces(a, b, data_dir: Path, detect_size: int = 640) -> None:
    """Two detector sessions (e.g. fp32 and fp16) find the same faces on every test photo,
    boxes and landmarks within 1 px; the photos have faces, so boxes were compared."""
    from facefleet.pipeline.detect import FaceDetector

    found = 0
    for frames in test_photos(data_dir).values():
        first = FaceDetector(a, detect_size).detect(frames)
        assert_same_detections(first, FaceDetector(b, detect_size).detect(frames), pixels=1.0, score=0.02)
        found += sum(len(x) for x in first)
    assert found >= 8
