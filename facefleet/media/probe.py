"""What is in an input: video stream facts and the presentation time of every frame.

Probing demuxes the video packets (no decoding, apart from the first frame as a check),
so it is fast even for long videos; the frame list is the sorted packet timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from facefleet.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv")


def is_image(uri: str) -> bool:
    return Path(uri).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    uri: str
    format_name: str  # demuxer, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    codec: str
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    rate: Fraction  # average frame rate
    frame_pts: tuple[int, ...]  # presentation time of every frame, in time_base, in order
    keyframes: tuple[int, ...]  # indices into frame_pts of frames that start a GOP
    rotation: int  # display rotation, degrees counter-clockwise
    has_audio: bool

    @property
    def frames(self) -> int:
        return len(self.frame_pts)

    @property
    def duration(self) -> float:
        if not self.frame_pts:
            return 0.0
        return float((self.frame_pts[-1] - self.frame_pts[0]) * self.time_base + 1 / self.rate)


def open_input(uri: str) -> av.container.InputContainer:
    """Open a media input, turning every failure into an InputError that names it."""
    path = Path(uri)
    if not path.exists():
        raise InputError(uri, "file not found")
    if path.is_dir():
        raise InputError(uri, "is a directory, not a media file")
    if path.stat().st_size == 0:
        raise InputError(uri, "file is empty (0 bytes)")
    try:
        return av.open(uri, mode="r")
    except av.error.FFmpegError as exc:
        raise InputError(uri, f"not a readable media file ({_reason(exc)})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(uri, f"cannot open: {exc}") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def probe_video(uri: str) -> VideoInfo:
    """Describe a video input, or raise InputError saying why it cannot be processed."""
    with open_input(uri) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise InputError(uri, f"has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        has_audio = bool(container.streams.audio)
        time_base = stream.time_base
        if time_base is None:
            raise InputError(uri, "video stream has no time base")
        pts_list: list[int] = []
        key_pts: set[int] = set()
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    raise InputError(uri, "video packets carry no timestamps; remux it into mp4 or mkv first")
                pts_list.append(pts)
                if packet.is_keyframe:
                    key_pts.add(pts)
        except av.error.FFmpegError as exc:
            raise InputError(uri, f"damaged or truncated video ({_reason(exc)}) after {len(pts_list)} frames") from None
        if not pts_list:
            raise InputError(uri, "video stream has no frames")
        frame_pts = tuple(sorted(set(pts_list)))
        if len(frame_pts) != len(pts_list):
            raise InputError(uri, "several video frames share one timestamp; remux it with fresh timestamps first")
        index = {pts: i for i, pts in enumerate(frame_pts)}
        keyframes = tuple(sorted(index[p] for p in key_pts)) or (0,)
        first = _first_frame(uri, container, stream)
        rate = stream.average_rate or stream.guessed_rate or _rate_from_pts(frame_pts, time_base)
        return VideoInfo(
            uri=uri,
            format_name=container.format.name,
            codec=stream.codec_context.name,
            width=first.width,
            height=first.height,
            pix_fmt=first.format.name,
            time_base=Fraction(time_base),
            rate=Fraction(rate),
            frame_pts=frame_pts,
            keyframes=keyframes,
            rotation=int(first.rotation or 0),
            has_audio=has_audio,
        )


def _first_frame(uri: str, container: av.container.InputContainer, stream) -> av.VideoFrame:
    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise InputError(uri, f"video cannot be decoded ({_reason(exc)})") from None
    raise InputError(uri, "video stream has no decodable frames")


def _rate_from_pts(frame_pts: tuple[int, ...], time_base: Fraction) -> Fraction:
    if len(frame_pts) < 2:
        return Fraction(25)
    span = (frame_pts[-1] - frame_pts[0]) * time_base
    return Fraction(len(frame_pts) - 1) / span if span > 0 else Fraction(25)
