"""Assembly: concatenate segment packets without re-encoding and mux the source audio in.

Video packets keep the source timestamps the segments were encoded with; audio packets are
copied from the input unchanged. Packets of all streams are interleaved by time.
Segments come as a list (all written) or as a SegmentFeed, whose segments become ready
one by one while the job runs (facefleet.jobs.assembly).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import av

from facefleet.errors import InputError, OutputError
from facefleet.media import storage
from facefleet.media.encode import container_options
from facefleet.media.files import is_disk_full
from facefleet.media.probe import REMOTE_BUFFER_BYTES, VideoInfo, open_input

# Muxer name for an output file extension.
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}


def output_format(path: Path) -> str:
    try:
        return MUXERS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(MUXERS))
        raise OutputError(f"{path}: unsupported output video extension; use one of {known}") from None


class SegmentFeed:
    """A video's segment paths in order, each readable once its chunk has finished.

    `get(i)` waits until segment i is ready; after `abort` it raises OutputError, as does
    `decided()`, which waits for `commit` or `abort` (the output is published only on
    commit). Thread-safe: the job runner marks segments ready, an assembly thread reads.
    """

    def __init__(self, paths: list[Path | str], ready: bool = False):
        self._paths = list(paths)
        self._ready = [ready] * len(self._paths)
        self._committed = ready
        self._aborted: str | None = None
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._paths)

    def mark_ready(self, position: int) -> None:
        with self._cond:
            self._ready[position] = True
            self._cond.notify_all()

    def all_ready(self) -> bool:
        with self._cond:
            return all(self._ready)

    def check(self) -> None:
        """Raise OutputError once aborted."""
        with self._cond:
            self._raise_if_aborted()

    def is_ready(self, position: int) -> bool:
        with self._cond:
            return self._ready[position] and self._aborted is None

    def get(self, position: int) -> Path | str:
        with self._cond:
            self._cond.wait_for(lambda: self._ready[position] or self._aborted is not None)
            self._raise_if_aborted()
            return self._paths[position]

    def commit(self) -> None:
        with self._cond:
            self._committed = True
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        with self._cond:
            self._aborted = self._aborted or reason
            self._cond.notify_all()

    def decided(self) -> None:
        """Return once committed; raise OutputError once aborted."""
        with self._cond:
            self._cond.wait_for(lambda: self._committed or self._aborted is not None)
            self._raise_if_aborted()

    def _raise_if_aborted(self) -> None:
        if self._aborted is not None:
            raise OutputError(f"assembly stopped: {self._aborted}")


def _timed(packets: Iterator[av.Packet], order: int) -> Iterator[tuple[float, int, av.Packet]]:
    for packet in packets:
        if packet.size == 0 or packet.dts is None:
            continue
        yield float(packet.dts * packet.time_base), order, packet


def assemble(info: VideoInfo, segments: list[Path | str] | SegmentFeed, output: Path) -> int:
    """Write `output` from the segments (in order) and the input's audio; return frames written.

    `output` is the final file's temporary name; its extension picks the container. The
    input and the segments may be local paths or object storage URIs. From a feed, each
    segment is read once it is ready.
    """
    fmt = output_format(output)
    feed = segments if isinstance(segments, SegmentFeed) else SegmentFeed(segments, ready=True)
    with open_input(info.uri) as source, _open_segment(feed.get(0)) as first:
        template = first.streams.video[0]
        extradata = template.codec_context.extradata
        options = container_options(fmt, info.time_base)
        try:
            out = av.open(str(output), mode="w", format=fmt, options=options)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"{output}: cannot create output ({exc})") from None
        with out:
            video = out.add_stream_from_template(template)
            video.time_base = info.time_base
            video.codec_context.framerate = info.rate  # matroska stores it as the frame duration
            if info.rotation:
                video.set_display_rotation(info.rotation)
            audio_in = list(source.streams.audio)
            audio_out = []
            for stream in audio_in:
                try:
                    audio_out.append(out.add_stream_from_template(stream))
                except (ValueError, av.error.FFmpegError) as exc:
                    raise OutputError(
                        f"{output.name}: audio codec {stream.codec_context.name} cannot be stored in {fmt} ({exc});"
                        " choose another output container, e.g. .mkv"
                    ) from None
            for key, value in source.metadata.items():
                out.metadata[key] = value
            frames = 0
            audio_map = {s.index: o for s, o in zip(audio_in, audio_out)}
            video_packets = _timed(_checked_segments(feed, extradata), 0)
            audio_packets = _timed(source.demux(audio_in), 1) if audio_in else iter(())
            try:
                for _, order, packet in heapq.merge(video_packets, audio_packets, key=lambda x: (x[0], x[1])):
                    if order == 0:
                        packet.stream = video
                        frames += 1
                    else:
                        packet.stream = audio_map[packet.stream.index]
                    out.mux(packet)
            except av.error.FFmpegError as exc:
                if is_disk_full(exc):
                    raise  # the caller's atomic_output names the output: "the disk is full"
                raise OutputError(f"{output.name}: muxing failed ({exc})") from None
    if frames != info.frames:
        raise InputError(info.uri, f"assembled {frames} frames but the input has {info.frames}")
    return frames


@contextmanager
def _open_segment(path: Path | str) -> Iterator[av.container.InputContainer]:
    with storage.open_input(str(path)) as source, av.open(source, buffer_size=REMOTE_BUFFER_BYTES) as seg:
        yield seg


# Segments opened ahead of the one being muxed. Opening a segment runs FFmpeg's stream
# probe, which decodes its first frame (29 ms at 1080p on the 2-core build machine: 95 %
# of assembling 9 segments); the probe runs without the interpreter lock, so the next
# segments are opened in threads while this one is copied.
OPEN_AHEAD = 4


def _opened(path: Path | str) -> tuple[ExitStack, av.container.InputContainer]:
    """An open segment and what closes it."""
    with ExitStack() as stack:
        seg = stack.enter_context(_open_segment(path))
        return stack.pop_all(), seg


def _close(future: Future) -> None:
    try:
        stack, _ = future.result()
    except Exception:
        return  # it failed to open: nothing to close (the error is raised where it is used)
    stack.close()


def _checked_segments(feed: SegmentFeed, extradata: bytes | None) -> Iterator[av.Packet]:
    """Packets of every segment, refusing segments whose codec setup differs from the first.

    Up to OPEN_AHEAD segments that are ready are open at once; all are closed however
    this ends."""
    ahead: deque[tuple[Path | str, Future]] = deque()
    following = 0  # the next segment to open
    with ThreadPoolExecutor(OPEN_AHEAD, thread_name_prefix="open-segment") as pool:

        def open_next(wait: bool) -> bool:
            """Open the following segment if there is room ahead and it is ready (or
            once it is, with `wait`)."""
            nonlocal following
            if following == len(feed) or len(ahead) >= OPEN_AHEAD or not (wait or feed.is_ready(following)):
                return False
            path = feed.get(following)
            following += 1
            ahead.append((path, pool.submit(_opened, path)))
            return True

        try:
            while ahead or following < len(feed):
                feed.check()  # aborted: stop before the next segment
                if not ahead:
                    open_next(wait=True)
                path, future = ahead.popleft()
                try:
                    while open_next(wait=False):
                        pass
                except BaseException:
                    _close(future)
                    raise
                stack, seg = future.result()
                with stack:
                    stream = seg.streams.video[0]
                    if stream.codec_context.extradata != extradata:
                        raise OutputError(f"segment {Path(str(path)).name} was encoded with different codec settings")
                    yield from seg.demux(stream)
        finally:
            for _, future in ahead:
                _close(future)
