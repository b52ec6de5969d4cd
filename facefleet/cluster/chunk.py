"""One chunk, start to finish, inside a worker: decode -> stages -> encode, overlapped.

Decoding and encoding run in their own threads joined by bounded queues, so the
processor (the GPU stages) is not left waiting while a frame is decoded or encoded.
A chunk writes a video segment when its pipeline changes frames and a table of faces
when it analyzes (either or both). Nothing here knows about Ray.
"""

from __future__ import annotations

import hashlib

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError, InputError
from facefleet.jobs.spec import ChunkResult, ChunkTask
from facefleet.media.decode import decode_range
from facefleet.media.encode import SegmentWriter
from facefleet.media.files import atomic_output, durable_checksum
from facefleet.media.image import read_image, write_image
from facefleet.pipeline.faces import FrameItem
from facefleet.pipeline.processor import Processor
from facefleet.report.faces import write_face_table

_END = object()
QUEUE_TIMEOUT_S = 0.2


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as it is displayed, given its display rotation (degrees counter-clockwise)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def stored(image: np.ndarray, rotation: int) -> np.ndarray:
    """Inverse of `upright`: back to the orientation the stream stores."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, -turns)) if turns else image


class _Stage(threading.Thread):
    """A thread feeding or draining a queue; remembers the error that stopped it."""

    def __init__(self, name: str, target: Callable[[], None], cancelled: threading.Event):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.cancelled = cancelled
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the chunk's caller
            self.error = exc
            self.cancelled.set()


def _put(q: queue.Queue, item, cancelled: threading.Event) -> None:
    while not cancelled.is_set():
        try:
            q.put(item, timeout=QUEUE_TIMEOUT_S)
            return
        except queue.Full:
            continue
    raise _Cancelled


def _get(q: queue.Queue, cancelled: threading.Event):
    while not cancelled.is_set():
        try:
            return q.get(timeout=QUEUE_TIMEOUT_S)
        except queue.Empty:
            continue
    raise _Cancelled


class _Cancelled(Exception):
    pass


class ChunkStopped(Exception):
    """The chunk was called off (another copy of it finished first); nothing is left behind."""


OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "bad_alloc")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an error is an allocation failure (onnxruntime/CUDA word it several ways)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in OOM_MARKERS)


def run_chunk(
    task: ChunkTask,
    processor: Processor,
    progress: Callable[[int], None] | None = None,
    worker_id: int = 0,
    threads: int = 0,
    slowdown: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    busy: Callable[[float, float], None] = lambda start, end: None,
) -> ChunkResult:
    """Process one chunk and write its segment; `progress(n)` is told the frames done so far.

    `threads` is the CPU thread budget of this chunk's decoder (0: one per core, which
    oversubscribes the CPU when several chunks run at once). The encoder's threads are
    the job's (`task.encode`), never the worker's: x264's output depends on them. An
    allocation failure halves the processor's batch size and runs the chunk again, down to
    batches of one, instead of failing. `slowdown` stretches simulated chunks only.
    `should_stop()` is asked between batches: when it says yes, the chunk stops with
    ChunkStopped and its temporary files are removed. `busy(start, end)` is told, in
    wall-clock seconds, when the stages (the GPU work) ran.
    """
    started = time.perf_counter()
    started_at = time.time()
    progress = progress or (lambda n: None)
    retries = 0
    while True:
        try:
            if should_stop():
                raise ChunkStopped(str(task.key))
            if task.kind == "simulated":
                (frames, seconds), faces = _run_simulated(task, progress, slowdown, should_stop, busy), 0
            elif task.kind == "image":
                faces, seconds = _run_image(task, processor)
                frames = 1
            else:
                frames, faces, seconds = _run_video(task, processor, progress, threads, should_stop, busy)
            break
        except Exception as exc:
            if not is_out_of_memory(exc) or processor.batch_size <= 1:
                raise
            processor.batch_size = max(1, processor.batch_size // 2)
            retries += 1
    seconds["total"] = time.perf_counter() - started
    return ChunkResult(
        checksum=chunk_checksum(task),
        job_id=task.job_id,
        index=task.index,
        segment_uri=task.segment_uri,
        frames=frames,
        faces=faces,
        seconds=seconds,
        worker_id=worker_id,
        providers=processor.providers,
        models=processor.checks,
        started=started_at,
        batch_size=processor.batch_size,
        oom_retries=retries,
    )


SIMULATED_BATCH = 10  # frames per simulated model call unless the task says `batch`


def chunk_checksum(task: ChunkTask) -> str:
    """The sha256 of what the chunk wrote (its segment, else its face table), made durable
    first; a simulated chunk writes nothing and gets one of its name."""
    for uri in (task.segment_uri, task.table_uri):
        if uri:
            return durable_checksum(Path(uri))
    return hashlib.sha256(f"simulated {task.job_id} {task.index}".encode()).hexdigest()


def _run_simulated(
    task: ChunkTask,
    progress: Callable[[int], None],
    slowdown: float,
    should_stop: Callable[[], bool],
    busy: Callable[[float, float], None],
) -> tuple[int, dict[str, float]]:
    """A stand-in chunk for scheduling tests, benches and report tests: it sleeps instead
    of working. Nothing is decoded or written; results of such jobs are labelled simulated.

    Its costs, in milliseconds (all times `slowdown`): `task.simulate_ms` per frame on the
    GPU (told to `busy`), and from `task.simulate_params`: `overhead_ms` per model call of
    `batch` frames (host side: launch, copies, sync; the GPU waits), `post_ms` per frame of
    CPU work in the processing thread (blur, paste), `decode_ms` and `encode_ms` per frame
    on the decode and encode threads. As in a real chunk those threads overlap the
    processing thread, so a batch takes the longest of the three and the processing
    thread waits out the rest. Other params are ignored. Returns the frames and the
    seconds per stage, named as a real chunk names them.
    """
    if task.index in task.simulate_failures:
        raise RuntimeError(f"simulated failure of chunk {task.index}")
    params = dict(task.simulate_params)
    batch = max(1, int(params.get("batch", SIMULATED_BATCH)))

    def cost(name: str, frames: int) -> float:
        return frames * params.get(name, 0.0) * slowdown / 1000

    seconds = {"decode": 0.0, "detect": 0.0, "encode": 0.0} | ({"anonymize": 0.0} if "post_ms" in params else {})
    for done in range(0, task.frames, batch):
        if should_stop():
            raise ChunkStopped(str(task.key))
        n = min(batch, task.frames - done)
        overhead, gpu, post = cost("overhead_ms", 1), n * task.simulate_ms * slowdown / 1000, cost("post_ms", n)
        decode, encode = cost("decode_ms", n), cost("encode_ms", n)
        processing = overhead + gpu + post
        time.sleep(overhead)
        t0 = time.time()
        time.sleep(gpu)
        busy(t0, time.time())
        time.sleep(post + max(decode, processing, encode) - processing)
        seconds["decode"] += decode
        seconds["detect"] += overhead + gpu
        seconds["encode"] += encode
        if post:
            seconds["anonymize"] += post
        progress(done + n)
    return task.frames, seconds


def _run_image(task: ChunkTask, processor: Processor) -> tuple[int, dict[str, float]]:
    t0 = time.perf_counter()
    image = read_image(task.input_uri)
    t1 = time.perf_counter()
    run = processor.run(task.index)
    items = run.process([FrameItem(0, 0, image.bgr)]) + run.flush()
    t2 = time.perf_counter()
    if task.segment_uri:
        with atomic_output(Path(task.segment_uri)) as tmp:
            write_image(image, tmp)
    if task.table_uri:
        write_face_table(run.rows, Path(task.table_uri))
    seconds = {"decode": t1 - t0, **run.seconds, "encode": time.perf_counter() - t2}
    return sum(len(item.faces) for item in items), seconds


def _run_video(
    task: ChunkTask,
    processor: Processor,
    progress: Callable[[int], None],
    threads: int,
    should_stop: Callable[[], bool] = lambda: False,
    busy: Callable[[float, float], None] = lambda start, end: None,
) -> tuple[int, int, dict[str, float]]:
    """Decode thread -> stages (this thread) -> encode thread (when the pipeline writes video).

    Returns output frames, faces on them, and seconds per stage.
    """
    depth = 2 * processor.batch_size
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    processed: queue.Queue = queue.Queue(maxsize=depth)
    cancelled = threading.Event()
    done = {"frames": 0, "faces": 0}

    def decode() -> None:
        frames = decode_range(task.input_uri, task.decode_first_pts, task.decode_last_pts, task.seek_pts, threads=threads)
        first_index = task.start - task.context_before
        t = time.perf_counter()
        for i, (pts, image) in enumerate(frames):
            decoder.seconds += time.perf_counter() - t
            output = task.first_pts <= pts <= task.last_pts
            _put(decoded, FrameItem(first_index + i, pts, upright(image, task.rotation), output), cancelled)
            t = time.perf_counter()
        decoder.seconds += time.perf_counter() - t
        _put(decoded, _END, cancelled)

    with ExitStack() as files:
        writer = None
        if task.segment_uri:
            tmp = files.enter_context(atomic_output(Path(task.segment_uri)))
            # the job's encoder threads, not this worker's `threads`: the same chunk must give
            # the same segment on any worker (retries, duplicates, resumed jobs)
            writer = SegmentWriter(
                tmp, task.width, task.height, task.time_base, task.rate, task.pix_fmt, task.encode, task.rotation
            )

        def encode() -> None:
            while (item := _get(processed, cancelled)) is not _END:
                t = time.perf_counter()
                writer.write(stored(item.image, task.rotation), item.pts)
                done["frames"] += 1
                encoder.seconds += time.perf_counter() - t
            t = time.perf_counter()
            writer.close()
            encoder.seconds += time.perf_counter() - t

        decoder = _Stage("decode", decode, cancelled)
        encoder = _Stage("encode", encode, cancelled)
        threads_started = [decoder] + ([encoder] if writer else [])
        run = processor.run(task.index)

        def hand_over(items: list[FrameItem]) -> None:
            for item in items:
                if item.output:
                    done["faces"] += len(item.faces)
                    if writer:
                        _put(processed, item, cancelled)
                    else:
                        done["frames"] += 1

        for thread in threads_started:
            thread.start()
        try:
            for batch in _batches(decoded, processor.batch_size, cancelled):
                if should_stop():
                    raise ChunkStopped(str(task.key))
                t0 = time.time()
                out = run.process(batch)
                busy(t0, time.time())
                hand_over(out)
                progress(done["frames"])
            hand_over(run.flush())
            if writer:
                _put(processed, _END, cancelled)
                while encoder.is_alive():
                    encoder.join(timeout=QUEUE_TIMEOUT_S)
                    progress(done["frames"])
        except _Cancelled:
            pass
        except BaseException:
            cancelled.set()
            raise
        finally:
            for thread in threads_started:
                thread.join()
            if writer and (cancelled.is_set() or encoder.error):
                writer.abort()
        for stage in threads_started:
            if stage.error is not None and not isinstance(stage.error, _Cancelled):
                if isinstance(stage.error, FacefleetError):
                    raise stage.error
                raise RuntimeError(f"{stage.name} failed: {stage.error!r}") from stage.error
        if done["frames"] != task.frames:
            end = task.start + task.frames
            raise InputError(
                task.input_uri,
                f"frames {task.start}-{end - 1}: decoded {done['frames']} of {task.frames} (damaged or truncated video)",
            )
        if task.table_uri:
            write_face_table(run.rows, Path(task.table_uri))
    progress(done["frames"])
    seconds = {"decode": decoder.seconds, **run.seconds}
    if writer:
        seconds["encode"] = encoder.seconds
    return done["frames"], done["faces"], seconds


def _batches(decoded: queue.Queue, size: int, cancelled: threading.Event) -> Iterator[list]:
    batch: list = []
    while (item := _get(decoded, cancelled)) is not _END:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
