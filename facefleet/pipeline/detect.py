"""Batched face detection: preprocessing, model call, decoders for CenterFace and YuNet.

Frames are uint8 BGR arrays (H, W, 3), all of one size within a batch. Results are in
frame pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from facefleet.models.session import ModelSession
from facefleet.pipeline.geometry import DetectGeometry, detect_geometry, nms

NMS_IOU = 0.4


@dataclass
class Detections:
    """Faces found in one frame."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def prepare_batch(frames: list[np.ndarray], geom: DetectGeometry, channels: str) -> np.ndarray:
    """Resize, pad and stack BGR frames into a float32 NCHW batch in the model's colour order."""
    pw, ph = geom.padded
    rw, rh = geom.resized
    batch = np.zeros((len(frames), ph, pw, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        batch[i, :rh, :rw] = cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
    if channels == "RGB":
        batch = batch[..., ::-1]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def _finish(boxes, scores, landmarks, geom: DetectGeometry, frame_w: int, frame_h: int) -> Detections:
    """NMS in detector space, then map to frame pixels and clip."""
    if len(scores) == 0:
        return Detections()
    keep = nms(boxes, scores, NMS_IOU)
    inv = 1.0 / geom.scale
    boxes = boxes[keep] * inv
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, frame_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, frame_h)
    return Detections(
        boxes=boxes.astype(np.float32),
        scores=scores[keep].astype(np.float32),
        landmarks=(landmarks[keep] * inv).astype(np.float32),
    )


def decode_centerface(
    heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, lms: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's CenterFace maps (stride 4) into boxes, scores and 5 landmarks.

    heatmap (1, h, w), scale (2, h, w) as log height/width, offset (2, h, w) as y/x,
    lms (10, h, w) as (y, x) pairs relative to the box, in units of box height/width.
    """
    ys, xs = np.nonzero(heatmap[0] > threshold)
    if ys.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    s_h = np.exp(scale[0, ys, xs]) * 4
    s_w = np.exp(scale[1, ys, xs]) * 4
    cy = (ys + offset[0, ys, xs] + 0.5) * 4
    cx = (xs + offset[1, ys, xs] + 0.5) * 4
    x1 = cx - s_w / 2
    y1 = cy - s_h / 2
    boxes = np.stack([x1, y1, x1 + s_w, y1 + s_h], axis=1)
    lm_y = lms[0::2, ys, xs].T * s_h[:, None] + y1[:, None]
    lm_x = lms[1::2, ys, xs].T * s_w[:, None] + x1[:, None]
    landmarks = np.stack([lm_x, lm_y], axis=2)
    return boxes, heatmap[0, ys, xs], landmarks


YUNET_STRIDES = (8, 16, 32)


def decode_yunet(
    outputs: dict[str, np.ndarray], width: int, height: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one image's YuNet outputs (cls/obj/bbox/kps per stride 8, 16, 32)."""
    all_boxes, all_scores, all_lms = [], [], []
    for stride in YUNET_STRIDES:
        cols, rows = width // stride, height // stride
        cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0, 1)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0, 1)
        score = np.sqrt(cls * obj)
        idx = np.nonzero(score > threshold)[0]
        if idx.size == 0:
            continue
        r, c = np.divmod(idx, cols)
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[idx]
        kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[idx]
        cx = (c + bbox[:, 0]) * stride
        cy = (r + bbox[:, 1]) * stride
        w = np.exp(bbox[:, 2]) * stride
        h = np.exp(bbox[:, 3]) * stride
        all_boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        all_scores.append(score[idx])
        grid = np.stack([c, r], axis=1)[:, None, :]
        all_lms.append((kps + grid) * stride)
        del rows
    if not all_scores:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_lms)


class FaceDetector:
    """Runs a detector model over batches of frames."""

    def __init__(self, model: ModelSession, detect_size: int = 640, threshold: float = 0.5):
        if model.spec.decoder not in ("centerface", "yunet"):
            raise ValueError(f"no decoder for detector {model.spec.name} (decoder {model.spec.decoder!r})")
        self.model = model
        self.detect_size = detect_size
        self.threshold = threshold

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        frame_h, frame_w = frames[0].shape[:2]
        spec = self.model.spec
        geom = detect_geometry(frame_w, frame_h, self.detect_size, spec.size_multiple)
        batch = prepare_batch(frames, geom, spec.channels)
        outputs = self.model.run({spec.input_name: batch})
        n = len(frames)
        pw, ph = geom.padded
        results = []
        if spec.decoder == "centerface":
            heat, scale, offset, lms = outputs
            for i in range(n):
                decoded = decode_centerface(heat[i], scale[i], offset[i], lms[i], self.threshold)
                results.append(_finish(*decoded, geom, frame_w, frame_h))
        else:
            names = [o.name for o in self.model.session.get_outputs()]
            # YuNet folds the batch into its anchor axis: split it back per image.
            per_image = {name: out.reshape(n, -1, out.shape[-1]) for name, out in zip(names, outputs)}
            for i in range(n):
                decoded = decode_yunet({k: v[i] for k, v in per_image.items()}, pw, ph, self.threshold)
                results.append(_finish(*decoded, geom, frame_w, frame_h))
        return results
