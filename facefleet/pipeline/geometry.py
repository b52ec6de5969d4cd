"""Pure geometry for face boxes: detection input sizing, box scaling, NMS.

Boxes are float arrays of shape (N, 4) holding x1, y1, x2, y2 in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectGeometry:
    """How a frame is fitted into a detector input.

    The frame is resized by `scale` (aspect kept) to `resized` and padded on the right
    and bottom to `padded`, whose sides are multiples of the model's stride.
    """

    scale: float
    resized: tuple[int, int]  # width, height
    padded: tuple[int, int]  # width, height


def detect_geometry(width: int, height: int, detect_size: int, multiple: int = 32) -> DetectGeometry:
    """Fit a width x height frame so that its longer side is `detect_size` pixels."""
    if width <= 0 or height <= 0 or detect_size <= 0:
        raise ValueError("frame and detection sizes must be positive")
    scale = detect_size / max(width, height)
    rw = max(1, round(width * scale))
    rh = max(1, round(height * scale))
    pw = max(multiple, math.ceil(rw / multiple) * multiple)
    ph = max(multiple, math.ceil(rh / multiple) * multiple)
    return DetectGeometry(scale=scale, resized=(rw, rh), padded=(pw, ph))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box with each of `boxes`."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(boxes: np.ndarray, factor: float, width: int, height: int) -> np.ndarray:
    """Grow (factor > 1) or shrink boxes about their centres, clipped to the frame."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    hw = (boxes[:, 2] - boxes[:, 0]) * factor / 2
    hh = (boxes[:, 3] - boxes[:, 1]) * factor / 2
    out = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def pixel_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x1, y1, x2, y2) covering a float box, end exclusive."""
    return (
        int(math.floor(box[0])),
        int(math.floor(box[1])),
        int(math.ceil(box[2])),
        int(math.ceil(box[3])),
    )
