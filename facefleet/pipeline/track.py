"""Faces across frames: track ids by IoU, and filling single-frame detection gaps.

Gap filling is a pure function of three consecutive frames' detections, so a chunk that
decodes one frame of context on each side fills exactly as an unchunked run does.
"""

from __future__ import annotations

import numpy as np

from facefleet.pipeline.faces import Face, FrameItem
from facefleet.pipeline.geometry import box_iou

LINK_IOU = 0.3


def iou_matrix(a: list[Face], b: list[Face]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)), np.float32)
    boxes_b = np.stack([f.box for f in b]).astype(np.float32)
    return np.stack([box_iou(f.box.astype(np.float32), boxes_b) for f in a])


def greedy_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by descending IoU, each row and column used once, IoU >= threshold."""
    pairs = []
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    order = np.argsort(-iou, axis=None, kind="stable")
    for flat in order:
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < threshold:
            break
        if r in used_rows or c in used_cols:
            continue
        pairs.append((r, c))
        used_rows.add(r)
        used_cols.add(c)
    return pairs


def interpolate(a: Face, b: Face) -> Face:
    """The face halfway between the same face in the frames before and after."""
    return Face(
        box=(a.box + b.box) / 2,
        score=min(a.score, b.score),
        landmarks5=(a.landmarks5 + b.landmarks5) / 2,
        track=a.track,
        interpolated=True,
    )


def fill_gaps(prev: list[Face], cur: list[Face], nxt: list[Face], threshold: float = LINK_IOU) -> list[Face]:
    """Faces missing from `cur` although the frames on both sides have them.

    A face of `prev` with no match in `cur` but a match in `nxt` is taken as missed in
    `cur` (a one-frame detector dropout) and comes back interpolated.
    """
    if not prev or not nxt:
        return []
    matched_now = {r for r, _ in greedy_pairs(iou_matrix(prev, cur), threshold)}
    lost = [f for i, f in enumerate(prev) if i not in matched_now]
    return [interpolate(lost[r], nxt[c]) for r, c in greedy_pairs(iou_matrix(lost, nxt), threshold)]


class Tracker:
    """Gives every face a track id: the id of the best-overlapping face seen in the last
    `max_age` frames, or a new one."""

    def __init__(self, threshold: float = LINK_IOU, max_age: int = 2, first_id: int = 0):
        self.threshold = threshold
        self.max_age = max_age
        self.next_id = first_id
        self.recent: list[tuple[int, Face]] = []  # (age, face)

    def assign(self, faces: list[Face]) -> None:
        known = [f for _, f in self.recent]
        pairs = greedy_pairs(iou_matrix(known, faces), self.threshold)
        linked = {c: r for r, c in pairs}
        for c, face in enumerate(faces):
            if c in linked:
                face.track = known[linked[c]].track
            else:
                face.track = self.next_id
                self.next_id += 1
        seen = {f.track for f in faces}
        older = [(age + 1, f) for age, f in self.recent if f.track not in seen and age + 1 < self.max_age]
        self.recent = [(0, f) for f in faces] + older


class TrackStage:
    """Streaming stage: track ids, and gap filling with one frame held back.

    Decisions use the detector's faces only (not interpolated ones), so they depend on
    three consecutive frames and nothing else.
    """

    name = "track"
    context = 1  # frames of context needed on each side of a chunk

    def __init__(self, fill: bool = True, threshold: float = LINK_IOU, first_id: int = 0):
        self.fill = fill
        self.threshold = threshold
        self.tracker = Tracker(threshold, first_id=first_id)
        self._prev: list[Face] = []  # detections of the frame before the held one
        self._held: FrameItem | None = None
        self._held_detected: list[Face] = []

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        out = []
        for item in items:
            detected = list(item.faces)
            if self._held is not None:
                if self.fill:
                    self._held.faces.extend(fill_gaps(self._prev, self._held_detected, detected, self.threshold))
                self.tracker.assign(self._held.faces)
                out.append(self._held)
                self._prev = self._held_detected
            self._held, self._held_detected = item, detected
        return out

    def flush(self) -> list[FrameItem]:
        if self._held is None:
            return []
        self.tracker.assign(self._held.faces)
        held, self._held = self._held, None
        self._prev, self._held_detected = [], []
        return [held]
