"""Running jobs on a worker pool: plan chunks, dispatch them, assemble outputs.

Each job's chunks go to the worker expected to finish them first, at most two in flight
per worker; a chunk lost with its worker is sent again. A job whose input turns out bad
fails alone: the other jobs go on.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from fractions import Fraction
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from facefleet.errors import FacefleetError, one_line
from facefleet.jobs.assembly import MAX_STREAMED, StreamedAssembly, streamed_assembly
from facefleet.jobs.spec import ChunkResult, ChunkTask, JobSpec
from facefleet.media.assemble import assemble, output_format
from facefleet.media.encode import output_pix_fmt
from facefleet.media.files import publish
from facefleet.media.storage import output_file
from facefleet.media.image import check_image
from facefleet.media.plan import FrameRange, auto_chunk_frames, keyframe_at_or_before, plan_ranges
from facefleet.media.probe import IMAGE_EXTENSIONS, VideoInfo, is_image, probe_video
from facefleet.pipeline.processor import pipeline_context
from facefleet.report.faces import merge_face_tables

POLL_S = 0.25
WORKDIR_PREFIX = ".facefleet-"
STALL_TIMEOUT_ENV = "FACEFLEET_STALL_TIMEOUT_S"  # default stall timeout of runners in this process (seconds; 0: none)


def default_stall_timeout() -> float | None:
    """Seconds without progress after which a chunk is given up as stalled: the
    environment's FACEFLEET_STALL_TIMEOUT_S (0 or less: never), else
    cluster.dispatch.STALL_TIMEOUT_S."""
    from facefleet.cluster.dispatch import STALL_TIMEOUT_S

    value = os.environ.get(STALL_TIMEOUT_ENV, "").strip()
    if not value:
        return STALL_TIMEOUT_S
    seconds = float(value)
    return seconds if seconds > 0 else None


def worker_name(pool, worker: int) -> str:
    """'worker 1 (node n1, GPU GPU-abc)', as far as the pool knows it."""
    info = getattr(pool, "infos", {}).get(worker)
    if info is None:
        return f"worker {worker}"
    gpu = f", GPU {info.gpu_uuid}" if info.gpu_uuid else ""
    return f"worker {worker} (node {info.node}{gpu})"


def _print_worker_out(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


@dataclass
class JobOutcome:
    job_id: str
    input_uri: str
    output_uri: str
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    providers: tuple[str, ...] = ()
    error: str | None = None
    models: dict[str, str] = field(default_factory=dict)  # model -> manifest | lock | trusted
    kept_frames: int = 0  # frames of chunks done by an earlier run (a resume), not in `seconds`

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def fps(self) -> float:
        """Frames this run processed per second (a resumed job's kept chunks left out)."""
        return (self.frames - self.kept_frames) / self.seconds if self.seconds > 0 else 0.0


class JobProgress(Protocol):
    def started(self, job_id: str, input_uri: str, total_frames: int, done_before: int = 0) -> None: ...
    def advanced(self, job_id: str, frames_done: int) -> None: ...
    def ended(self, outcome: JobOutcome) -> None: ...


class NoProgress:
    def started(self, job_id: str, input_uri: str, total_frames: int, done_before: int = 0) -> None:
        pass

    def advanced(self, job_id: str, frames_done: int) -> None:
        pass

    def ended(self, outcome: JobOutcome) -> None:
        pass


@dataclass
class PlannedJob:
    spec: JobSpec
    info: VideoInfo | None  # None for an image
    tasks: list[ChunkTask]
    workdir: Path
    results: dict[int, ChunkResult] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    error: str | None = None
    started: float | None = None
    priority: int = 0  # higher first when jobs share the workers (JobRunner with feed)
    kept: set[int] = field(default_factory=set)  # chunks done by an earlier run, in `results` from the start
    assembly: StreamedAssembly | None = None  # the output assembled while the chunks run

    @property
    def total_frames(self) -> int:
        return sum(t.frames for t in self.tasks)

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.tasks)

    @property
    def kept_frames(self) -> int:
        """Frames of the chunks an earlier run did (a resume)."""
        return sum(r.frames for i, r in self.results.items() if i in self.kept)

    @property
    def simulated(self) -> bool:
        return bool(self.tasks) and self.tasks[0].kind == "simulated"


SIMULATED = "simulated://"


def simulated_uri(frames: int, ms_per_frame: float, failing: tuple[int, ...] = (), **params: float) -> str:
    """An input that is no file: FRAMES frames costing MS milliseconds each (sleeping),
    chunks that fail (by index: always, or their first `fail_tries=N` sends), and further
    simulated costs passed to the worker as `ChunkTask.simulate_params` (e.g. decode_ms=,
    encode_ms=).

    For scheduling tests and benches on machines without GPUs; nothing is written, and
    its figures are simulated.
    """
    fail = f"&fail={'+'.join(map(str, failing))}" if failing else ""
    extra = "".join(f"&{k}={v}" for k, v in sorted(params.items()))
    return f"{SIMULATED}{frames}?ms={ms_per_frame}{fail}{extra}"


def plan_simulated(spec: JobSpec, workdir: Path, slots: int, ranges: list[FrameRange] | None = None) -> PlannedJob:
    head, _, query = spec.input_uri[len(SIMULATED):].partition("?")
    params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    frames, ms = int(head), float(params.get("ms", 10))
    failing = tuple(int(i) for i in params.get("fail", "").split("+") if i)
    extra = tuple(sorted((k, float(v)) for k, v in params.items() if k not in ("ms", "fail")))
    chunk_frames = spec.chunk_frames or auto_chunk_frames(frames, slots)
    taper = 0 if spec.chunk_frames else slots
    tasks = [
        ChunkTask(
            job_id=spec.job_id, index=i, kind="simulated", input_uri=spec.input_uri, segment_uri="",
            pipeline=spec.pipeline, encode=spec.encode, start=r.start, frames=r.frames, simulate_ms=ms,
            simulate_failures=failing, simulate_params=extra,
        )
        for i, r in enumerate(ranges or plan_ranges(frames, (0,), chunk_frames, taper_slots=taper))
    ]
    return PlannedJob(spec, None, tasks, workdir)


def plan_job(spec: JobSpec, slots: int = 1, workdir: Path | None = None, ranges: list[FrameRange] | None = None) -> PlannedJob:
    """Probe the input and cut it into chunk tasks (raises FacefleetError for bad input).

    Segments go to `workdir` (default: a hidden directory beside the output); `ranges`
    gives the chunks' frame ranges (a plan recorded earlier) instead of planning them.
    """
    output = Path(spec.output_uri)
    workdir = workdir or output.parent / f"{WORKDIR_PREFIX}{spec.job_id}"
    if spec.input_uri.startswith(SIMULATED):
        return plan_simulated(spec, workdir, slots, ranges)
    video_out = spec.pipeline.writes_video
    if is_image(spec.input_uri):
        check_image(spec.input_uri)  # missing, empty or not an image: refuse it here, not in a worker
        if video_out and output.suffix.lower() not in IMAGE_EXTENSIONS:
            raise FacefleetError(f"{output}: an image input needs an image output name (.jpg, .png, .webp)")
        task = ChunkTask(
            job_id=spec.job_id,
            index=0,
            kind="image",
            input_uri=spec.input_uri,
            segment_uri=str(workdir / f"image{output.suffix.lower()}") if video_out else "",
            pipeline=spec.pipeline,
            encode=spec.encode,
            table_uri=str(workdir / "faces-00000.parquet") if spec.pipeline.writes_table else "",
        )
        check_table_output(spec)
        return PlannedJob(spec, None, [task], workdir)
    info = probe_video(spec.input_uri)  # first: a bad input is the reason to give, not its output name
    if video_out:
        output_format(output)  # refuse an unknown container before any work
    check_table_output(spec)
    return PlannedJob(spec, info, video_tasks(spec, info, workdir, slots, ranges), workdir)


def table_outputs(spec: JobSpec) -> tuple[Path, Path]:
    """Where the analyze step's faces and tracks tables go.

    Analyze alone: OUTPUT is the faces table (NAME.parquet) and the tracks go beside it
    (NAME.tracks.parquet). With a video step: NAME.faces.parquet and NAME.tracks.parquet
    beside the video.
    """
    output = Path(spec.output_uri)
    stem = output.with_suffix("")
    if spec.pipeline.writes_video:
        return stem.with_name(stem.name + ".faces.parquet"), stem.with_name(stem.name + ".tracks.parquet")
    return output, stem.with_name(stem.name + ".tracks.parquet")


def check_table_output(spec: JobSpec) -> None:
    if spec.pipeline.writes_table and not spec.pipeline.writes_video and Path(spec.output_uri).suffix != ".parquet":
        raise FacefleetError(f"{spec.output_uri}: the analyze pipeline writes a table: name the output NAME.parquet")


def video_tasks(
    spec: JobSpec, info: VideoInfo, workdir: Path, slots: int, ranges: list[FrameRange] | None = None
) -> list[ChunkTask]:
    """Cut a probed video into chunk tasks; `slots` is how many chunks can run at once."""
    if ranges is None:
        chunk_frames = spec.chunk_frames or auto_chunk_frames(info.frames, slots)
        taper = 0 if spec.chunk_frames else slots  # automatic chunks shrink toward the end
        ranges = plan_ranges(info.frames, info.keyframes, chunk_frames, taper_slots=taper)
    pix_fmt = output_pix_fmt(info.pix_fmt, info.width, info.height, spec.encode.codec)
    context = pipeline_context(spec.pipeline)
    tasks = []
    for index, frame_range in enumerate(ranges):
        decode_start = max(0, frame_range.start - context)
        decode_end = min(info.frames, frame_range.end + context)
        key = keyframe_at_or_before(info.keyframes, decode_start)
        tasks.append(
            ChunkTask(
                job_id=spec.job_id,
                index=index,
                kind="video",
                input_uri=spec.input_uri,
                segment_uri=str(workdir / f"chunk-{index:05d}.mp4") if spec.pipeline.writes_video else "",
                table_uri=str(workdir / f"faces-{index:05d}.parquet") if spec.pipeline.writes_table else "",
                pipeline=spec.pipeline,
                encode=spec.encode,
                start=frame_range.start,
                frames=frame_range.frames,
                first_pts=info.frame_pts[frame_range.start],
                last_pts=info.frame_pts[frame_range.end - 1],
                context_before=frame_range.start - decode_start,
                decode_first_pts=info.frame_pts[decode_start],
                decode_last_pts=info.frame_pts[decode_end - 1],
                seek_pts=info.frame_pts[key],
                width=info.width,
                height=info.height,
                time_base=info.time_base,
                rate=info.rate,
                pix_fmt=pix_fmt,
                rotation=info.rotation,
            )
        )
    return tasks


def finish_job(job: PlannedJob) -> None:
    """Put the finished outputs in place: the video (segments assembled) or image, and the
    analyze tables."""
    if job.simulated:
        return
    output = Path(job.spec.output_uri)
    pipeline = job.spec.pipeline
    tables: tuple[Path, ...] = ()
    if pipeline.writes_table:
        time_base = job.info.time_base if job.info else Fraction(1)
        tables = table_outputs(job.spec)
        merge_face_tables([Path(t.table_uri) for t in job.tasks], time_base, *tables)
    if not pipeline.writes_video:
        return
    try:
        if job.assembly is not None:
            job.assembly.finish()
        elif job.info is None:
            publish(Path(job.tasks[0].segment_uri), output)
        else:  # a local file appears whole (renamed into place); object storage gets one upload
            with output_file(job.spec.output_uri, scratch=job.workdir) as tmp:
                assemble(job.info, [Path(t.segment_uri) for t in job.tasks], tmp)
    except BaseException:
        for table in tables:  # all of a job's outputs, or none
            table.unlink(missing_ok=True)
        raise


def start_assembly(job: PlannedJob) -> StreamedAssembly | None:
    """A video job's output assembled while it runs, where it can be (facefleet.jobs.assembly);
    the segments of chunks done before (a resume) are ready at once."""
    pipeline = job.spec.pipeline
    if not pipeline.writes_video:
        return None
    segments = [Path(t.segment_uri) for t in job.tasks]
    assembly = streamed_assembly(job.info, segments, job.spec.output_uri, job.workdir, pipeline.writes_table)
    if assembly is not None:
        for index in job.results:
            assembly.ready(index)
    return assembly


def stop_assembly(job: PlannedJob, reason: str) -> None:
    """Whatever of the job's streamed assembly is running stops; nothing more is published."""
    if job.assembly is not None:
        job.assembly.abort(reason)
        job.assembly = None


def outcome_of(job: PlannedJob) -> JobOutcome:
    results = job.results.values()
    providers = sorted({p for r in results for p in r.providers.values()})
    return JobOutcome(
        job_id=job.spec.job_id,
        input_uri=job.spec.input_uri,
        output_uri=job.spec.output_uri,
        frames=sum(r.frames for r in results),
        faces=sum(r.faces for r in results),
        seconds=time.monotonic() - job.started if job.started else 0.0,
        providers=tuple(providers),
        error=job.error,
        models={name: how for r in results for name, how in r.models.items()},
        kept_frames=job.kept_frames,
    )


def plan_jobs(specs: list[JobSpec]) -> list[PlannedJob | JobOutcome]:
    """Plan every job; a job whose input or output is refused becomes a failed outcome."""
    planned: list[PlannedJob | JobOutcome] = []
    for spec in specs:
        try:
            planned.append(plan_job(spec))
        except FacefleetError as exc:
            planned.append(JobOutcome(spec.job_id, spec.input_uri, spec.output_uri, error=str(exc)))
    return planned


def run_jobs(specs: list[JobSpec], pool, progress: JobProgress | None = None, **options) -> list[JobOutcome]:
    """Plan and run every job on the pool's workers; one outcome per spec, in order."""
    return run_planned(plan_jobs(specs), pool, progress, **options)


def run_planned(planned: list[PlannedJob | JobOutcome], pool, progress: JobProgress | None = None, **options) -> list[JobOutcome]:
    """Run planned jobs on the pool's workers until all ended; failed plans pass through
    as they are. Options: those of JobRunner."""
    results: list[ChunkResult] = []
    on_chunk = options.pop("on_chunk", None)

    def kept(job, task, result):
        results.append(result)
        if on_chunk is not None:
            on_chunk(job, task, result)

    runner = JobRunner(pool, progress, on_chunk=kept, **options)
    order = [item.job_id if isinstance(item, JobOutcome) else item.spec.job_id for item in planned]
    try:
        runner.add(planned)
        while runner.busy:
            runner.step()
    finally:
        runner.close()
    run_planned.last_stats = runner.dispatcher.stats  # for benches and tests
    run_planned.last_results = results
    return [runner.outcomes[job_id] for job_id in order]


def attempt_error(exc: BaseException) -> str:
    """A failed send's error as the dispatcher words it: the worker's own message."""
    import ray

    if isinstance(exc, FacefleetError):
        return str(exc)
    if isinstance(exc, ray.exceptions.RayActorError):
        return "its worker died"
    return one_line(getattr(exc, "cause", None) or exc)


def _called_off(exc: BaseException) -> bool:
    from facefleet.cluster.chunk import ChunkStopped

    return isinstance(getattr(exc, "cause", None) or exc, ChunkStopped)


class _WatchedPool:
    """The pool as the runner's dispatcher sees it: each send gets its number
    (`ChunkTask.attempt`) and is told to `on_send(task, worker, attempt)`; each send that
    comes back is told to `on_return(task, worker, exc)` (exc None: a result). Anything
    else is the pool's own."""

    def __init__(self, pool, on_send, on_return):
        self._pool = pool
        self._on_send = on_send
        self._on_return = on_return
        self.sends: dict[tuple[str, int], int] = {}  # chunk key -> sends so far
        self.sent: dict = {}  # object ref -> (worker, task), until its result is read

    def __getattr__(self, name: str):
        return getattr(self._pool, name)

    def submit(self, worker: int, task: ChunkTask):
        attempt = self.sends.get(task.key, 0) + 1
        self.sends[task.key] = attempt
        ref = self._pool.submit(worker, replace(task, attempt=attempt))
        self.sent[ref] = (worker, task)
        self._on_send(task, worker, attempt)
        return ref

    def result(self, ref) -> ChunkResult:
        worker, task = self.sent.pop(ref, (None, None))
        try:
            result = self._pool.result(ref)
        except Exception as exc:
            if task is not None:
                self._on_return(task, worker, exc)
            raise
        if task is not None:
            self._on_return(task, worker, None)
        return result

    def forget(self, job_id: str) -> None:
        for key in [key for key in self.sends if key[0] == job_id]:
            del self.sends[key]
        for ref in [ref for ref, (_, task) in self.sent.items() if task.job_id == job_id]:
            del self.sent[ref]


class JobRunner:
    """Jobs on a worker pool, one step at a time: `add` jobs whenever, `step` until not `busy`.

    `monitor` (cluster.monitor.GpuMonitor) steers new chunks away from GPUs near their
    memory limit or throttling; `autoscaler` (cluster.scaling.Autoscaler) is stepped with
    the backlog and the GPUs' load, and its request released at the end. Workers idle
    for `idle_retire_s` while nothing is left to send are retired (their nodes can go).
    With `feed` set, chunks reach the dispatcher at most `feed` at a time, higher priority
    first and jobs of equal priority taking turns, so a small job queued behind a large
    one starts within a few chunks.

    Hooks, each called with the job's PlannedJob first:
    - `on_dispatch(job, task, worker, attempt)`: a chunk was sent to a worker (attempt 1
      first; a retry or a tail copy counts too);
    - `on_failure(job, task, worker, error, final, stopped)`: a send came back without a
      result: `final` when the chunk will not be sent again (its job fails), `stopped`
      when it was called off (another copy finished first, or its job was stopped);
    - `on_chunk(job, task, result)`: a chunk is done (its first result);
    - `on_end(job, outcome)`: the job ended, before its work directory goes.
    And `on_worker_out(worker, line)`: a worker was taken out of rotation (its chunks kept
    failing); `line` names it and says why (default: printed to stderr as a warning).

    `stall_timeout_s`: a chunk whose progress has not advanced for that long is given up
    as stalled, its worker restarted, and the chunk retried (None: never; default:
    `default_stall_timeout()`, 300 s unless FACEFLEET_STALL_TIMEOUT_S says otherwise).
    Once a job ended and its hooks ran, the runner forgets it: its chunks, results and the
    dispatcher's bookkeeping go (the last only once no copy of its chunks is out). Its
    outcome stays in `outcomes` only with `keep_outcomes` (run_planned reads them there).
    """

    def __init__(
        self,
        pool,
        progress: JobProgress | None = None,
        duplicate_tail: bool = True,
        monitor=None,
        autoscaler=None,
        idle_retire_s: float | None = None,
        on_chunk=None,
        on_end=None,
        feed: int | None = None,
        replan: bool = True,
        on_dispatch=None,
        on_failure=None,
        keep_outcomes: bool = True,
        stall_timeout_s: float | None | str = "default",
        on_worker_out=None,
    ):
        from facefleet.cluster.dispatch import Dispatcher

        self.pool = pool
        self.progress = progress or NoProgress()
        self.monitor = monitor
        self.autoscaler = autoscaler
        self.on_chunk = on_chunk or (lambda job, task, result: None)
        self.on_end = on_end or (lambda job, outcome: None)
        self.on_dispatch = on_dispatch or (lambda job, task, worker, attempt: None)
        self.on_failure = on_failure or (lambda job, task, worker, error, final, stopped: None)
        self.feed = feed
        self.replan = replan  # chunks sized to this pool (off when the plan is already recorded)
        self.keep_outcomes = keep_outcomes
        self._returns: list[tuple[ChunkTask, int, BaseException | None]] = []  # sends back in this step
        self.watched = _WatchedPool(pool, self._sent, lambda task, worker, exc: self._returns.append((task, worker, exc)))
        self.on_worker_out = on_worker_out or (lambda worker, line: _print_worker_out(line))
        self.workers_out: list[dict] = []  # workers taken out of rotation: worker, node, gpu_uuid, reason, time
        if stall_timeout_s == "default":
            stall_timeout_s = default_stall_timeout()
        self.dispatcher = Dispatcher(
            self.watched, duplicate_tail=duplicate_tail, monitor=monitor, idle_retire_s=idle_retire_s,
            stall_timeout_s=stall_timeout_s, on_worker_out=self._worker_out,
        )
        self.outcomes: dict[str, JobOutcome] = {}
        self.jobs: dict[str, PlannedJob] = {}  # jobs not ended
        self.waiting: dict[str, deque[ChunkTask]] = {}  # chunks not yet given to the dispatcher (with feed)
        # ended jobs whose copies are still out: kept until those are back (late results are
        # told apart from new ones, a called-off copy is told to on_failure, its work dir goes again)
        self.ended: dict[str, PlannedJob] = {}
        self._closed = False
        self._turn = 0
        self._last_poll = 0.0
        self._no_worker_since: float | None = None

    @property
    def slots(self) -> int:
        return self.pool.plan.workers * self.pool.plan.chunks_per_worker

    @property
    def busy(self) -> bool:
        return self.dispatcher.busy or any(self.waiting.values()) or bool(self.jobs)

    def add(self, planned: list[PlannedJob | JobOutcome]) -> None:
        now = time.monotonic()
        for item in planned:
            if isinstance(item, JobOutcome):
                if self.keep_outcomes:
                    self.outcomes[item.job_id] = item
                self.progress.ended(item)
                continue
            job_id = item.spec.job_id
            if job_id in self.jobs:  # added again while running: its old run's assembly stops
                stop_assembly(self.jobs[job_id], "its job was started again")
            self.jobs[job_id] = item
            self.ended.pop(job_id, None)  # run again (a retry): its bookkeeping was reset by the caller
            if self.replan and not item.spec.chunk_frames:  # chunks sized to this pool
                if item.info is not None:
                    item.tasks = video_tasks(item.spec, item.info, item.workdir, self.slots)
                elif item.simulated:
                    item.tasks = plan_simulated(item.spec, item.workdir, self.slots).tasks
            self.progress.started(job_id, item.spec.input_uri, item.total_frames, item.kept_frames)
            if not item.simulated:
                item.workdir.mkdir(parents=True, exist_ok=True)
                streaming = sum(1 for job in self.jobs.values() if job.assembly is not None)
                item.assembly = start_assembly(item) if streaming < MAX_STREAMED else None
            item.started = now
            todo = [t for t in item.tasks if t.index not in item.results]  # results known: resumed
            if self.feed is None:
                self.dispatcher.add(todo)
            else:
                self.waiting[job_id] = deque(todo)
            if item.done:
                self._end(item)

    def cancel(self, job_id: str, reason: str) -> bool:
        """Stop a job: nothing more is sent, chunks in flight are called off; False if it
        already ended."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        job.error = job.error or reason
        self.waiting.pop(job_id, None)
        self.dispatcher.drop_job(job_id)
        return True

    def _worker_out(self, worker: int, reason: str) -> None:
        info = getattr(self.pool, "infos", {}).get(worker)
        self.workers_out.append({
            "worker": worker, "node": info.node if info else None, "gpu_uuid": info.gpu_uuid if info else None,
            "reason": reason, "time": time.time(),
        })
        self.on_worker_out(worker, f"{worker_name(self.pool, worker)} taken out of rotation: {reason}")

    def _sent(self, task: ChunkTask, worker: int, attempt: int) -> None:
        job = self.jobs.get(task.job_id)
        if job is not None:
            self.on_dispatch(job, task, worker, attempt)

    def _tell_failures(self, events: list) -> None:
        """The sends of this step that came back without a result, or with one that was
        dropped (a copy that lost, or its job had ended), to `on_failure`."""
        from facefleet.cluster.dispatch import ChunkDone, ChunkFailed

        returns, self._returns = self._returns, []
        final = {event.task.key for event in events if isinstance(event, ChunkFailed)}
        taken = {(event.task.key, event.result.worker_id) for event in events if isinstance(event, ChunkDone)}
        for task, worker, exc in returns:
            job = self.jobs.get(task.job_id) or self.ended.get(task.job_id)
            if job is None or (exc is None and (task.key, worker) in taken):
                continue
            if exc is None or _called_off(exc):
                ended = job.error is not None or task.job_id in self.ended
                why = "called off: " + ("its job ended" if ended else "another copy finished first")
                self.on_failure(job, task, worker, why, False, True)
            else:
                error = self.dispatcher.stalled.pop((task.key, worker), None) or attempt_error(exc)
                self.on_failure(job, task, worker, error, task.key in final, False)

    def step(self) -> None:
        from facefleet.cluster.dispatch import ChunkDone

        self._top_up()
        events = self.dispatcher.step(POLL_S)
        self._tell_failures(events)
        for event in events:
            job = self.jobs.get(event.task.job_id)
            if job is None:
                continue  # ended already (a late copy)
            if isinstance(event, ChunkDone):
                if event.task.index not in job.results:
                    job.results[event.task.index] = event.result
                    if job.assembly is not None:
                        job.assembly.ready(event.task.index)
                    self.on_chunk(job, event.task, event.result)
            else:
                job.error = job.error or event.error
                self.waiting.pop(job.spec.job_id, None)
                self.dispatcher.drop_job(job.spec.job_id)
        self._check_workers_left()
        for job in list(self.jobs.values()):
            if job.done or (job.error is not None and self.dispatcher.in_flight(job.spec.job_id) == 0):
                self._end(job)
        now = time.monotonic()
        if now - self._last_poll >= 2 * POLL_S:
            self._last_poll = now
            _report_progress(self.jobs, self.dispatcher.refresh_progress(), self.progress)
            self.dispatcher.rebalance()
            if self.autoscaler is not None:
                _step_autoscaler(self.autoscaler, self.dispatcher, self.monitor)
        if not self.dispatcher.busy and not any(self.waiting.values()):
            for job in list(self.jobs.values()):  # no worker was left to run it
                job.error = job.error or "not finished: no worker could run its chunks"
                self._end(job)
        self._forget_ended()

    def _check_workers_left(self) -> None:
        """With no live worker left (all died past their restarts, or retired), the jobs
        fail instead of waiting for ever; an elastic pool (GPUs may join) waits up to the
        stall timeout first."""
        if self.dispatcher.scheduler.alive or not self.jobs:
            self._no_worker_since = None
            return
        now = time.monotonic()
        self._no_worker_since = self._no_worker_since or now
        elastic = getattr(getattr(self.pool, "plan", None), "elastic", False)
        if elastic and now - self._no_worker_since < (self.dispatcher.stall_timeout_s or 300.0):
            return
        for job_id, job in self.jobs.items():
            job.error = job.error or "not finished: no worker is left to run its chunks (they died and could not restart)"
            self.waiting.pop(job_id, None)
            self.dispatcher.drop_job(job_id)

    def _top_up(self) -> None:
        """With `feed`: give the dispatcher chunks up to `feed` waiting, by priority, then
        one job at a time in turn."""
        if self.feed is None:
            return
        while len(self.dispatcher.pending) < self.feed:
            ready = [job_id for job_id, queue in self.waiting.items() if queue]
            if not ready:
                return
            top = max(self.jobs[j].priority for j in ready)
            ready = [j for j in ready if self.jobs[j].priority == top]
            self._turn = (self._turn + 1) % len(ready)
            self.dispatcher.add([self.waiting[ready[self._turn]].popleft()])

    def _end(self, job: PlannedJob) -> None:
        job_id = job.spec.job_id
        if job.error is None:
            try:
                finish_job(job)
            except FacefleetError as exc:
                job.error = str(exc)
            except Exception as exc:  # a bug: this job fails, the others go on
                job.error = f"internal error while assembling the output: {one_line(exc)}"
        outcome = outcome_of(job)
        if self.keep_outcomes:
            self.outcomes[job_id] = outcome
        self.waiting.pop(job_id, None)
        try:
            self.on_end(job, outcome)
        finally:
            stop_assembly(job, "its job ended")
            shutil.rmtree(job.workdir, ignore_errors=True)
            # forget the job: its chunks and results; nothing of it is sent any more
            self.jobs.pop(job_id, None)
            self.dispatcher.pending = deque(t for t in self.dispatcher.pending if t.job_id != job_id)
            self.ended[job_id] = job
        self.progress.ended(outcome)

    def _forget_ended(self) -> None:
        """The dispatcher's bookkeeping of ended jobs goes once no copy of their chunks is
        out (until then it tells their late results apart from new ones), and their work
        directory again (a late copy may have written to it)."""
        if not self.ended:
            return
        out = {flight.task.job_id for flight in self.dispatcher.flights.values()}
        for job_id in [j for j in self.ended if j not in out]:
            job = self.ended.pop(job_id)
            if job_id in self.jobs:
                continue  # added again meanwhile: its bookkeeping and work dir are the new run's
            if not job.simulated:
                shutil.rmtree(job.workdir, ignore_errors=True)
            self.dispatcher.forget(job_id)
            self.watched.forget(job_id)

    def held(self) -> dict[str, int]:
        """How much per-job state the runner holds now (for tests and leak hunts)."""
        return {
            "jobs": len(self.jobs),
            "outcomes": len(self.outcomes),
            "waiting": len(self.waiting),
            "ended": len(self.ended),
            "finished_keys": len(self.dispatcher.finished),
            "attempt_keys": len(self.dispatcher.attempts),
            "failed_on_keys": len(self.dispatcher.failed_on),
            "stall_keys": len(self.dispatcher.stalled),
            "sends": len(self.watched.sends),
            "sent": len(self.watched.sent),
            "flights": len(self.dispatcher.flights),
        }

    def close(self, keep_unfinished: bool = False) -> None:
        """Release the autoscaler's request, let called-off chunks stop, tidy up: work
        directories of unfinished jobs go too, unless `keep_unfinished` (resumable).
        Once: a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.autoscaler is not None:
            self.autoscaler.release(time.monotonic(), "the jobs ended")
        self.dispatcher.wait_for_stragglers(timeout=5.0)
        for job in self.ended.values():  # a losing copy may have written late
            if not job.simulated:
                shutil.rmtree(job.workdir, ignore_errors=True)
        for job in self.jobs.values():
            stop_assembly(job, "the run stopped")
            if not job.simulated and not keep_unfinished:
                shutil.rmtree(job.workdir, ignore_errors=True)


def _step_autoscaler(autoscaler, dispatcher, monitor) -> None:
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    fps = dispatcher.fps()
    autoscaler.step(
        time.monotonic(),
        monitor.mean_utilization() if monitor is not None else None,
        dispatcher.backlog_frames,
        fps / gpus if fps and gpus else None,
        gpus,
    )


def _report_progress(jobs: dict[str, PlannedJob], current: dict, progress: JobProgress) -> None:
    partial: dict[str, int] = {}
    for (job_id, index), frames in current.items():
        if job_id in jobs and index not in jobs[job_id].results:
            partial[job_id] = partial.get(job_id, 0) + frames
    for job_id, job in jobs.items():
        if job.started is None:
            continue
        done = sum(r.frames for r in job.results.values()) + partial.get(job_id, 0)
        progress.advanced(job_id, min(done, job.total_frames))
