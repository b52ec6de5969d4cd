"""Dense face landmarks on face crops, batched over every face of a batch of frames.

Two landmarkers:
- `FaceMesh`: MediaPipe's 468-point mesh (shipped). Crop: square, 1.5 x the detector box
  about its centre, turned so the eyes are level, 192 x 192, RGB in [0, 1]. Outputs 468
  (x, y, z) in crop pixels and a face-presence logit.
- `Landmarker68`: 2DFAN4, 68 points, as FaceFusion runs it (user-supplied model). Crop:
  the box's longer side scaled to 195 of 256 pixels, centred, turned by the face's angle
  rounded to 90 degrees, RGB-or-BGR (ModelSpec) in [0, 1]. Outputs 68 (x, y, _) in
  64 x 64 heatmap pixels and the heatmaps, whose peaks give the confidence.

`refine_five` derives the five alignment points (eye centres, nose tip, mouth corners)
from dense landmarks where the landmarker is confident and keeps the detector's five
elsewhere: FaceFusion's "5/68".

Frames are uint8 BGR (H, W, 3); every result is in frame pixels. At most `max_faces`
crops are built and run at a time, so memory stays bounded with hundreds of faces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from facefleet.models.session import ModelSession, pad_rows
from facefleet.pipeline.detect import Detections, call_slices, fixed_input_size, normalize, padded_size

MAX_FACES_PER_CALL = 64

# MediaPipe face mesh (468 points) indices, from its FACEMESH_LEFT_EYE / FACEMESH_RIGHT_EYE
# contours and the canonical face model: the 16-point contour of the eye on the image's
# left (the subject's right eye, corners 33 and 133), of the eye on the image's right
# (corners 362 and 263), nose tip 1, mouth corners 61 (image left) and 291 (image right).
MESH_EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MESH_EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
MESH_NOSE_TIP = 1
MESH_MOUTH_CORNERS = (61, 291)
MESH_POINTS = 468

# 68-point (iBUG 300-W) indices as FaceFusion's convert_to_face_landmark_5 uses them:
# eye centres as the mean of 36-41 and 42-47, nose tip 30, mouth corners 48 and 54.
IBUG_EYE_IMAGE_LEFT = tuple(range(36, 42))
IBUG_EYE_IMAGE_RIGHT = tuple(range(42, 48))
IBUG_NOSE_TIP = 30
IBUG_MOUTH_CORNERS = (48, 54)

FACEMESH_CROP_SCALE = 1.5
FAN_CROP_SIZE = 256
FAN_BOX_SIDE = 195.0  # pixels of the 256 crop that the box's longer side fills
FAN_HEATMAP = 64
FAN_SCORE_FULL = 0.9  # FaceFusion maps mean heatmap peak [0, 0.9] to confidence [0, 1]
DENSE_CONFIDENCE = 0.5  # FaceFusion's default face_landmarker_score


@dataclass
class FaceLandmarks:
    """Dense landmarks of the faces of one frame, in the order of its detections."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2), np.float32))  # (N, K, 2 or 3)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (N,) confidence 0..1

    def __len__(self) -> int:
        return len(self.scores)


# ---------------------------------------------------------------------------- 5 from dense


def five_from_dense(points: np.ndarray) -> np.ndarray:
    """The five alignment points (N, 5, 2) from 68- or 468-point landmarks (N, K, 2+)."""
    pts = np.asarray(points, np.float32)[..., :2]
    k = pts.shape[1]
    if k == 68:
        eyes, nose, mouth = (IBUG_EYE_IMAGE_LEFT, IBUG_EYE_IMAGE_RIGHT), IBUG_NOSE_TIP, IBUG_MOUTH_CORNERS
    elif k == MESH_POINTS:
        eyes, nose, mouth = (MESH_EYE_IMAGE_LEFT, MESH_EYE_IMAGE_RIGHT), MESH_NOSE_TIP, MESH_MOUTH_CORNERS
    else:
        raise ValueError(f"five points need 68 or 468 landmarks, got {k}")
    return np.stack(
        [
            pts[:, list(eyes[0])].mean(axis=1),
            pts[:, list(eyes[1])].mean(axis=1),
            pts[:, nose],
            pts[:, mouth[0]],
            pts[:, mouth[1]],
        ],
        axis=1,
    )


def refine_five(
    dense: np.ndarray, confidence: np.ndarray, threshold: float = DENSE_CONFIDENCE, five: np.ndarray | None = None
) -> np.ndarray:
    """Five alignment points from dense landmarks where `confidence > threshold`.

    Elsewhere the detector's `five` (N, 5, 2) are kept (FaceFusion's "5/68"); without
    them, unconfident faces get NaN points.
    """
    dense = np.asarray(dense, np.float32)
    confidence = np.asarray(confidence, np.float32).reshape(-1)
    if len(dense) == 0:
        return np.zeros((0, 5, 2), np.float32)
    derived = five_from_dense(dense)
    fallback = np.full_like(derived, np.nan) if five is None else np.asarray(five, np.float32).reshape(-1, 5, 2)
    sure = confidence > threshold
    return np.where(sure[:, None, None], derived, fallback).astype(np.float32)


def with_refined_five(
    detections: Sequence[Detections], landmarks: Sequence[FaceLandmarks], threshold: float = DENSE_CONFIDENCE
) -> list[Detections]:
    """Detections whose five points are refined from dense landmarks where confident."""
    if len(detections) != len(landmarks):
        raise ValueError(f"{len(detections)} detection lists but {len(landmarks)} landmark lists")
    out = []
    for det, lm in zip(detections, landmarks):
        if len(det) == 0:
            out.append(det)
            continue
        five = refine_five(lm.points, lm.scores, threshold, det.landmarks)
        out.append(Detections(boxes=det.boxes, scores=det.scores, landmarks=five))
    return out


# ---------------------------------------------------------------------------- crops


def eye_angle(five: np.ndarray) -> np.ndarray:
    """Roll of each face (radians): direction from the image-left eye to the other eye."""
    five = np.asarray(five, np.float32).reshape(-1, 5, 2)
    d = five[:, 1] - five[:, 0]
    return np.arctan2(d[:, 1], d[:, 0])


def crop_matrices(boxes: np.ndarray, angles: np.ndarray, crop_size: int, box_scale: float) -> np.ndarray:
    """Similarity transforms (N, 2, 3) frame -> crop, in continuous pixel coordinates.

    Each maps the box centre to the crop centre, a square of `box_scale` x the box's
    longer side onto the crop, and turns by -angle so that a face rolled by `angle` comes
    out upright.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.maximum(np.max(boxes[:, 2:] - boxes[:, :2], axis=1), 1.0) * box_scale
    s = crop_size / side
    cos, sin = np.cos(-angles) * s, np.sin(-angles) * s
    m = np.zeros((len(boxes), 2, 3))
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    m[:, :, 2] = crop_size / 2 - np.einsum("nij,nj->ni", m[:, :, :2], centre)
    return m


def warp_crop(frame: np.ndarray, matrix: np.ndarray, crop_size: int) -> np.ndarray:
    """Sample a crop through a continuous-coordinate transform (pixel centres at +0.5)."""
    a, t = matrix[:, :2], matrix[:, 2]
    pixel = np.concatenate([a, (t + a @ np.full(2, 0.5) - 0.5)[:, None]], axis=1)
    return cv2.warpAffine(frame, pixel, (crop_size, crop_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def uncrop_points(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Map crop points (N, K, 2+) back to the frame; a third coordinate is divided by the scale."""
    pts = np.asarray(points, np.float64)
    a = matrices[:, :, :2]
    t = matrices[:, :, 2]
    inv = np.linalg.inv(a)
    xy = np.einsum("nij,nkj->nki", inv, pts[..., :2] - t[:, None, :])
    if pts.shape[-1] == 2:
        return xy.astype(np.float32)
    scale = np.sqrt(np.abs(np.linalg.det(a)))
    z = pts[..., 2:] / scale[:, None, None]
    return np.concatenate([xy, z], axis=-1).astype(np.float32)


def _face_index(detections: Sequence[Detections]) -> list[tuple[int, int]]:
    return [(f, j) for f, det in enumerate(detections) for j in range(len(det))]


def optimize_contrast(crop: np.ndarray) -> np.ndarray:
    """CLAHE on the lightness of a dark BGR crop (mean L < 30), as FaceFusion does for 2DFAN4."""
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2Lab)
    if float(np.mean(lab[:, :, 0])) < 30:
        lab[:, :, 0] = cv2.createCLAHE(clipLimit=2).apply(lab[:, :, 0])
        return cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)
    return crop


class _CropLandmarker:
    """Shared batching: every face of every frame, at most `max_faces` crops per call."""

    crop_size: int
    box_scale: float
    point_shape: tuple[int, int]  # (points, values per point) of one face

    def __init__(self, model: ModelSession, max_faces: int = MAX_FACES_PER_CALL):
        if max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        self.model = model
        self.max_faces = max_faces
        spec = model.spec
        size = spec.input_size or fixed_input_size(model)
        if size is not None:
            if size[0] != size[1]:
                raise ValueError(f"{spec.name}: landmarkers take square crops, the input is {size[0]}x{size[1]}")
            self.crop_size = int(size[0])

    def _angles(self, five: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _prepare_crop(self, crop: np.ndarray) -> np.ndarray:
        return crop

    def _decode(self, outputs: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs of n crops -> points in crop pixels (n, K, D), confidence (n,)."""
        raise NotImplementedError

    def landmarks(self, frames: Sequence[np.ndarray], detections: Sequence[Detections]) -> list[FaceLandmarks]:
        if len(frames) != len(detections):
            raise ValueError(f"{len(frames)} frames but {len(detections)} detection lists")
        faces = _face_index(detections)
        points: list[np.ndarray | None] = [None] * len(faces)
        scores = np.zeros(len(faces), np.float32)
        for part in self._face_slices(len(faces)):
            chosen = faces[part]
            pts, conf = self._run(frames, detections, chosen)
            for k, idx in enumerate(range(part.start, part.stop)):
                points[idx] = pts[k]
            scores[part] = conf
        out, start = [], 0
        for det in detections:
            n = len(det)
            if n:
                stacked = np.stack(points[start : start + n])  # type: ignore[arg-type]
                out.append(FaceLandmarks(points=stacked, scores=scores[start : start + n]))
            else:
                out.append(FaceLandmarks(points=np.zeros((0, *self.point_shape), np.float32)))
            start += n
        return out

    def _face_slices(self, n: int) -> Iterator[slice]:
        return call_slices(n, self.model, self.max_faces)

    def _run(self, frames, detections, chosen: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        spec = self.model.spec
        size = self.crop_size
        boxes = np.stack([detections[f].boxes[j] for f, j in chosen])
        five = np.stack([detections[f].landmarks[j] for f, j in chosen])
        matrices = crop_matrices(boxes, self._angles(five), size, self.box_scale)
        crops = np.empty((len(chosen), size, size, 3), np.uint8)
        for k, (f, _) in enumerate(chosen):
            crops[k] = self._prepare_crop(warp_crop(frames[f], matrices[k], size))
        if spec.channels == "RGB":
            crops = crops[..., ::-1]
        batch = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        batch = normalize(batch, spec.scale, spec.mean, spec.std)
        rows = padded_size(self.model, self.max_faces, len(chosen))
        outputs = self.model.run({spec.input_name: pad_rows(batch, rows)})
        pts, conf = self._decode([np.asarray(o)[: len(chosen)] for o in outputs], len(chosen))
        return uncrop_points(pts, matrices), conf


class FaceMesh(_CropLandmarker):
    """MediaPipe FaceMesh: 468 (x, y, z) points per face and a face-presence score.

    z (MediaPipe's relative depth) is scaled from crop to frame pixels like x and y.
    `rotate` turns each crop by the roll of the detector's eye line, as MediaPipe does.
    """

    crop_size = 192
    box_scale = FACEMESH_CROP_SCALE
    point_shape = (MESH_POINTS, 3)

    def __init__(self, model: ModelSession, max_faces: int = MAX_FACES_PER_CALL, rotate: bool = True):
        super().__init__(model, max_faces)
        self.rotate = rotate

    def _angles(self, five: np.ndarray) -> np.ndarray:
        return eye_angle(five) if self.rotate else np.zeros(len(five))

    def _decode(self, outputs, n):
        mesh = presence = None
        for out in outputs:
            out = np.asarray(out)
            per = out.size // max(n, 1)
            if per == MESH_POINTS * 3:
                mesh = out.reshape(n, MESH_POINTS, 3)
            elif per == 1:
                presence = out.reshape(n)
        if mesh is None or presence is None:
            raise ValueError(f"{self.model.spec.name}: expected 1404 landmark values and 1 presence logit per face")
        return mesh, 1.0 / (1.0 + np.exp(-np.clip(presence, -80, 80)))


class Landmarker68(_CropLandmarker):
    """2DFAN4 68-point landmarks with FaceFusion's crop and confidence conventions."""

    crop_size = FAN_CROP_SIZE
    box_scale = FAN_CROP_SIZE / FAN_BOX_SIDE
    point_shape = (68, 2)

    def _angles(self, five: np.ndarray) -> np.ndarray:
        # FaceFusion turns the crop by the face angle rounded to a multiple of 90 degrees.
        quarter = np.round(eye_angle(five) / (math.pi / 2))
        return quarter * (math.pi / 2)

    def _prepare_crop(self, crop: np.ndarray) -> np.ndarray:
        return optimize_contrast(crop)

    def _decode(self, outputs, n):
        if len(outputs) < 2:
            raise ValueError(f"{self.model.spec.name}: 2dfan4 needs landmark and heatmap outputs")
        first, second = np.asarray(outputs[0]), np.asarray(outputs[1])
        coords, heat = (first, second) if first.ndim == 3 else (second, first)
        grid = heat.shape[-1]
        points = coords.reshape(n, -1, coords.shape[-1])[:, :, :2] / grid * self.crop_size
        peak = heat.reshape(n, heat.shape[1], -1).max(axis=2).mean(axis=1)
        conf = np.interp(peak, [0.0, FAN_SCORE_FULL], [0.0, 1.0])
        return points, conf.astype(np.float32)
