import numpy as np
import pytest

from facefleet.pipeline.anonymize import AnonymizeOptions, anonymize_frame, blurred, ellipse_mask, mosaic, shrunk


def noisy(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_ellipse_mask_area_and_symmetry():
    mask = ellipse_mask(200, 100)
    assert mask.sum() / mask.size == pytest.approx(np.pi / 4, abs=0.01)
    assert (mask == mask[::-1]).all() and (mask == mask[:, ::-1]).all()
    assert not mask[0, 0] and mask[100, 50]


def test_mosaic_is_constant_per_block():
    region = noisy(40, 40)
    out = mosaic(region, 10)
    for y in range(0, 40, 10):
        for x in range(0, 40, 10):
            block = out[y : y + 10, x : x + 10].reshape(-1, 3)
            assert (block == block[0]).all()
            assert np.abs(block[0].astype(int) - region[y : y + 10, x : x + 10].reshape(-1, 3).mean(0)).max() <= 1


@pytest.mark.parametrize("mode", ["blur", "solid", "mosaic"])
def test_anonymize_changes_only_the_scaled_box(mode):
    frame = noisy()
    before = frame.copy()
    box = np.array([[60, 40, 100, 80]], np.float32)  # scaled 1.5 -> [50, 30, 110, 90]
    anonymize_frame(frame, box, AnonymizeOptions(replacewith=mode, mask_scale=1.5))
    changed = np.any(frame != before, axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 50 and xs.max() < 110 and ys.min() >= 30 and ys.max() < 90
    centre = frame[55:65, 75:85].astype(int)
    # the face centre lost its detail: far less variance than the noise it replaced
    assert centre.std() < before[55:65, 75:85].astype(int).std() * 0.5 or mode == "mosaic"
    assert changed.sum() > 0.5 * 60 * 60 * np.pi / 4


def test_ellipse_spares_box_corners_and_boxes_option_fills_them():
    frame = noisy()
    before = frame.copy()
    anonymize_frame(frame, np.array([[40, 40, 100, 100]], np.float32), AnonymizeOptions("solid", mask_scale=1.0))
    assert (frame[40, 40] == before[40, 40]).all() and (frame[70, 70] == 0).all()
    frame = before.copy()
    anonymize_frame(frame, np.array([[40, 40, 100, 100]], np.float32), AnonymizeOptions("solid", 1.0, boxes=True))
    assert (frame[40:100, 40:100] == 0).all() and (frame[39, 39] == before[39, 39]).all()


def test_none_and_empty_leave_frame_alone():
    frame = noisy()
    before = frame.copy()
    anonymize_frame(frame, np.array([[10, 10, 50, 50]], np.float32), AnonymizeOptions("none"))
    anonymize_frame(frame, np.zeros((0, 4), np.float32), AnonymizeOptions("blur"))
    assert (frame == before).all()


def test_box_partly_outside_frame_is_clipped():
    frame = noisy()
    anonymize_frame(frame, np.array([[-30, -30, 20, 20]], np.float32), AnonymizeOptions("solid", boxes=True))
    assert (frame[0:20, 0:20] == 0).all()


def test_options_are_validated():
    with pytest.raises(ValueError):
        AnonymizeOptions(replacewith="pixelate")
    with pytest.raises(ValueError):
        AnonymizeOptions(mask_scale=0)


@pytest.mark.parametrize("height,width", [(455, 390), (64, 48), (7, 9), (3, 2)])
def test_shrunk_is_the_rounded_mean_of_whole_blocks(height, width):
    """Each output pixel is the mean of one whole 4x4 block; rows and columns left over
    after the last whole block are not read (a region smaller than a block: its mean)."""
    rng = np.random.default_rng(3)
    region = rng.integers(0, 256, (height, width, 3), np.uint8)
    small = shrunk(region, 4)
    sh, sw = max(1, height // 4), max(1, width // 4)
    assert small.shape == (sh, sw, 3)
    if height >= 4 and width >= 4:
        blocks = region[: sh * 4, : sw * 4].astype(np.float64).reshape(sh, 4, sw, 4, 3).mean(axis=(1, 3))
    else:
        blocks = region.astype(np.float64).mean(axis=(0, 1))[None, None, :]
    assert np.abs(small.astype(np.float64) - blocks).max() <= 0.5 + 1e-9


def test_blurred_keeps_the_region_size_and_removes_detail():
    import cv2

    rng = np.random.default_rng(4)
    region = rng.integers(0, 256, (455, 390, 3), np.uint8)
    out = blurred(region)
    assert out.shape == region.shape and out.dtype == np.uint8
    assert cv2.Laplacian(out, cv2.CV_64F).var() < 0.01 * cv2.Laplacian(region, cv2.CV_64F).var()
