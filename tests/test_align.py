"""Alignment geometry: templates, similarity fits, warps, masks and paste-back, numerically."""

import time

import cv2
import numpy as np
import pytest

from fakes import GFPGAN_LIKE, ARCFACE_LIKE, centerface_detector, place
from facefleet.pipeline.align import (
    TEMPLATES,
    align_matrix,
    box_mask,
    from_model_output,
    invert,
    paste_back,
    estimate_similarity,
    template_points,
    to_model_input,
    transform_points,
    warp_face,
)

# The templates in crop pixels, as FaceFusion's older releases and insightface print them.
PIXEL_TEMPLATES = {
    "arcface_112_v1": (112, [[39.7300, 51.1380], [72.2700, 51.1380], [56.0000, 68.4930], [42.4630, 87.0100], [69.5370, 87.0100]]),
    "arcface_112_v2": (112, [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]),
    "arcface_128": (128, [[46.2946, 51.6963], [81.5318, 51.5014], [64.0252, 71.7366], [49.5493, 92.3655], [78.7299, 92.2041]]),
    "ffhq_512": (
        512,
        [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]],
    ),
}


@pytest.fixture(scope="module")
def faces(data_dir):
    """Real photos with CenterFace's landmarks: [(frame, landmarks (n, 5, 2))]."""
    detector = centerface_detector()
    out = []
    for name, x, y in (("astronaut.jpg", 100, 100), ("obama.jpg", 300, 40), ("two_people.jpg", 20, 150)):
        frame = place(cv2.imread(str(data_dir / name)), x=x, y=y)
        found = detector.detect([frame])[0]
        assert len(found) >= 1
        out.append((frame, found.landmarks))
    return out


def test_templates_are_facefusions_published_coordinates():
    assert set(TEMPLATES) == set(PIXEL_TEMPLATES)
    for name, (size, pixels) in PIXEL_TEMPLATES.items():
        np.testing.assert_allclose(template_points(name, size), pixels, atol=2e-6)
    # arcface_128 is arcface_112_v2 moved 8 px right on a 128 crop
    np.testing.assert_allclose(
        template_points("arcface_128", 128), template_points("arcface_112_v2", 112) + [8, 0], atol=2e-6
    )
    with pytest.raises(ValueError, match="unknown alignment template"):
        template_points("arcface", 112)


def test_estimate_similarity_recovers_exact_transforms():
    rng = np.random.default_rng(1)
    src = template_points("ffhq_512", 512)
    for _ in range(50):
        angle = rng.uniform(-np.pi, np.pi)
        scale = rng.uniform(0.05, 8)
        shift = rng.uniform(-2000, 2000, 2)
        truth = np.array(
            [[scale * np.cos(angle), -scale * np.sin(angle), shift[0]], [scale * np.sin(angle), scale * np.cos(angle), shift[1]]]
        )
        dst = transform_points(src, truth)
        np.testing.assert_allclose(estimate_similarity(src, dst), truth, rtol=1e-9, atol=1e-7)


def test_estimate_similarity_is_the_least_squares_fit_that_facefusion_gets(faces):
    # FaceFusion: cv2.estimateAffinePartial2D(landmarks, template, RANSAC, ransacReprojThreshold=100)
    for _, landmarks in faces:
        for lm in landmarks:
            for name in TEMPLATES:
                dst = template_points(name, 512)
                ours = estimate_similarity(lm, dst)
                theirs = cv2.estimateAffinePartial2D(lm, dst, method=cv2.RANSAC, ransacReprojThreshold=100)[0]
                assert np.abs(transform_points(lm, ours) - transform_points(lm, theirs)).max() < 1e-2
                # least squares: no small change of (a, b, tx, ty) lowers the squared residual
                base = np.sum((transform_points(lm, ours) - dst) ** 2)
                for da, db, dx, dy in np.vstack([np.eye(4), -np.eye(4)]) * 1e-3:
                    moved = ours + [[da, -db, dx], [db, da, dy]]
                    assert np.sum((transform_points(lm, moved) - dst) ** 2) > base


def test_estimate_similarity_rejects_landmarks_that_admit_no_transform():
    dst = template_points("arcface_112_v2", 112)
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.full((5, 2), 7.0), dst)
    with pytest.raises(ValueError, match="finite"):
        estimate_similarity(np.full((5, 2), np.nan), dst)


def test_invert_and_transform_points_round_trip():
    matrix = estimate_similarity([[0, 0], [10, 0]], [[100, 50], [100, 70]])  # rotate 90 deg, scale 2
    np.testing.assert_allclose(transform_points([[5, 0]], matrix), [[100, 60]], atol=1e-9)
    points = np.random.default_rng(0).uniform(-500, 500, (20, 2))
    np.testing.assert_allclose(transform_points(transform_points(points, matrix), invert(matrix)), points, atol=1e-9)


def _blobs(shape, points, sigma=2.0):
    """A float image with one Gaussian spot per point (subpixel centres)."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.zeros((h, w))
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return image


def _centroids(image, guesses, radius):
    """Intensity-weighted centre of the spot near each guess."""
    out = []
    for gx, gy in guesses:
        x1, y1 = int(round(gx)) - radius, int(round(gy)) - radius
        window = image[y1 : y1 + 2 * radius + 1, x1 : x1 + 2 * radius + 1].astype(np.float64)
        ys, xs = np.mgrid[0 : window.shape[0], 0 : window.shape[1]]
        out.append([(xs * window).sum() / window.sum() + x1, (ys * window).sum() / window.sum() + y1])
    return np.array(out)


@pytest.mark.parametrize("template,size", [("ffhq_512", 512), ("arcface_112_v2", 112), ("arcface_128", 256)])
def test_warp_then_inverse_warp_returns_the_landmarks_within_half_a_pixel(faces, template, size):
    for frame, landmarks in faces:
        for lm in landmarks:
            # spots drawn at the landmarks, rendered as an 8-bit frame
            spots = np.clip(_blobs(frame.shape[:2], lm, sigma=2.5) * 255, 0, 255).astype(np.uint8)
            spots = cv2.merge([spots, spots, spots])
            crop, matrix = warp_face(spots, lm, template, size)
            expected = transform_points(lm, matrix)
            scale = np.hypot(*matrix[:, 0])
            found = _centroids(crop[..., 0], expected, radius=max(3, int(np.ceil(8 * scale))))
            assert np.abs(found - expected).max() < 0.5 * max(1.0, scale)  # in crop pixels
            # and back: the crop's spots map onto the original landmarks
            back = transform_points(found, invert(matrix))
            assert np.abs(back - lm).max() < 0.5
            # paste the crop back into an empty frame: the spots land on the landmarks
            if scale >= 1:
                pasted = np.zeros_like(spots)
                paste_back(pasted, crop, matrix, np.ones(crop.shape[:2], np.float32))
                again = _centroids(pasted[..., 0], lm, radius=8)
                assert np.abs(again - lm).max() < 0.5


def test_paste_back_of_the_unchanged_crop_leaves_the_frame_unchanged_outside_blending_noise(faces):
    for frame, landmarks in faces:
        for lm in landmarks:
            crop, matrix = warp_face(frame, lm, "ffhq_512", 512)
            out = frame.copy()
            rect = paste_back(out, crop, matrix, box_mask(512, 0.3))
            x1, y1, x2, y2 = rect
            diff = np.abs(out.astype(np.int16) - frame).max(axis=2)
            outside = diff.copy()
            outside[y1:y2, x1:x2] = 0
            assert outside.max() == 0
            inside = diff[y1:y2, x1:x2]
            assert inside.mean() < 1.5 and np.percentile(inside, 99) <= 12


def test_paste_back_touches_only_the_faces_rectangle(faces):
    frame, landmarks = faces[0]
    crop, matrix = warp_face(frame, landmarks[0], "ffhq_512", 512)
    out = frame.copy()
    rect = paste_back(out, np.full_like(crop, 255), matrix, np.ones((512, 512), np.float32))
    x1, y1, x2, y2 = rect
    changed = np.any(out != frame, axis=2)
    ys, xs = np.nonzero(changed)
    assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2
    # the rectangle is the crop's outline in the frame, plus a pixel for interpolation
    outline = transform_points([[0, 0], [512, 0], [0, 512], [512, 512]], invert(matrix))
    assert (x2 - x1) <= np.ptp(outline[:, 0]) + 4 and (y2 - y1) <= np.ptp(outline[:, 1]) + 4
    assert changed.sum() > 0.5 * (x2 - x1) * (y2 - y1)


def test_paste_back_at_the_frame_edge_is_clipped():
    frame = np.full((200, 300, 3), 50, np.uint8)
    lm = template_points("ffhq_512", 512) / 512 * 120 + [-40, 120]  # face half outside, bottom left
    crop, matrix = warp_face(frame, lm, "ffhq_512", 512)
    rect = paste_back(frame, np.full_like(crop, 200), matrix, np.ones((512, 512), np.float32))
    assert rect[0] == 0 and rect[3] == 200
    assert (frame[rect[1] :, : rect[2]] == 200).mean() > 0.9
    assert paste_back(frame, crop, align_matrix(lm + [5000, 0], "ffhq_512", 512), np.ones((512, 512), np.float32)) is None


def test_paste_back_blend_scales_the_change():
    frame = np.full((300, 300, 3), 100, np.uint8)
    lm = template_points("ffhq_512", 512) / 512 * 200 + 50
    crop, matrix = warp_face(frame, lm, "ffhq_512", 512)
    mask = np.ones((512, 512), np.float32)
    half, none = frame.copy(), frame.copy()
    paste_back(half, np.full_like(crop, 200), matrix, mask, blend=0.5)
    assert half[150, 150].tolist() == [150, 150, 150]
    assert paste_back(none, np.full_like(crop, 200), matrix, mask, blend=0.0) is None
    assert np.array_equal(none, frame)


def test_paste_back_cost_is_proportional_to_face_area_not_frame_area():
    lm = template_points("ffhq_512", 512) / 512 * 96 + [200, 100]  # a ~100 px face
    crop = np.full((512, 512, 3), 180, np.uint8)
    mask = box_mask(512, 0.3)
    matrix = align_matrix(lm, "ffhq_512", 512)

    def best_of(frame, n=15):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            paste_back(frame, crop, matrix, mask)
            times.append(time.perf_counter() - t0)
        return min(times)

    small = best_of(np.zeros((360, 640, 3), np.uint8))
    large = best_of(np.zeros((2160, 3840, 3), np.uint8))  # 36x the pixels
    assert large < 3 * small + 5e-4, (small, large)


def test_box_mask_follows_facefusions_formula():
    plain = box_mask(512, 0.0)
    assert plain.dtype == np.float32 and plain.shape == (512, 512)
    assert plain[1:-1, 1:-1].min() == 1 and plain[0].max() == 0 and plain[:, -1].max() == 0  # 1 px border
    padded = box_mask((200, 100), 0.0, (10, 20, 30, 40))  # width 200, height 100
    assert padded.shape == (100, 200)
    rows, cols = np.nonzero(padded)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (10, 70, 80, 160)
    soft = box_mask(512, 0.3)
    assert 0 <= soft.min() and soft.max() <= 1
    assert soft[256, 256] == pytest.approx(1, abs=1e-4) and soft[0, 0] < 0.01
    middle = soft[256, :256]
    assert np.all(np.diff(middle) >= -1e-7)  # rises from the edge to the centre
    np.testing.assert_allclose(soft, soft[:, ::-1], atol=1e-6)
    with pytest.raises(ValueError):
        box_mask(512, 1.5)
    with pytest.raises(ValueError):
        box_mask(512, 0.3, (0, 0, 120, 0))


def test_model_tensors_follow_the_spec():
    crops = np.random.default_rng(0).integers(0, 256, (3, 512, 512, 3), dtype=np.uint8)
    tensor = to_model_input(crops, GFPGAN_LIKE)
    assert tensor.shape == (3, 3, 512, 512) and tensor.dtype == np.float32
    # RGB order, x / 255 -> [-1, 1]
    np.testing.assert_allclose(tensor[1, 0, 7, 9], (crops[1, 7, 9, 2] / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(tensor[1, 2, 7, 9], (crops[1, 7, 9, 0] / 255 - 0.5) / 0.5, atol=1e-6)
    assert np.array_equal(from_model_output(tensor, GFPGAN_LIKE), crops)
    assert np.array_equal(from_model_output(-tensor, GFPGAN_LIKE), 255 - crops)
    assert from_model_output(tensor * 3, GFPGAN_LIKE).max() == 255  # clipped, no wrap-around
    small = crops[:, :112, :112]
    arc = to_model_input(small, ARCFACE_LIKE)
    np.testing.assert_allclose(arc[0, 1, 3, 4], (small[0, 3, 4, 1] - 127.5) / 127.5, atol=1e-6)
    assert np.array_equal(from_model_output(arc, ARCFACE_LIKE), small)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels", ["RGB", "BGR"])
def test_model_tensors_with_per_channel_mean_and_std(layout, channels):
    import dataclasses

    spec = dataclasses.replace(
        GFPGAN_LIKE, layout=layout, channels=channels, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    crops = np.random.default_rng(1).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    ordered = crops[..., ::-1] if channels == "RGB" else crops
    expected = (ordered / 255 - np.array(spec.mean)) / np.array(spec.std)
    if layout == "NCHW":
        expected = expected.transpose(0, 3, 1, 2)
    tensor = to_model_input(crops, spec)
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, expected, atol=1e-5)
    assert np.array_equal(from_model_output(tensor, spec), crops)
    assert np.array_equal(from_model_output(expected - 1e-3, spec), crops)  # rounds, not truncates
