"""Exact frame-range decoding with PyAV.

Seeking lands on a keyframe at or before the target; frames are then decoded forward and
kept by presentation time, so a range may start on any frame, keyframe or not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import av
import numpy as np

from facefleet.errors import InputError
from facefleet.media.probe import open_input


def _frames_from(uri: str, container, stream, seek_pts: int) -> Iterator[av.VideoFrame]:
    last = seek_pts
    previous = None
    try:
        container.seek(seek_pts, stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.pts is None:
                raise InputError(uri, "a decoded video frame has no timestamp")
            if previous is not None and frame.pts <= previous:  # decoders output in presentation order
                at, before = (float(p * stream.time_base) if stream.time_base else 0.0 for p in (frame.pts, previous))
                raise InputError(
                    uri, f"video timestamps go backwards: a frame at {at:.3f} s follows one at {before:.3f} s; "
                    "remux it with fresh timestamps first"
                )
            previous = last = frame.pts
            yield frame
    except av.error.FFmpegError as exc:
        reason = " ".join((getattr(exc, "strerror", None) or str(exc)).split())
        at = float(last * stream.time_base) if stream.time_base else 0.0
        raise InputError(uri, f"damaged video: decoding fails after {at:.2f} s ({reason})") from None


def decode_range(
    uri: str,
    first_pts: int,
    last_pts: int,
    seek_pts: int,
    pixel_format: str = "bgr24",
    threads: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (pts, image) for every frame whose pts lies in [first_pts, last_pts].

    `seek_pts` is the pts of a keyframe at or before `first_pts`. If the demuxer's seek
    lands after the range start anyway, or yields no frame, decoding starts over from the
    beginning.
    `threads` caps the decoder's threads (0: FFmpeg picks, one per core).
    """
    with open_input(uri) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        frames = _frames_from(uri, container, stream, seek_pts)
        head = next(frames, None)
        if head is None or head.pts > first_pts:
            # the seek landed after the range start, or nowhere (MPEG-TS with B-frames: a
            # seek to the first keyframe's pts, which is past its dts, gave no frames)
            frames.close()
            frames = _frames_from(uri, container, stream, 0)
        else:
            frames = itertools.chain([head], frames)
        for frame in frames:
            if frame.pts < first_pts:
                continue
            if frame.pts > last_pts:
                return
            yield frame.pts, frame.to_ndarray(format=pixel_format)
