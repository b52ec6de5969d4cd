"""Anonymization of face regions: blur, solid fill or mosaic, in an ellipse or the box.

Option names and meanings follow deface: --replacewith, --mask-scale, --boxes, --mosaicsize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from facefleet.pipeline.geometry import pixel_box, scale_boxes

REPLACE_MODES = ("blur", "solid", "mosaic", "none")


@dataclass(frozen=True)
class AnonymizeOptions:
    replacewith: str = "blur"
    mask_scale: float = 1.3  # grow each detected box by this factor before masking
    boxes: bool = False  # rectangular masks instead of ellipses
    mosaic_size: int = 20  # mosaic block side, pixels

    def __post_init__(self) -> None:
        if self.replacewith not in REPLACE_MODES:
            raise ValueError(f"--replacewith must be one of {', '.join(REPLACE_MODES)}")
        if self.mask_scale <= 0:
            raise ValueError("--mask-scale must be positive")
        if self.mosaic_size < 1:
            raise ValueError("--mosaicsize must be at least 1")


def ellipse_mask(height: int, width: int) -> np.ndarray:
    """Boolean mask of the ellipse inscribed in a height x width box (pixel centres).

    A pixel centre (x, y), scaled to the unit circle, is inside when |x| <= sqrt(1 - y^2):
    one comparison per pixel against its row's half-width (0.040 ms for a 520x400 box
    against 0.058 ms evaluating x^2 + y^2 <= 1 per pixel; same pixels).
    """
    ys = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / (height / 2)
    xs = np.abs((np.arange(width, dtype=np.float32) + 0.5 - width / 2) / (width / 2))
    half_widths = np.sqrt(np.maximum(0.0, 1.0 - ys * ys))
    return xs[None, :] <= half_widths[:, None]


BLUR_SHRINK = 4  # blur at a quarter of the size: the same result for a kernel this wide


def tent_blur(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Blur with a tent (triangular) kernel `width` x `height` pixels wide (odd sizes):
    stack blur's kernel, computed as two box filters (each tent side is a box of half the
    kernel plus one; the anchors of the two passes cancel, so the kernel is centred).

    Not cv2.stackBlur: its output depends on how OpenCV splits the image over its thread
    pool, which changes with cv2.setNumThreads and whenever another thread (the encoder's
    colour conversion, a second chunk) holds the pool at that moment, so the same frame
    came out differently from run to run (by up to 4 levels, and by up to 60 after x264).
    An 8-bit box filter sums integers, so its result is the same for any split, thread
    count or SIMD level; it costs the same as stackBlur.
    """
    kx, ky = width // 2 + 1, height // 2 + 1
    first = cv2.blur(image, (kx, ky), anchor=(kx // 2, ky // 2), borderType=cv2.BORDER_REPLICATE)
    return cv2.blur(first, (kx, ky), anchor=(kx - 1 - kx // 2, ky - 1 - ky // 2), borderType=cv2.BORDER_REPLICATE)


def shrunk(region: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each whole `factor` x `factor` block of `region` (rounded), one pixel per
    block; the last rows and columns that fill no whole block are left out.

    cv2.INTER_AREA at a whole-number ratio takes its block-mean path: 0.45 ms for a 601x517
    face region where the same call at the region's own size (a ratio just off 4) took
    1.35 ms, most of the blur's cost (2-core machine, one thread).
    """
    h, w = region.shape[:2]
    sw, sh = max(1, w // factor), max(1, h // factor)
    if sw * factor > w or sh * factor > h:  # smaller than one block: average what there is
        return cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(region[: sh * factor, : sw * factor], (sw, sh), interpolation=cv2.INTER_AREA)


def blurred(region: np.ndarray) -> np.ndarray:
    """A blur whose kernel spans the whole region.

    Weaker blurs leave a face-shaped blob that detectors still find: on the test video a
    kernel of a third of the box let YuNet find 80 % of the faces again, half the box 20 %,
    the whole box 1 %. A kernel this wide removes all detail, so the region is shrunk
    first and the blurred result scaled back up (5x cheaper at 1080p).
    """
    h, w = region.shape[:2]
    small = shrunk(region, BLUR_SHRINK)
    sh, sw = small.shape[:2]
    small = tent_blur(small, max(3, sw | 1), max(3, sh | 1))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def mosaic(region: np.ndarray, block: int) -> np.ndarray:
    """Pixelate into block x block squares (mean colour of each square)."""
    h, w = region.shape[:2]
    small = cv2.resize(region, (max(1, math.ceil(w / block)), max(1, math.ceil(h / block))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def replacement(region: np.ndarray, options: AnonymizeOptions) -> np.ndarray:
    if options.replacewith == "blur":
        return blurred(region)
    if options.replacewith == "mosaic":
        return mosaic(region, options.mosaic_size)
    return np.zeros_like(region)  # solid


def anonymize_frame(frame: np.ndarray, boxes: np.ndarray, options: AnonymizeOptions) -> None:
    """Anonymize every face box of `frame` in place."""
    if options.replacewith == "none" or len(boxes) == 0:
        return
    height, width = frame.shape[:2]
    for box in scale_boxes(boxes, options.mask_scale, width, height):
        x1, y1, x2, y2 = pixel_box(box)
        x2, y2 = min(x2, width), min(y2, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        region = frame[y1:y2, x1:x2]
        new = replacement(region, options)
        if options.boxes:
            region[:] = new
        else:
            cv2.copyTo(new, ellipse_mask(y2 - y1, x2 - x1).view(np.uint8), region)  # in place
