"""The values that flow through a pipeline: frames and the faces found in them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in frame pixels
    score: float
    landmarks5: np.ndarray  # (5, 2): eyes, nose, mouth corners
    track: int = -1  # id of the track this face belongs to (-1: not tracked)
    interpolated: bool = False  # filled in between two frames that had it
    landmarks: np.ndarray | None = None  # dense landmarks (468 or 68 points), frame pixels
    landmark_score: float | None = None
    embedding: np.ndarray | None = None
    selected: bool = True  # False: not the reference face, left alone by anonymize and enhance


@dataclass
class FrameItem:
    """One decoded frame on its way through the stages.

    `output` is False for context frames: decoded only so that their neighbours see the
    same surroundings whatever the chunk boundaries; they are not encoded.
    """

    index: int
    pts: int
    image: np.ndarray  # BGR uint8, stages change it in place
    output: bool = True
    faces: list[Face] = field(default_factory=list)
