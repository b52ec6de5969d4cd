"""Chunk planning: split a video's frames into ranges that workers process independently."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

AUTO_LARGEST = 300
AUTO_SMALLEST = 30


@dataclass(frozen=True)
class FrameRange:
    """Frames [start, end) of one video, by index in presentation order."""

    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start


def tapered_size(remaining: int, chunk_frames: int, slots: int, smallest: int) -> int:
    """Chunk size for what is left: full size while plenty is left, then smaller, so that
    the last chunks, which nothing can overlap, are short (fewer stragglers)."""
    if remaining > slots * chunk_frames:
        return chunk_frames
    return max(smallest, min(chunk_frames, -(-remaining // slots)))


def plan_ranges(
    frames: int, keyframes: tuple[int, ...], chunk_frames: int, snap: float = 0.25, taper_slots: int = 0
) -> list[FrameRange]:
    """Split `frames` frames into consecutive ranges of about `chunk_frames` each.

    A boundary moves to the nearest keyframe within `snap` x chunk_frames of its target,
    which saves the worker decoding from an earlier keyframe; without one near, the
    boundary stays where it is (workers decode exact ranges either way). With
    `taper_slots` (chunks that run at once), chunks shrink toward the end of the video.
    """
    if frames <= 0:
        return []
    if chunk_frames <= 0:
        raise ValueError("chunk_frames must be positive")
    keys = sorted(k for k in keyframes if 0 < k < frames)
    bounds = [0]
    while True:
        size = chunk_frames
        if taper_slots:
            size = tapered_size(frames - bounds[-1], chunk_frames, taper_slots, min(AUTO_SMALLEST, chunk_frames))
        tolerance = int(size * snap)
        if frames - bounds[-1] <= size + tolerance:
            break
        target = bounds[-1] + size
        bound = target
        i = bisect.bisect_left(keys, target - tolerance)
        near = [k for k in keys[i:i + 64] if abs(k - target) <= tolerance and k > bounds[-1]]
        if near:
            bound = min(near, key=lambda k: (abs(k - target), k))
        bounds.append(bound)
    bounds.append(frames)
    return [FrameRange(a, b) for a, b in zip(bounds, bounds[1:])]


def auto_chunk_frames(frames: int, slots: int, largest: int = AUTO_LARGEST, smallest: int = AUTO_SMALLEST) -> int:
    """A chunk size that gives every worker slot work, within [smallest, largest] frames.

    Long videos get `largest`-frame chunks (per-chunk costs stay small); a short one is
    cut so that all `slots` chunks that can run at once have something to do.
    """
    share = -(-frames // max(slots, 1))
    return max(smallest, min(largest, share))


def keyframe_at_or_before(keyframes: tuple[int, ...], index: int) -> int:
    """Index of the last keyframe at or before frame `index` (0 when there is none)."""
    i = bisect.bisect_right(keyframes, index)
    return keyframes[i - 1] if i else 0
