import numpy as np
import pytest

from facefleet.pipeline.geometry import box_iou, detect_geometry, nms, pixel_box, scale_boxes


def test_detect_geometry_fits_longer_side_and_pads_to_stride():
    g = detect_geometry(1280, 720, 640)
    assert g.scale == pytest.approx(0.5)
    assert g.resized == (640, 360)
    assert g.padded == (640, 384)


def test_detect_geometry_portrait_and_tiny():
    g = detect_geometry(720, 1280, 640)
    assert g.resized == (360, 640) and g.padded == (384, 640)
    tiny = detect_geometry(16, 16, 640)
    assert tiny.resized == (640, 640) and tiny.padded == (640, 640)
    odd = detect_geometry(641, 361, 320)
    assert odd.resized == (320, 180) and odd.padded == (320, 192)


def test_detect_geometry_rejects_nonpositive():
    with pytest.raises(ValueError):
        detect_geometry(0, 10, 640)


def test_box_iou_known_values():
    box = np.array([0, 0, 10, 10], np.float32)
    others = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(box, others), [1.0, 50 / 150, 0.0], rtol=1e-6)


def test_nms_keeps_best_of_overlapping_and_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).tolist() == []


def test_scale_boxes_about_centre_and_clips():
    out = scale_boxes(np.array([[10, 10, 30, 50]]), 1.5, 100, 100)
    np.testing.assert_allclose(out, [[5, 0, 35, 60]])
    clipped = scale_boxes(np.array([[0, 0, 20, 20]]), 2.0, 25, 25)
    np.testing.assert_allclose(clipped, [[0, 0, 25, 25]])


def test_pixel_box_covers_float_box():
    assert pixel_box(np.array([1.2, 2.8, 10.1, 11.0])) == (1, 2, 11, 11)
