"""What is in an input: video stream facts and the presentation time of every frame.

Probing demuxes the video packets (no decoding, apart from the first frame as a check),
so it is fast even for long videos; the frame list is the sorted packet timestamps.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from facefleet.errors import InputError
from facefleet.media import storage

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


REMOTE_BUFFER_BYTES = 1 << 20  # FFmpeg's reads from an object store: one ranged GET each


@contextmanager
def open_input(uri: str) -> Iterator[av.container.InputContainer]:
    """Open a media input (a local path or an object storage URI), turning every failure
    into an InputError that names it."""
    with storage.open_input(uri) as source:
        if isinstance(source, str):
            _check_local(uri, Path(source))
        elif source.size() == 0:
            raise InputError(uri, "file is empty (0 bytes)")
        with _open_container(uri, source) as container:
            yield container


def _check_local(uri: str, path: Path) -> None:
    if not path.exists():
        raise InputError(uri, "file not found")
    if path.is_dir():
        raise InputError(uri, "is a directory, not a media file")
    if path.stat().st_size == 0:
        raise InputError(uri, "file is empty (0 bytes)")


def _open_options() -> dict:
    """av.open's options: metadata in another encoding than UTF-8 (old cameras, damaged
    tags) must not stop a video. PyAV up to 18 decodes metadata strictly unless told
    `metadata_errors="replace"`; PyAV 19 has no such option (and refuses it)."""
    major = int(av.__version__.split(".")[0])
    return {"metadata_errors": "replace"} if major < 19 else {}


def _open_container(uri: str, source) -> av.container.InputContainer:
    try:
        if isinstance(source, str):
            return av.open(source, mode="r", **_open_options())
        return av.open(source, mode="r", buffer_size=REMOTE_BUFFER_BYTES, **_open_options())
    except av.error.FFmpegError as exc:
        truncated = cut_short(uri)
        if truncated:
            raise InputError(uri, truncated) from None
        if isinstance(exc, av.error.EOFError):
            raise InputError(uri, "not a readable media file (it ends before its header is complete: truncated, or not media)") from None
        raise InputError(uri, f"not a readable media file ({_reason(exc)})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(uri, f"cannot open ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    """The cause of an error in one line, without the file name FFmpeg appends."""
    if getattr(exc, "errno", None) == errno.ENOMEM:  # FFmpeg believed an impossible size in the file
        return "damaged: a size in its header is impossible"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def cut_short(uri: str | Path) -> str | None:
    """Why a file is shorter than its own container header says, or None if it is not.

    MP4/MOV: a top-level box (size, type) that runs past the end of the file, or no
    'moov' box (the frame index). Matroska/WebM: a Segment whose declared size runs
    past the end. Other formats, and files whose sizes are unknown, are not judged.
    """
    try:
        with storage.open_binary(str(uri)) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            head = f.read(12)
            if head[4:8] == b"ftyp":
                return _cut_short_mp4(f, size)
            if head[:4] == _EBML:
                return _cut_short_matroska(f, size)
    except (OSError, InputError):
        pass  # unreadable: opening it says why
    return None


def _cut_short_mp4(f, size: int) -> str | None:
    boxes: list[str] = []
    offset = 0
    while offset + 8 <= size:
        f.seek(offset)
        head = f.read(16)
        length = int.from_bytes(head[:4], "big")
        kind = head[4:8].decode("latin-1")
        if length == 1 and len(head) == 16:
            length = int.from_bytes(head[8:16], "big")
        elif length == 0:  # the last box, up to the end of the file
            length = size - offset
        if length < 8 or not all(chr(b).isalnum() and b < 127 or b in b" \xa9" for b in head[4:8]):  # ASCII, (c)
            return None  # not a box structure this walker understands
        if offset + length > size:
            missing = "" if "moov" in boxes or kind == "moov" else "; its frame index ('moov') is missing"
            return f"truncated MP4: the file ends inside its '{kind}' box, at byte {size} of {offset + length}{missing}"
        boxes.append(kind)
        offset += length
    if "moov" not in boxes and "moof" not in boxes:
        return "truncated or unfinished MP4: it has no frame index ('moov' box)"
    return None


_EBML = bytes.fromhex("1a45dfa3")
_SEGMENT = bytes.fromhex("18538067")


def _cut_short_matroska(f, size: int) -> str | None:
    f.seek(0)
    head = f.read(64)
    header_size, n = _ebml_size(head, 4)
    at = 4 + n + (header_size or 0)
    if header_size is None or head[at : at + 4] != _SEGMENT:
        return None
    segment_size, n = _ebml_size(head, at + 4)
    if segment_size is None:  # unknown size (a live recording): nothing to compare
        return None
    end = at + 4 + n + segment_size
    if end > size:
        return f"truncated Matroska/WebM: the file ends at byte {size} of the {end} its header declares"
    return None


def _ebml_size(data: bytes, i: int) -> tuple[int | None, int]:
    """An EBML variable-length size at data[i]: (value or None when unknown/unreadable, length)."""
    if i >= len(data) or data[i] == 0:
        return None, 1
    first = data[i]
    n = 8 - first.bit_length() + 1
    if i + n > len(data):
        return None, n
    value = first & (0xFF >> n)
    for byte in data[i + 1 : i + n]:
        value = (value << 8) | byte
    if value == (1 << (7 * n)) - 1:
        return None, n
    return value, n


def probe_video(uri: str) -> VideoInfo:
    """Describe a video input, or raise InputError saying why it cannot be processed."""
    with open_input(uri) as container:
        if not container.streams.video:
            truncated = cut_short(uri)  # a cut header lists fewer streams than the file had
            if truncated:
                raise InputError(uri, truncated)
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise InputError(uri, f"has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        has_audio = bool(container.streams.audio)
        time_base = stream.time_base
        if time_base is None:
            raise InputError(uri, "video stream has no time base")
        pts_list: list[int] = []
        key_pts: set[int] = set()
        settled = -(1 << 62)  # latest pts of the frames no decoder can still reorder past
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    raise InputError(uri, "video packets carry no timestamps; remux it into mp4 or mkv first")
                if len(pts_list) > REORDER_FRAMES:
                    settled = max(settled, pts_list[-REORDER_FRAMES - 1])
                    if pts < settled:
                        raise InputError(uri, _backwards(len(pts_list), settled, pts, time_base))
                pts_list.append(pts)
                if packet.is_keyframe:
                    key_pts.add(pts)
        except av.error.FFmpegError as exc:
            raise InputError(uri, f"damaged or truncated video ({_reason(exc)}) after {len(pts_list)} frames") from None
        _check_complete(uri, stream, pts_list)
        if not pts_list:
            raise InputError(uri, "video stream has no frames (zero-frame video)")
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


# A decoder reorders frames within its picture buffer (16 frames at most, H.264/HEVC): a
# frame that presents before one stored that far ahead of it cannot be B-frame reordering.
REORDER_FRAMES = 16


def _backwards(index: int, before: int, after: int, time_base: Fraction) -> str:
    """Timestamps that go back (concatenated recordings, a muxer's wrap-around): the frames
    would come out in another order than they were recorded."""
    return (
        f"video timestamps go backwards: frame {index} of the file is at {float(after * time_base):.3f} s, "
        f"after one at {float(before * time_base):.3f} s; remux it with fresh timestamps first"
    )


def _first_frame(uri: str, container: av.container.InputContainer, stream) -> av.VideoFrame:
    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise InputError(uri, f"video cannot be decoded ({_reason(exc)})") from None
    raise InputError(uri, "video stream has no decodable frames")


def _check_complete(uri: str, stream, pts_list: list[int]) -> None:
    """Refuse a video whose file is shorter than its own container header says.

    The demuxer stops silently where a cut file ends, so a truncated video would
    otherwise come out shorter with no word said. A header that lists more frames than
    the demuxer returns is not enough on its own (edit lists can hide frames), so the
    frame count only adds detail to a file that is cut.
    """
    truncated = cut_short(uri)
    if truncated:
        declared = stream.frames or 0
        if declared > len(pts_list):
            truncated += f" (only {len(pts_list)} of the {declared} frames it lists are there)"
        raise InputError(uri, truncated)


def _rate_from_pts(frame_pts: tuple[int, ...], time_base: Fraction) -> Fraction:
    if len(frame_pts) < 2:
        return Fraction(25)
    span = (frame_pts[-1] - frame_pts[0]) * time_base
    return Fraction(len(frame_pts) - 1) / span if span > 0 else Fraction(25)
