"""Batched face detection: preprocessing, model calls, one decoder per detector family.

Frames are uint8 BGR arrays (H, W, 3), all of one size within a batch. Results are in
frame pixel coordinates: boxes x1, y1, x2, y2 and five landmarks in the order left eye,
right eye, nose tip, left mouth corner, right mouth corner (left and right as seen in
the image).

Each decoder is a pure function of one image's model outputs that returns boxes, scores
and landmarks in detector-input pixels; `_finish` then applies NMS, maps them back to the
frame and clips the boxes. Model I/O conventions follow FaceFusion's published models
(scrfd, retinaface, yolo_face, yunet) and MediaPipe's (blazeface); the pixel
normalisation of each model comes from its ModelSpec.

Preprocessing (resize, pad, channel order, normalise) runs in one of three ways, with the
same result up to the resize's rounding (boxes agree within a pixel):
- "host": `prepare_batch` on the CPU with OpenCV, a float32 batch fed to the model;
- "graph": a small ONNX graph on the detector's own device (facefleet.models.preprocess)
  fed uint8 frames, its output handed to the detector on the device through IO binding;
- "split": the frames resized on the CPU with OpenCV (as "host" does, so the same values),
  then fed as uint8 to the graph, which pads, orders channels and normalises on the device.
  onnxruntime copies a bound input to the device while holding Python's interpreter lock
  (1.3 ms per 1080p frame under py-spy on the H100 machine, where it stalled the chunk
  threads beside it); a resized frame is a ninth of the bytes, and OpenCV's resize lets go
  of the lock.
"auto" (the default) takes "split" when the detector runs on CUDA, the host path
otherwise. At 1080p with detection at 640 on the H100 machine a detector call took 1.16 ms
per frame split, 1.55 ms graph, 2.25 ms host (bench/results/detect_preprocess_h100.json),
and the split way moves 0.7 MB per frame to the GPU, against 6.2 MB (graph) and 2.9 MB
(host's float32 tensor). FaceDetector's `preprocess` argument or the environment variable
FACEFLEET_DETECT_PREPROCESS (auto, graph, split, host) forces a way, e.g. for benchmarks.
A graph that cannot be built or fails its first run falls back to the host path, with
one warning.
"""

from __future__ import annotations

import itertools
import os
import threading
import warnings

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from facefleet.models.preprocess import DevicePreprocessor, InputPlan
from facefleet.models.session import CUDA, ModelSession, is_out_of_memory, pad_rows
from facefleet.pipeline.geometry import DetectGeometry, detect_geometry, nms

NMS_IOU = 0.4
DECODERS = ("centerface", "yunet", "scrfd", "retinaface", "yolo_face", "blazeface")
PREPROCESS_ENV = "FACEFLEET_DETECT_PREPROCESS"
PREPROCESS_CHOICES = ("auto", "graph", "split", "host")
AUTO_ON_GPU = "split"  # H100 machine: 1.16 ms per 1080p frame, "graph" 1.55 (bench/detect_preprocess.py)
GRAPHS_KEPT = 4  # preprocessing graphs kept per detector (one per frame size and batch rows)
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (N,4), scores (N,), landmarks (N,5,2)


@dataclass
class Detections:
    """Faces found in one frame."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


def _nothing() -> Decoded:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)


# ---------------------------------------------------------------------------- input


def fixed_geometry(width: int, height: int, input_size: tuple[int, int]) -> DetectGeometry:
    """Fit a frame into a fixed model input (aspect kept), padded on the right and bottom."""
    if width <= 0 or height <= 0:
        raise ValueError("frame sizes must be positive")
    iw, ih = input_size
    scale = min(iw / width, ih / height)
    rw = min(iw, max(1, round(width * scale)))
    rh = min(ih, max(1, round(height * scale)))
    return DetectGeometry(scale=scale, resized=(rw, rh), padded=(iw, ih))


def resized_frame(frame: np.ndarray, geom: DetectGeometry) -> np.ndarray:
    """A BGR frame at the detector's resized size (OpenCV INTER_LINEAR; the frame itself
    when it has that size already)."""
    rw, rh = geom.resized
    if frame.shape[1] == rw and frame.shape[0] == rh:
        return frame
    return cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)


def prepare_batch(
    frames: list[np.ndarray],
    geom: DetectGeometry,
    channels: str = "RGB",
    scale: float = 1.0,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Resize, pad and stack BGR frames into a float32 NCHW batch in the model's colour order.

    Pixels become `(value * scale - mean) / std` per channel (mean and std in the model's
    channel order); padding is a zero pixel value, normalised the same way.
    """
    pw, ph = geom.padded
    rw, rh = geom.resized
    batch = np.zeros((len(frames), ph, pw, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        batch[i, :rh, :rw] = resized_frame(frame, geom)
    if channels == "RGB":
        batch = batch[..., ::-1]
    out = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    return normalize(out, scale, mean, std)


def preprocess_mode(value: str | None = None) -> str:
    """`value`, else $FACEFLEET_DETECT_PREPROCESS, else "auto" (see the module docstring)."""
    if value is not None:
        mode = value.strip().lower()
        if mode not in PREPROCESS_CHOICES:
            raise ValueError(f"detector preprocessing must be one of {', '.join(PREPROCESS_CHOICES)}, got {value!r}")
        return mode
    env = os.environ.get(PREPROCESS_ENV, "").strip().lower()
    if env and env not in PREPROCESS_CHOICES:
        choices = ", ".join(PREPROCESS_CHOICES)
        warnings.warn(f"{PREPROCESS_ENV}={env!r} is not one of {choices}: using auto", RuntimeWarning)
        return "auto"
    return env or "auto"


def input_plan(frame_w: int, frame_h: int, geom: DetectGeometry, rows: int, spec) -> InputPlan:
    """The preprocessing graph's plan for frames of one size, as prepare_batch would do it."""
    return InputPlan(
        frame=(frame_w, frame_h),
        resized=tuple(geom.resized),
        padded=tuple(geom.padded),
        rows=rows,
        channels=spec.channels,
        scale=float(spec.scale),
        mean=tuple(float(v) for v in spec.mean),
        std=tuple(float(v) for v in spec.std),
    )


def normalize(batch: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """In place on a float32 NCHW batch: `(value * scale - mean) / std` per channel."""
    if scale != 1.0:
        batch *= np.float32(scale)
    mean_a = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    if np.any(mean_a != 0):
        batch -= mean_a
    if np.any(std_a != 1):
        batch /= std_a
    return batch


def fixed_batch(model: ModelSession) -> int | None:
    """The batch size a model's graph pins, or None when the batch dimension is free."""
    try:
        dim = model.session.get_inputs()[0].shape[0]
    except Exception:  # a stand-in session without input metadata
        return None
    return dim if isinstance(dim, int) and dim > 0 else None


def fixed_input_size(model: ModelSession) -> tuple[int, int] | None:
    """(width, height) that a model's graph pins on its NCHW input, or None when free."""
    try:
        shape = model.session.get_inputs()[0].shape
    except Exception:
        return None
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return int(shape[3]), int(shape[2])
    return None


def call_size(model: ModelSession, limit: int | None) -> int | None:
    """Most items one model call takes: the graph's pinned batch or `limit` (None: any)."""
    sizes = [s for s in (fixed_batch(model), limit) if s]
    return max(1, min(sizes)) if sizes else None


def call_slices(n: int, model: ModelSession, limit: int | None) -> Iterator[slice]:
    """Consecutive slices of n items, each small enough for one model call."""
    step = max(1, min(n, call_size(model, limit) or n))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def padded_size(model: ModelSession, limit: int | None, n: int) -> int:
    """Rows to run n items as: the full call size on a GPU (one shape for every call,
    see ModelSession.pads_batches), else n."""
    size = call_size(model, limit)
    return max(n, size) if size and model.pads_batches else n


def _finish(
    boxes, scores, landmarks, geom: DetectGeometry, frame_w: int, frame_h: int, iou: float = NMS_IOU
) -> Detections:
    """NMS in detector space, then map to frame pixels and clip."""
    if len(scores) == 0:
        return Detections()
    keep = nms(boxes, scores, iou)
    inv = 1.0 / geom.scale
    boxes = boxes[keep] * inv
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, frame_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, frame_h)
    return Detections(
        boxes=boxes.astype(np.float32),
        scores=scores[keep].astype(np.float32),
        landmarks=(landmarks[keep] * inv).astype(np.float32),
    )


# ---------------------------------------------------------------------------- decoders


def decode_centerface(
    heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, lms: np.ndarray, threshold: float
) -> Decoded:
    """Decode one image's CenterFace maps (stride 4) into boxes, scores and 5 landmarks.

    heatmap (1, h, w), scale (2, h, w) as log height/width, offset (2, h, w) as y/x,
    lms (10, h, w) as (y, x) pairs relative to the box, in units of box height/width.
    """
    ys, xs = np.nonzero(heatmap[0] > threshold)
    if ys.size == 0:
        return _nothing()
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


def decode_yunet(outputs: dict[str, np.ndarray], width: int, height: int, threshold: float) -> Decoded:
    """Decode one image's YuNet outputs (cls/obj/bbox/kps per stride 8, 16, 32)."""
    all_boxes, all_scores, all_lms = [], [], []
    for stride in YUNET_STRIDES:
        cols = width // stride
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
    if not all_scores:
        return _nothing()
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_lms)


SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS_PER_CELL = 2


def grid_anchors(width: int, height: int, stride: int, per_cell: int) -> np.ndarray:
    """Anchor centres (x, y) of a stride's feature map, in input pixels.

    Row-major over the map (x fastest), each centre repeated `per_cell` times in a row;
    centres sit on the cell corners (x * stride, y * stride), as InsightFace's SCRFD and
    FaceFusion's decoders place them.
    """
    rows, cols = height // stride, width // stride
    ys, xs = np.mgrid[:rows, :cols]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, per_cell, axis=0)


def distance_to_box(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes from anchor points and (left, top, right, bottom) distances."""
    return np.stack(
        [
            points[:, 0] - distance[:, 0],
            points[:, 1] - distance[:, 1],
            points[:, 0] + distance[:, 2],
            points[:, 1] + distance[:, 3],
        ],
        axis=1,
    )


def distance_to_points(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Landmarks (N, K, 2) from anchor points and (dx, dy) offsets (N, 2K)."""
    return points[:, None, :] + distance.reshape(len(distance), -1, 2)


def decode_scrfd(
    scores: Sequence[np.ndarray],
    bboxes: Sequence[np.ndarray],
    kps: Sequence[np.ndarray],
    width: int,
    height: int,
    threshold: float,
    strides: Sequence[int] = SCRFD_STRIDES,
    anchors_per_cell: int = SCRFD_ANCHORS_PER_CELL,
) -> Decoded:
    """Decode one image's SCRFD outputs.

    For each stride s (8, 16, 32) of a width x height input: scores (A, 1), box distances
    (A, 4) and landmark offsets (A, 10), A = (height/s) * (width/s) * 2, all in units of
    the stride, measured from the anchor centres of `grid_anchors`.
    """
    all_boxes, all_scores, all_lms = [], [], []
    for stride, score, bbox, kp in zip(strides, scores, bboxes, kps):
        score = np.asarray(score).reshape(-1)
        idx = np.nonzero(score >= threshold)[0]
        if idx.size == 0:
            continue
        anchors = grid_anchors(width, height, stride, anchors_per_cell)
        if len(anchors) != len(score):
            raise ValueError(
                f"stride {stride}: {len(score)} scores for {len(anchors)} anchors of a {width}x{height} input"
            )
        points = anchors[idx]
        all_boxes.append(distance_to_box(points, np.asarray(bbox).reshape(-1, 4)[idx] * stride))
        all_lms.append(distance_to_points(points, np.asarray(kp).reshape(-1, 10)[idx] * stride))
        all_scores.append(score[idx])
    if not all_scores:
        return _nothing()
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_lms)


def decode_retinaface(
    scores: Sequence[np.ndarray],
    bboxes: Sequence[np.ndarray],
    kps: Sequence[np.ndarray],
    width: int,
    height: int,
    threshold: float,
) -> Decoded:
    """Decode one image's outputs of FaceFusion's `retinaface` (retinaface_10g.onnx).

    That model has SCRFD's heads: three strides, two anchors per cell on the cell
    corners, distance-to-box and landmark offsets in units of the stride; FaceFusion
    decodes it exactly as scrfd, with the same (x - 127.5) / 128 input.
    """
    return decode_scrfd(scores, bboxes, kps, width, height, threshold)


def decode_yolo_face(output: np.ndarray, threshold: float) -> Decoded:
    """Decode one image's YOLO face output (20, N): cx, cy, w, h, score, 5 x (x, y, conf)."""
    rows = np.asarray(output)
    if rows.ndim != 2 or rows.shape[0] != 20:
        raise ValueError(f"yolo_face output must be (20, N) per image, got {rows.shape}")
    rows = rows.T
    idx = np.nonzero(rows[:, 4] > threshold)[0]
    if idx.size == 0:
        return _nothing()
    r = rows[idx]
    cx, cy, w, h = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    landmarks = r[:, 5:20].reshape(-1, 5, 3)[:, :, :2]
    return boxes, r[:, 4], np.ascontiguousarray(landmarks)


# MediaPipe's short-range face detector (face_detection_short_range_common.pbtxt): SSD
# anchors on a 128 x 128 input, layers with strides 8, 16, 16, 16, anchor offset 0.5,
# fixed anchor size 1, interpolated aspect ratio 1.0: two anchors per layer, and layers of
# one stride share a grid, so 2 anchors per cell at stride 8 and 6 at stride 16.
BLAZEFACE_LAYERS = ((8, 2), (16, 6))  # (stride, anchors per cell)
BLAZEFACE_SCORE_CLIP = 80.0  # MediaPipe clips at 100; 80 keeps float32 sigmoid finite
# The model has one mouth point (its centre). The corners are placed along the eye line,
# half as far apart as in ArcFace's 5-point template relative to its eye distance.
BLAZEFACE_MOUTH_HALF_WIDTH = (0.62086607 - 0.37913393) / 2 / (0.64526786 - 0.35473214)


def blazeface_anchors(width: int = 128, height: int = 128) -> np.ndarray:
    """Anchor centres (x, y) as fractions of the input, in the model's output order."""
    out = []
    for stride, per_cell in BLAZEFACE_LAYERS:
        rows, cols = height // stride, width // stride
        ys, xs = np.mgrid[:rows, :cols]
        centres = np.stack([(xs + 0.5) / cols, (ys + 0.5) / rows], axis=-1).reshape(-1, 2)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


def blazeface_layer_sizes(width: int = 128, height: int = 128) -> list[int]:
    return [(height // s) * (width // s) * k for s, k in BLAZEFACE_LAYERS]


def decode_blazeface(
    regressors: np.ndarray, classificators: np.ndarray, width: int, height: int, threshold: float
) -> Decoded:
    """Decode one image's BlazeFace outputs: regressors (896, 16), classificators (896, 1).

    Regressors hold, in input pixels relative to the anchor centre: box centre (x, y), box
    size (w, h), then six keypoints (x, y): the eye on the image's left (of an upright
    face; the subject's right eye), the other eye, nose tip, mouth centre, two ear points.
    Scores are sigmoid(clipped logit). The five landmarks are both eyes, the nose tip and
    mouth corners estimated from the mouth centre along the eye line.
    """
    logits = np.clip(np.asarray(classificators, np.float32).reshape(-1), -BLAZEFACE_SCORE_CLIP, BLAZEFACE_SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    idx = np.nonzero(scores > threshold)[0]
    if idx.size == 0:
        return _nothing()
    anchors = blazeface_anchors(width, height)
    raw = np.asarray(regressors, np.float32).reshape(len(anchors), -1)[idx]
    size = np.array([width, height], np.float32)
    pairs = raw.reshape(len(idx), -1, 2)
    centre = pairs[:, 0] + anchors[idx] * size
    wh = pairs[:, 1]
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    keypoints = pairs[:, 2:] + (anchors[idx] * size)[:, None, :]
    eye_a, eye_b, nose, mouth = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2], keypoints[:, 3]
    half = (eye_b - eye_a) * BLAZEFACE_MOUTH_HALF_WIDTH
    landmarks = np.stack([eye_a, eye_b, nose, mouth - half, mouth + half], axis=1)
    return boxes, scores[idx], landmarks


# ---------------------------------------------------------------------------- per image


def _per_image(out: np.ndarray, n: int) -> np.ndarray:
    """(n, ...) view of an output whose batch axis may be folded into its first axis."""
    out = np.asarray(out)
    if out.ndim >= 3 and out.shape[0] == n:
        return out
    return out.reshape(n, -1, out.shape[-1])


def _unfold_blazeface(out: np.ndarray, n: int, layer_sizes: list[int]) -> np.ndarray:
    """BlazeFace graphs converted from TFLite reshape each head to [1, -1, C] and concatenate:
    with a free batch the images end up folded layer by layer. Undo that."""
    out = np.asarray(out)
    if out.shape[0] == n:
        return out
    flat = out.reshape(-1, out.shape[-1])
    parts, start = [], 0
    for size in layer_sizes:
        parts.append(flat[start : start + n * size].reshape(n, size, -1))
        start += n * size
    return np.concatenate(parts, axis=1)


def angle_nms_iou(n_angles: int) -> float:
    """NMS overlap for merging detections of several angles (FaceFusion's get_nms_threshold)."""
    return {1: 0.4, 2: 0.3, 3: 0.2}.get(n_angles, 0.1)


def rotate_frame(frame: np.ndarray, angle: int) -> np.ndarray:
    """The frame turned counter-clockwise by a multiple of 90 degrees (as shown on screen)."""
    return np.ascontiguousarray(np.rot90(frame, k=(angle // 90) % 4))


def unrotate_points(points: np.ndarray, angle: int, width: int, height: int) -> np.ndarray:
    """Map points found on `rotate_frame(frame, angle)` back to the width x height frame."""
    pts = np.asarray(points, np.float32)
    x, y = pts[..., 0], pts[..., 1]
    k = (angle // 90) % 4
    if k == 0:
        ox, oy = x, y
    elif k == 1:
        ox, oy = width - y, x
    elif k == 2:
        ox, oy = width - x, height - y
    else:
        ox, oy = y, height - x
    return np.stack([ox, oy], axis=-1).astype(np.float32)


def unrotate_detections(found: Detections, angle: int, width: int, height: int) -> Detections:
    if len(found) == 0 or angle % 360 == 0:
        return found
    b = found.boxes
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
    corners = unrotate_points(corners, angle, width, height)
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return Detections(boxes=boxes, scores=found.scores, landmarks=unrotate_points(found.landmarks, angle, width, height))


def _merge(found: list[Detections], iou: float, width: int, height: int) -> Detections:
    found = [d for d in found if len(d)]
    if not found:
        return Detections()
    boxes = np.concatenate([d.boxes for d in found])
    scores = np.concatenate([d.scores for d in found])
    landmarks = np.concatenate([d.landmarks for d in found])
    keep = nms(boxes, scores, iou)
    boxes = boxes[keep]
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    return Detections(boxes=boxes, scores=scores[keep], landmarks=landmarks[keep])


# ---------------------------------------------------------------------------- detector


class FaceDetector:
    """Runs a detector model over batches of frames.

    `detect_size` is the longer side of the input for free-size models (centerface,
    yunet, and scrfd/retinaface without a fixed `input_size`); models with a fixed
    `input_size` get each frame letterboxed into it. `angles` (multiples of 90) also
    detect on copies of the frames turned counter-clockwise by each angle and merge the
    results, mapped back, by NMS whose overlap threshold `nms_iou` defaults to FaceFusion's
    (0.4 for one angle, down to 0.1 for four). `max_batch` bounds the frames per model
    call; a model whose graph pins its batch size is called with that many frames.
    `preprocess` is "auto", "graph", "split" or "host" (None: $FACEFLEET_DETECT_PREPROCESS, else
    auto; see the module docstring); `last_preprocess` says which one the last call took.
    """

    def __init__(
        self,
        model: ModelSession,
        detect_size: int = 640,
        threshold: float = 0.5,
        angles: Sequence[int] = (0,),
        max_batch: int | None = None,
        nms_iou: float | None = None,
        preprocess: str | None = None,
    ):
        if model.spec.decoder not in DECODERS:
            raise ValueError(f"no decoder for detector {model.spec.name} (decoder {model.spec.decoder!r})")
        norm = []
        for angle in angles:
            if int(angle) % 90:
                raise ValueError(f"detection angles must be multiples of 90 degrees, got {angle}")
            if int(angle) % 360 not in norm:
                norm.append(int(angle) % 360)
        if not norm:
            raise ValueError("at least one detection angle is needed")
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.detect_size = detect_size
        self.threshold = threshold
        self.angles = tuple(norm)
        self.max_batch = max_batch
        self.nms_iou = nms_iou if nms_iou is not None else angle_nms_iou(len(self.angles))
        self.preprocess = preprocess_mode(preprocess)
        self.last_preprocess: str | None = None  # "graph", "split" or "host", once a call ran
        self.graph_failure: str | None = None  # why the graph path was given up, if it was
        self._graphs: OrderedDict[tuple, DevicePreprocessor] = OrderedDict()
        self._graphs_lock = threading.Lock()

    def geometry(self, width: int, height: int) -> DetectGeometry:
        spec = self.model.spec
        size = spec.input_size or fixed_input_size(self.model)
        if size is not None:
            return fixed_geometry(width, height, size)
        return detect_geometry(width, height, self.detect_size, spec.size_multiple)

    def detect(self, frames: list[np.ndarray]) -> list[Detections]:
        if not frames:
            return []
        if self.angles == (0,):
            return self._detect_upright(frames)
        frame_h, frame_w = frames[0].shape[:2]
        per_angle = []
        for angle in self.angles:
            turned = frames if angle == 0 else [rotate_frame(f, angle) for f in frames]
            found = self._detect_upright(turned)
            per_angle.append([unrotate_detections(d, angle, frame_w, frame_h) for d in found])
        return [_merge([a[i] for a in per_angle], self.nms_iou, frame_w, frame_h) for i in range(len(frames))]

    def _detect_upright(self, frames: list[np.ndarray]) -> list[Detections]:
        frame_h, frame_w = frames[0].shape[:2]
        spec = self.model.spec
        geom = self.geometry(frame_w, frame_h)
        results: list[Detections] = []
        for part in call_slices(len(frames), self.model, self.max_batch):
            chunk = frames[part]
            rows = padded_size(self.model, self.max_batch, len(chunk))
            way = self.way
            outputs = self._run_graph(chunk, geom, rows, way) if way != "host" else None
            if outputs is None:
                batch = prepare_batch(chunk, geom, spec.channels, spec.scale, spec.mean, spec.std)
                outputs = self.model.run({spec.input_name: pad_rows(batch, rows)})
                self.last_preprocess = "host"
            # one angle: its NMS is the final one; several: each angle's own, merged later
            iou = self.nms_iou if len(self.angles) == 1 else NMS_IOU
            for decoded in itertools.islice(self._decode(outputs, rows, geom), len(chunk)):
                results.append(_finish(*decoded, geom, frame_w, frame_h, iou))
        return results

    @property
    def way(self) -> str:
        """How the next call preprocesses: "graph", "split" or "host"."""
        if self.graph_failure is not None or self.preprocess == "host":
            return "host"
        if self.preprocess == "auto" and not self.model.on_gpu:
            return "host"
        # a real onnxruntime session with one image input (a stand-in has no IO binding)
        if not hasattr(self.model.session, "io_binding") or self.model.spec.extra_inputs:
            return "host"
        return AUTO_ON_GPU if self.preprocess == "auto" else self.preprocess

    @property
    def uses_graph(self) -> bool:
        """Whether calls preprocess with the ONNX graph on the model's device."""
        return self.way != "host"

    @property
    def graphs(self) -> list[DevicePreprocessor]:
        """The preprocessing graphs loaded now (most recently used last)."""
        with self._graphs_lock:
            return list(self._graphs.values())

    def _give_up_graph(self, exc: BaseException) -> None:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.graph_failure = reason
        with self._graphs_lock:
            self._graphs.clear()
        warnings.warn(
            f"detector {self.model.spec.name}: preprocessing on {self.model.provider} as an ONNX graph failed "
            f"({reason}); preprocessing on the CPU from now on",
            RuntimeWarning,
            stacklevel=3,
        )

    def _run_graph(self, chunk: list[np.ndarray], geom: DetectGeometry, rows: int, way: str) -> list[np.ndarray] | None:
        """The model's outputs for `chunk` preprocessed on its device, padded to `rows`
        rows; None when the graph cannot run (then the host path takes over for good).
        The "split" way resizes the frames here first; the graph then has no Resize."""
        if way == "split":
            chunk = [resized_frame(f, geom) for f in chunk]
        frame_h, frame_w = chunk[0].shape[:2]
        key = (frame_w, frame_h, rows, tuple(geom.resized), tuple(geom.padded))
        with self._graphs_lock:
            pre = self._graphs.get(key)
            if pre is not None:
                self._graphs.move_to_end(key)
        first = pre is None
        if first:
            try:
                threads = 1
                if not self.model.on_gpu:  # forced onto the CPU: as many threads as the model
                    threads = self.model.session.get_session_options().intra_op_num_threads
                plan = input_plan(frame_w, frame_h, geom, rows, self.model.spec)
                device = CUDA if self.model.on_gpu else self.model.provider  # TensorRT's inputs live in CUDA memory
                pre = DevicePreprocessor(plan, device, self.model.provider_options, threads)
            except Exception as exc:  # onnx missing, an operator the provider lacks, ...
                self._give_up_graph(exc)
                return None
        try:
            outputs = self.model.run_on_device({self.model.spec.input_name: pre(chunk)})
        except Exception as exc:
            # a working graph's run error, or out of memory (not the graph's fault: the
            # caller halves the batch): the caller's to handle
            if not first or is_out_of_memory(exc):
                raise
            self._give_up_graph(exc)
            return None
        if first:
            with self._graphs_lock:
                self._graphs[key] = pre
                while len(self._graphs) > GRAPHS_KEPT:
                    self._graphs.popitem(last=False)
        self.last_preprocess = way
        return outputs

    def _decode(self, outputs: list[np.ndarray], n: int, geom: DetectGeometry) -> Iterator[Decoded]:
        decoder = self.model.spec.decoder
        pw, ph = geom.padded
        t = self.threshold
        if decoder == "centerface":
            heat, scale, offset, lms = outputs
            for i in range(n):
                yield decode_centerface(heat[i], scale[i], offset[i], lms[i], t)
        elif decoder == "yunet":
            names = [o.name for o in self.model.session.get_outputs()]
            # YuNet folds the batch into its anchor axis: split it back per image.
            per_image = {name: out.reshape(n, -1, out.shape[-1]) for name, out in zip(names, outputs)}
            for i in range(n):
                yield decode_yunet({k: v[i] for k, v in per_image.items()}, pw, ph, t)
        elif decoder in ("scrfd", "retinaface"):
            if len(outputs) != 9:
                raise ValueError(
                    f"{self.model.spec.name}: a {decoder} model needs 9 outputs (scores, boxes, landmarks "
                    f"at strides 8, 16, 32), this one has {len(outputs)}"
                )
            outs = [_per_image(o, n) for o in outputs]
            decode = decode_scrfd if decoder == "scrfd" else decode_retinaface
            for i in range(n):
                yield decode([o[i] for o in outs[0:3]], [o[i] for o in outs[3:6]], [o[i] for o in outs[6:9]], pw, ph, t)
        elif decoder == "yolo_face":
            out = np.asarray(outputs[0])
            if out.ndim == 2:
                out = out[None]
            for i in range(n):
                yield decode_yolo_face(out[i], t)
        else:  # blazeface
            sizes = blazeface_layer_sizes(pw, ph)
            regressors, classificators = self._blazeface_outputs(outputs)
            reg = _unfold_blazeface(regressors, n, sizes)
            cls = _unfold_blazeface(classificators, n, sizes)
            for i in range(n):
                yield decode_blazeface(reg[i], cls[i], pw, ph, t)

    @staticmethod
    def _blazeface_outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        first, second = outputs[0], outputs[1]
        return (first, second) if first.shape[-1] >= second.shape[-1] else (second, first)
