"""Segment encoding: processed frames of one chunk into an H.264 MP4 with source timestamps.

All segments of a video are encoded with identical settings so that the assembler can
concatenate their packets without re-encoding.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def quality_to_crf(quality: int) -> int:
    """FaceFusion's mapping of --output-video-quality (0-100) to an x264 CRF (51-0)."""
    if not 0 <= quality <= 100:
        raise ValueError("output video quality must be between 0 and 100")
    return round(51 - quality * 0.51)


# x264's output depends on its thread count: the same frames encoded with 1, 2 or 3
# threads decoded up to 58 levels apart. A segment is the same wherever its chunk runs
# (retried, duplicated, resumed) only if that count is the job's: never the machine's
# cores (x264's "auto": 4 threads on the 16-core H100 machine, 2 on a 2-core one) nor a
# worker's thread budget (cores / chunks on the node: 8 or 2 there). Measured on the
# H100 machine, 1080p veryfast, 2026-11: with 8 threads, 2 encoders at once gave 135-141
# fps in all (4 threads: 98-102), 8 at once 183-194 (2 threads each: 156).
ENCODER_THREADS = 8

# x264's AVX-512 code reads memory it never wrote when macroblock-tree rate control is on
# (the default): on an AVX-512 CPU the same frames gave different segments from run to run
# for widths that are not a multiple of 128 pixels (320x240 test videos, 720x480, a
# portrait 1080-wide phone video), and 1920x1080 segments differed from those of a CPU
# without AVX-512. Without AVX-512 (SSE up to AVX2), x264's output was the same on every
# level and every run. So x264 gets the capabilities it detected, less AVX-512. Speed on
# the 16-core H100 machine (1080p veryfast, 8 threads), without/with AVX-512: 2 encoders
# 112-126 / 125-127 fps, 8 encoders 170-184 / 167-181 fps: no difference beyond noise.
X264_AVX512 = 1 << 16
# The names x264 reports its capabilities by ("using cpu capabilities: ..."), as the
# X264_CPU_* flags they stand for (x264.h, common/cpu.c; flags printed under a name are
# all set): the union of the names reported is the set x264 detected.
_MMX2 = 1 << 0 | 1 << 1
_SSE2 = _MMX2 | 1 << 2 | 1 << 3
_AVX = _SSE2 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 9
_AVX2 = _AVX | 1 << 12 | 1 << 4 | 1 << 13 | 1 << 14 | 1 << 15
X264_CPU_NAMES = {
    "MMX2": _MMX2,
    "MMXEXT": _MMX2,
    "SSE": _MMX2 | 1 << 2,
    "SSE2Slow": _SSE2 | 1 << 19,
    "SSE2": _SSE2,
    "SSE2Fast": _SSE2 | 1 << 20,
    "LZCNT": _SSE2 | 1 << 4,
    "SSE3": _SSE2 | 1 << 5,
    "SSSE3": _SSE2 | 1 << 5 | 1 << 6,
    "SSE4.1": _SSE2 | 1 << 5 | 1 << 6 | 1 << 7,
    "SSE4": _SSE2 | 1 << 5 | 1 << 6 | 1 << 7,
    "SSE4.2": _SSE2 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8,
    "AVX": _AVX,
    "XOP": _AVX | 1 << 10,
    "FMA4": _AVX | 1 << 11,
    "FMA3": _AVX | 1 << 12,
    "BMI1": _AVX | 1 << 4 | 1 << 13,
    "BMI2": _AVX | 1 << 4 | 1 << 13 | 1 << 14,
    "AVX2": _AVX2,
    "AVX512": _AVX2 | X264_AVX512,
    "Cache32": 1 << 17,
    "Cache64": 1 << 18,
    "SlowAtom": 1 << 23,
    "SlowPshufb": 1 << 24,
    "SlowPalignr": 1 << 25,
    "SlowShuffle": 1 << 21,
    "UnalignedStack": 1 << 22,
}


def x264_asm_flags(capabilities: Sequence[str]) -> int | None:
    """The X264_CPU_* flags to give x264 (its `asm` option) for the capabilities it reports:
    all of them but AVX-512; None when x264 does not use AVX-512 (leave it as it is)."""
    if "AVX512" not in capabilities:
        return None
    flags = 0
    for name in capabilities:
        flags |= X264_CPU_NAMES.get(name, 0)  # an unknown name: a subset is always safe to run
    return flags & ~X264_AVX512


_PROBE = threading.Lock()  # the probe turns FFmpeg's logging up for a moment: one at a time


@functools.cache
def x264_capabilities() -> tuple[str, ...]:
    """What x264 reports it uses on this machine, from the log of a 64x64 encoder (asked once)."""
    with _PROBE:
        level = av.logging.get_level()
        av.logging.set_level(av.logging.INFO)
        try:
            with av.logging.Capture(local=True) as logs:
                probe = av.CodecContext.create("libx264", "w")
                probe.width, probe.height, probe.pix_fmt, probe.time_base = 64, 64, "yuv420p", Fraction(1, 25)
                probe.open()
                del probe
        finally:
            av.logging.set_level(level)
    for _, _, message in logs:
        if "using cpu capabilities:" in message:
            return tuple(message.split(":", 1)[1].split())
    return ()


def codec_options(settings: EncodeSettings) -> dict[str, str]:
    """Encoder options of a segment: the same output for the same frames on any machine."""
    options = {"crf": str(settings.crf), "preset": settings.preset, "threads": str(settings.encoder_threads)}
    if settings.codec == "libx264":
        flags = x264_asm_flags(x264_capabilities())
        if flags is not None:
            options["x264-params"] = f"asm={flags}"
    return options


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"
    quality: int = 65  # CRF 18; 100 is lossless
    preset: str = "veryfast"
    threads: int = 0  # encoder threads; 0: ENCODER_THREADS (fixed, whatever the machine)

    @property
    def encoder_threads(self) -> int:
        return self.threads or ENCODER_THREADS

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
    default) and the frame is made on OpenCV's buffer without a copy: PyAV's own BGR path
    took 5.4 ms per 1080p frame holding the interpreter lock, which stalled the stage
    thread beside it, and copying the converted planes into a new frame (from_ndarray)
    still held it 1 ms per frame on the H100 machine (py-spy, 4 chunks at once). x264
    copies every picture it is given into frames of its own, so the buffer may be reused
    once the frame is sent (tests/test_media.py overwrites it at once). PyAV reads such a
    buffer's height as a multiple of 4: other even heights take the copy. Other formats
    go through PyAV.
    """
    h, w = image.shape[:2]
    if pix_fmt == "yuv420p" and h % 2 == 0 and w % 2 == 0:
        planes = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        if h % 4 == 0:
            return av.VideoFrame.from_numpy_buffer(planes, format="yuv420p")
        return av.VideoFrame.from_ndarray(planes, format="yuv420p")
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
        stream.options = codec_options(settings)
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
