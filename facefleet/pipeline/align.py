"""Face alignment: templates, similarity transforms, warps, masks and paste-back.

A face is aligned by the similarity transform (rotation, uniform scale, translation) that
maps its 5 landmarks (left eye, right eye, nose tip, left and right mouth corners, in
frame pixels) onto a template scaled to the crop size. The templates and the box mask
follow FaceFusion's published values and formulas, so crops match what FaceFusion's
models were run on.

Matrices are OpenCV 2x3 affine matrices mapping frame coordinates to crop coordinates
(`cv2.warpAffine` convention: pixel centres at integer coordinates). Frames and crops are
uint8 BGR arrays (H, W, 3).

Also here: the round trip between crops and model tensors (`to_model_input`,
`from_model_output`), driven by a model's ModelSpec.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facefleet.models.manifest import ModelSpec
from facefleet.models.session import pad_rows

# 5-point templates normalised by the crop size, as FaceFusion publishes them
# (facefusion/face_helper.py, WARP_TEMPLATE_SET). In crop pixels:
#   arcface_112_v1: insightface's original ArcFace points on a 112 crop
#   arcface_112_v2: insightface's arcface_dst on a 112 crop (ArcFace recognizers)
#   arcface_128:    arcface_112_v2 shifted 8 px right, on a 128 crop (y unchanged)
#   ffhq_512:       FFHQ alignment points on a 512 crop (GFPGAN, CodeFormer, GPEN 512)
TEMPLATES: dict[str, np.ndarray] = {
    "arcface_112_v1": np.array(
        [
            [0.35473214, 0.45658929],
            [0.64526786, 0.45658929],
            [0.50000000, 0.61154464],
            [0.37913393, 0.77687500],
            [0.62086607, 0.77687500],
        ]
    ),
    "arcface_112_v2": np.array(
        [
            [0.34191607, 0.46157411],
            [0.65653393, 0.45983393],
            [0.50022500, 0.64050536],
            [0.37097589, 0.82469196],
            [0.63151696, 0.82325089],
        ]
    ),
    "arcface_128": np.array(
        [
            [0.36167656, 0.40387734],
            [0.63696719, 0.40235469],
            [0.50019687, 0.56044219],
            [0.38710391, 0.72160547],
            [0.61507734, 0.72034453],
        ]
    ),
    "ffhq_512": np.array(
        [
            [0.37691676, 0.46864664],
            [0.62285697, 0.46912813],
            [0.50123859, 0.61331904],
            [0.39308822, 0.72541100],
            [0.61150205, 0.72490465],
        ]
    ),
}

def _wh(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    width, height = size
    return int(width), int(height)


def template_points(template: str, size: int | tuple[int, int]) -> np.ndarray:
    """The template's 5 points in pixels of a crop of `size` (side or (width, height))."""
    try:
        points = TEMPLATES[template]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise ValueError(f"unknown alignment template {template!r}; known: {known}") from None
    return points * np.asarray(_wh(size), dtype=np.float64)


def estimate_similarity(src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (2x3) mapping src_points onto dst_points.

    x' = a x - b y + tx, y' = b x + a y + ty is linear in (a, b, tx, ty), so the least-
    squares fit over all points is one linear solve (the same optimum that FaceFusion's
    cv2.estimateAffinePartial2D reaches when every landmark is an inlier). Raises
    ValueError when the source points coincide or are not finite.
    """
    src = np.asarray(src_points, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst_points, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError("need at least 2 matching point pairs")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks are not finite")
    if np.ptp(src, axis=0).max() < 1e-6:
        raise ValueError("landmarks coincide: no transform")
    n = len(src)
    design = np.zeros((2 * n, 4))
    design[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    design[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def invert(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points of shape (..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_matrix(landmarks5: np.ndarray, template: str, size: int | tuple[int, int]) -> np.ndarray:
    """The frame -> crop matrix that aligns a face's 5 landmarks to a template."""
    return estimate_similarity(landmarks5, template_points(template, size))


def warp_face(
    frame: np.ndarray, landmarks5: np.ndarray, template: str, size: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a face aligned to `template` at `size`; returns (crop, frame -> crop matrix).

    The work is proportional to the crop's size, not the frame's.
    """
    matrix = align_matrix(landmarks5, template, size)
    return crop_face(frame, matrix, size), matrix


def crop_face(frame: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The crop of `size` that a frame -> crop matrix selects (edges replicated)."""
    return cv2.warpAffine(frame, matrix, _wh(size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def paste_rect(matrix: np.ndarray, crop_size: tuple[int, int], frame_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Frame pixels (x1, y1, x2, y2, end exclusive) that a crop covers when warped back.

    The crop's outline mapped into the frame, grown by one pixel for interpolation and
    clipped to the frame; None when the crop lands outside the frame.
    """
    cw, ch = crop_size
    fw, fh = frame_size
    corners = np.array([[-0.5, -0.5], [cw - 0.5, -0.5], [-0.5, ch - 0.5], [cw - 0.5, ch - 0.5]])
    mapped = transform_points(corners, invert(matrix))
    x1 = max(0, math.floor(mapped[:, 0].min()) - 1)
    y1 = max(0, math.floor(mapped[:, 1].min()) - 1)
    x2 = min(fw, math.ceil(mapped[:, 0].max()) + 2)
    y2 = min(fh, math.ceil(mapped[:, 1].max()) + 2)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def paste_back(
    frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray, blend: float = 1.0
) -> tuple[int, int, int, int] | None:
    """Warp `crop` back into `frame` (in place) through `mask`, blended by `blend` in [0, 1].

    frame <- frame + blend * mask * (crop warped back - frame). Only the face's bounding
    rectangle in the frame is read, warped and written: the matrix is shifted by the
    rectangle's offset so cv2.warpAffine fills just that sub-window, and the cost is
    proportional to the face's area, not the frame's. `blend` is FaceFusion's
    `--face-enhancer-blend` / 100 (the mask scaled by it is the same as mixing the pasted
    frame with the original). Returns the rectangle written, or None when nothing was.
    """
    if blend <= 0:
        return None
    ch, cw = crop.shape[:2]
    if mask.shape[:2] != (ch, cw):
        raise ValueError(f"mask is {mask.shape[:2]}, crop is {(ch, cw)}")
    fh, fw = frame.shape[:2]
    rect = paste_rect(matrix, (cw, ch), (fw, fh))
    if rect is None:
        return None
    x1, y1, x2, y2 = rect
    # sub-window -> crop: the frame -> crop matrix applied to (x + x1, y + y1)
    to_crop = np.asarray(matrix, dtype=np.float64).copy()
    to_crop[:, 2] += to_crop[:, :2] @ np.array([x1, y1], dtype=np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (x2 - x1, y2 - y1)
    face = cv2.warpAffine(crop, to_crop, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask.astype(np.float32), to_crop, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    if blend < 1:
        alpha *= np.float32(blend)
    region = frame[y1:y2, x1:x2]
    # one pass: (face * alpha + region * (1 - alpha)) rounded; exactly the region where alpha is 0
    region[:] = cv2.blendLinear(face, region, alpha, 1.0 - alpha)
    return rect


def box_mask(
    size: int | tuple[int, int], blur: float, padding: tuple[float, float, float, float] = (0, 0, 0, 0)
) -> np.ndarray:
    """FaceFusion's static box mask: float32 (height, width) in [0, 1].

    `blur` is a fraction of the crop width (FaceFusion's --face-mask-blur, default 0.3);
    `padding` is (top, right, bottom, left) in percent of the crop. The border of
    max(blur area, padding) is zeroed, then the mask is Gaussian-blurred.
    """
    width, height = _wh(size)
    if not 0 <= blur <= 1:
        raise ValueError("--face-mask-blur must be between 0 and 1")
    if any(not 0 <= p <= 100 for p in padding):
        raise ValueError("--face-mask-padding values must be between 0 and 100")
    top, right, bottom, left = padding
    blur_amount = int(width * 0.5 * blur)
    blur_area = max(blur_amount // 2, 1)
    mask = np.ones((height, width), np.float32)
    mask[: max(blur_area, int(height * top / 100)), :] = 0
    mask[-max(blur_area, int(height * bottom / 100)) :, :] = 0
    mask[:, : max(blur_area, int(width * left / 100))] = 0
    mask[:, -max(blur_area, int(width * right / 100)) :] = 0
    if blur_amount > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur_amount * 0.25)
    return mask


# --- crops <-> model tensors ---------------------------------------------------------


def _affine_per_channel(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) per model channel such that model value = pixel * alpha + beta."""
    std = np.asarray(spec.std, dtype=np.float64)
    return spec.scale / std, -np.asarray(spec.mean, dtype=np.float64) / std


def to_model_input(crops: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 BGR crops (N, H, W, 3) -> float32 tensor as `spec` wants it.

    Pixels become (value * scale - mean) / std per channel, in `spec.channels` order and
    `spec.layout` (NCHW or NHWC). NCHW is filled plane by plane with OpenCV (one pass per
    plane; about 15x faster than the same in numpy expressions).
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be (N, H, W, 3), got {crops.shape}")
    alpha, beta = _affine_per_channel(spec)
    order = (2, 1, 0) if spec.channels == "RGB" else (0, 1, 2)  # BGR crop channel of each model channel
    n, h, w, _ = crops.shape
    if spec.layout != "NCHW":
        tensor = crops[..., list(order)].astype(np.float32) * alpha.astype(np.float32) + beta.astype(np.float32)
        return np.ascontiguousarray(tensor, dtype=np.float32)
    tensor = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        planes = cv2.split(crops[i])
        for c, k in enumerate(order):
            cv2.addWeighted(planes[k], float(alpha[c]), planes[k], 0.0, float(beta[c]), dst=tensor[i, c], dtype=cv2.CV_32F)
    return tensor


def from_model_output(tensor: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The inverse of to_model_input: model output -> uint8 BGR crops (N, H, W, 3).

    Values are rounded and saturated to [0, 255] (FaceFusion clips to [-1, 1] first: the
    same for [-1, 1] models).
    """
    tensor = np.asarray(tensor, dtype=np.float32)
    alpha, beta = _affine_per_channel(spec)
    inv_alpha, inv_beta = 1.0 / alpha, -beta / alpha
    order = (2, 1, 0) if spec.channels == "RGB" else (0, 1, 2)
    if spec.layout != "NCHW":
        pixels = tensor * inv_alpha.astype(np.float32) + inv_beta.astype(np.float32)
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels[..., list(np.argsort(order))])
    n, _, h, w = tensor.shape
    crops = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        planes = [None, None, None]
        for c, k in enumerate(order):
            plane = np.ascontiguousarray(tensor[i, c])
            planes[k] = cv2.addWeighted(plane, float(inv_alpha[c]), plane, 0.0, float(inv_beta[c]), dtype=cv2.CV_8U)
        cv2.merge(planes, dst=crops[i])
    return crops


def fixed_batch(model_inputs) -> int | None:
    """The batch size a model's first input pins, or None when the batch dim is free.

    Some published exports (FaceFusion's face enhancers among them) are traced at batch 1
    with the batch folded into reshape constants, so freeing the dim is not enough: such
    models are run one slice of that size at a time.
    """
    shape = list(model_inputs[0].shape)
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return shape[0]
    return None


def run_batched(
    model, input_name: str, tensor: np.ndarray, extra_feeds: dict | None = None, pad_to: int | None = None
) -> np.ndarray:
    """Run a ModelSession on `tensor`, in slices when the model pins its batch size.

    On a GPU every call has the same shape, `pad_to` rows (short batches padded with
    zeros): a call whose shape differs from the last makes onnxruntime plan its
    convolutions again, which costs seconds (ModelSession.pads_batches).
    """
    pads = bool(pad_to) and getattr(model, "pads_batches", False)
    limit = fixed_batch(model.session.get_inputs()) or (pad_to if pads else len(tensor))
    limit = max(limit, 1)
    outputs = []
    for i in range(0, len(tensor), limit):
        part = tensor[i : i + limit]
        feed = pad_rows(part, limit) if pads else part
        outputs.append(np.asarray(model.run({input_name: feed, **(extra_feeds or {})})[0])[: len(part)])
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
