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
from facefleet.media.files import atomic_output, durable_checksum, is_disk_full
from facefleet.media.image import read_image, write_image
from facefleet.models.session import is_out_of_memory
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


class StageTimes:
    """Per stage, the wall-clock time (time.time()) it first started and last stopped
    working on a chunk. Each thread records its own stages."""

    def __init__(self) -> None:
        self.times: dict[str, tuple[float, float]] = {}

    def add(self, stage: str, start: float, end: float) -> None:
        first, last = self.times.get(stage, (start, end))
        self.times[stage] = (min(first, start), max(last, end))

    def timed_call(self, seconds: dict[str, float], call: Callable[[], list]) -> list:
        """Run `call` (a pipeline run's process or flush, which runs its stages in turn and
        adds each one's time to `seconds`) and place each stage within it by those times."""
        before = dict(seconds)
        t = time.time()
        out = call()
        for stage, total in seconds.items():
            spent = total - before.get(stage, 0.0)
            self.add(stage, t, t + spent)
            t += spent
        return out

    def within(self, start: float, end: float) -> dict[str, tuple[float, float]]:
        """The times, clamped to the chunk's own interval (time.time() and perf_counter
        differ by microseconds)."""
        clamp = lambda t: min(max(t, start), end)  # noqa: E731
        return {stage: (clamp(first), clamp(last)) for stage, (first, last) in sorted(self.times.items())}


class ChunkStopped(Exception):
    """The chunk was called off (another copy of it finished first); nothing is left behind."""


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
    wall-clock seconds, when the stages (the GPU work) ran. The result's `stage_times` say
    when each stage first and last worked on the chunk (of the run that succeeded).
    """
    started = time.perf_counter()
    started_at = time.time()
    progress = progress or (lambda n: None)
    retries = 0
    while True:
        try:
            if should_stop():
                raise ChunkStopped(str(task.key))
            spans = StageTimes()
            if task.kind == "simulated":
                run = _run_simulated(task, progress, slowdown, should_stop, busy, spans, worker_id=worker_id)
                (frames, seconds), faces = run, 0
            elif task.kind == "image":
                faces, seconds = _run_image(task, processor, spans)
                frames = 1
            else:
                frames, faces, seconds = _run_video(task, processor, progress, threads, should_stop, busy, spans)
            break
        except Exception as exc:
            if not is_out_of_memory(exc) or processor.batch_size <= 1:
                raise
            processor.batch_size = max(1, processor.batch_size // 2)
            retries += 1
    seconds["total"] = time.perf_counter() - started
    stage_times = spans.within(started_at, started_at + seconds["total"])
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
        stage_times=stage_times,
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
    spans: StageTimes | None = None,
    worker_id: int = 0,
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
    seconds per stage, named as a real chunk names them; `spans` hears when each stage
    worked (decode at the start of each batch, encode at its end).

    A chunk whose index is in `task.simulate_failures` fails: on every send, or with
    param `fail_tries` = N on its first N sends only (`task.attempt`).

    Faults (for the reliability tests): param `hang` = I makes chunk I hang after its
    first batch, like a decoder stuck inside FFmpeg (it sleeps, never reports progress
    again and ignores being called off), on every send or with `hang_tries` = N on its
    first N sends only; param `bad_worker` = W makes every chunk sent to worker W fail
    with a simulated GPU error (a GPU that returns errors).
    """
    params = dict(task.simulate_params)
    if task.index in task.simulate_failures and task.attempt <= params.get("fail_tries", float("inf")):
        raise RuntimeError(f"simulated failure of chunk {task.index}")
    if "bad_worker" in params and int(params["bad_worker"]) == worker_id:
        raise RuntimeError(f"CUDA error: an illegal memory access was encountered (simulated GPU fault on worker {worker_id})")
    hangs = "hang" in params and int(params["hang"]) == task.index and task.attempt <= params.get("hang_tries", float("inf"))
    spans = spans or StageTimes()
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
        b0 = time.time()
        time.sleep(overhead)
        t0 = time.time()
        time.sleep(gpu)
        t1 = time.time()
        busy(t0, t1)
        time.sleep(post + max(decode, processing, encode) - processing)
        b1 = time.time()
        spans.add("decode", b0, min(b0 + decode, b1))
        spans.add("detect", b0, t1)
        if post:
            spans.add("anonymize", t1, min(t1 + post, b1))
        spans.add("encode", max(b1 - encode, b0), b1)
        seconds["decode"] += decode
        seconds["detect"] += overhead + gpu
        seconds["encode"] += encode
        if post:
            seconds["anonymize"] += post
        progress(done + n)
        while hangs:  # stuck: no progress, deaf to stop requests, until the worker is killed
            time.sleep(1.0)
    return task.frames, seconds


def _run_image(task: ChunkTask, processor: Processor, spans: StageTimes) -> tuple[int, dict[str, float]]:
    t0, w0 = time.perf_counter(), time.time()
    image = read_image(task.input_uri)
    t1 = time.perf_counter()
    spans.add("decode", w0, time.time())
    run = processor.run(task.index)
    items = spans.timed_call(run.seconds, lambda: run.process([FrameItem(0, 0, image.bgr)]))
    items += spans.timed_call(run.seconds, run.flush)
    t2, w2 = time.perf_counter(), time.time()
    if task.segment_uri:
        with atomic_output(Path(task.segment_uri)) as tmp:
            write_image(image, tmp)
    if task.table_uri:
        write_face_table(run.rows, Path(task.table_uri))
    seconds = {"decode": t1 - t0, **run.seconds, "encode": time.perf_counter() - t2}
    spans.add("encode", w2, time.time())
    return sum(len(item.faces) for item in items), seconds


def _run_video(
    task: ChunkTask,
    processor: Processor,
    progress: Callable[[int], None],
    threads: int,
    should_stop: Callable[[], bool] = lambda: False,
    busy: Callable[[float, float], None] = lambda start, end: None,
    spans: StageTimes | None = None,
) -> tuple[int, int, dict[str, float]]:
    """Decode thread -> stages (this thread) -> encode thread (when the pipeline writes video).

    Returns output frames, faces on them, and seconds per stage; `spans` hears when each
    stage first and last worked on the chunk.
    """
    spans = spans or StageTimes()
    depth = 2 * processor.batch_size
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    processed: queue.Queue = queue.Queue(maxsize=depth)
    cancelled = threading.Event()
    done = {"frames": 0, "faces": 0}

    def decode() -> None:
        first = time.time()
        frames = decode_range(task.input_uri, task.decode_first_pts, task.decode_last_pts, task.seek_pts, threads=threads)
        first_index = task.start - task.context_before
        t = time.perf_counter()
        for i, (pts, image) in enumerate(frames):
            decoder.seconds += time.perf_counter() - t
            output = task.first_pts <= pts <= task.last_pts
            _put(decoded, FrameItem(first_index + i, pts, upright(image, task.rotation), output), cancelled)
            t = time.perf_counter()
        decoder.seconds += time.perf_counter() - t
        spans.add("decode", first, time.time())
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
            first = None
            while (item := _get(processed, cancelled)) is not _END:
                t = time.perf_counter()
                first = first or time.time()
                writer.write(stored(item.image, task.rotation), item.pts)
                done["frames"] += 1
                encoder.seconds += time.perf_counter() - t
            t = time.perf_counter()
            first = first or time.time()
            writer.close()
            encoder.seconds += time.perf_counter() - t
            spans.add("encode", first, time.time())

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
                out = spans.timed_call(run.seconds, lambda: run.process(batch))
                busy(t0, time.time())
                hand_over(out)
                progress(done["frames"])
            hand_over(spans.timed_call(run.seconds, run.flush))
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
                if isinstance(stage.error, FacefleetError) or is_disk_full(stage.error):
                    raise stage.error  # a full disk: atomic_output names the segment (final, not retried)
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
