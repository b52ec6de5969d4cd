"""Segment encoding: processed frames of one chunk into an H.264 MP4 with source timestamps.

All segments of a video are encoded with identical settings so that the assembler can
concatenate their packets without re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def quality_to_crf(quality: int) -> int:
    """FaceFusion's mapping of --output-video-quality (0-100) to an x264 CRF (51-0)."""
    if not 0 <= quality <= 100:
        raise ValueError("output video quality must be between 0 and 100")
    return round(51 - quality * 0.51)


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"
    quality: int = 65  # CRF 18; 100 is lossless
    preset: str = "veryfast"
    threads: int = 0  # 0: the encoder decides

    @property
    def crf(self) -> int:
        return quality_to_crf(self.quality)


def output_pix_fmt(input_pix_fmt: str, width: int, height: int, codec: str = "libx264") -> str:
    """The pixel format to encode: the input's where the encoder takes it, else 8-bit YUV.

    4:2:0 and 4:2:2 need even sizes, so odd-sized frames go out as 4:4:4.
    """
    supported = {f.name for f in (av.codec.Codec(codec, "w").video_formats or ())}
    odd = width % 2 or height % 2
    if input_pix_fmt in supported and not (odd and not input_pix_fmt.startswith(("yuv444", "gbr", "gray"))):
        return input_pix_fmt
    return "yuv444p" if odd else "yuv420p"


def container_options(format_name: str, time_base: Fraction) -> dict[str, str]:
    """Muxer options that keep source timestamps exact.

    The MP4/MOV muxer writes edit lists in the movie timescale (1 ms by default), which
    would round a stream's start time; use the stream's own timescale instead.
    """
    if format_name in ("mp4", "mov") and time_base.numerator == 1:
        return {"movie_timescale": str(time_base.denominator)}
    return {}


def to_video_frame(image: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """A BGR image as a frame for an encoder taking `pix_fmt`.

    For yuv420p (the usual case) OpenCV converts (BT.601, limited range, as swscale's
    default) and PyAV only copies the planes: PyAV's own BGR path took 5.4 ms per 1080p
    frame holding the interpreter lock, which stalled the stage thread beside it; this
    one takes 0.5 ms, mostly without it. Other formats go through PyAV.
    """
    h, w = image.shape[:2]
    if pix_fmt == "yuv420p" and h % 2 == 0 and w % 2 == 0:
        return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(image, format="bgr24")


class SegmentWriter:
    """Encodes BGR frames with their source pts into one segment file."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        time_base: Fraction,
        rate: Fraction,
        pix_fmt: str,
        settings: EncodeSettings,
        rotation: int = 0,
    ):
        self.path = path
        self.frames = 0
        self.time_base = time_base
        self._container = av.open(str(path), mode="w", format="mp4", options=container_options("mp4", time_base))
        stream = self._container.add_stream(settings.codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        options = {"crf": str(settings.crf), "preset": settings.preset}
        if settings.threads:
            options["threads"] = str(settings.threads)
        stream.options = options
        if rotation:
            stream.set_display_rotation(rotation)
        self._stream = stream

    def write(self, image: np.ndarray, pts: int) -> None:
        frame = to_video_frame(image, self._stream.pix_fmt)
        frame.pts = pts
        frame.time_base = self.time_base
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def abort(self) -> None:
        """Close without flushing (after an error); the caller removes the file."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
