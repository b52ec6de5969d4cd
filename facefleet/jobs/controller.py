"""The controller: the one writer of the job store, running jobs on the worker pool.

Requests (submit, cancel, retry) arrive in the state dir's inbox; each is answered in
the store. A job's inputs run as units on a JobRunner; every chunk done is recorded
with its segment's checksum before anything else depends on it, so a controller killed
at any moment resumes from the store: chunks not done run again, done ones are checked
(segment present, same checksum) and kept. Segments live in the state dir
(`work/<job>-<input>/`) until the job's output is in place.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from facefleet.cluster.chunk import chunk_checksum
from facefleet.errors import FacefleetError, one_line
from facefleet.jobs.runner import JobOutcome, JobRunner, PlannedJob, plan_job
from facefleet.jobs.sample_keeper import SampleKeeper
from facefleet.jobs.spec import ChunkResult, JobSpec
from facefleet.jobs.store import Inbox, JobStore, StoreError
from facefleet.jobs.submit import job_settings
from facefleet.media.plan import FrameRange
from facefleet.media.storage import is_remote

IDLE_SLEEP_S = 0.2
LIVE_EVERY_S = 1.0


def unit_id(job_id: str, index: int) -> str:
    return f"{job_id}-{index}"


def split_unit(unit: str) -> tuple[str, int]:
    job_id, _, index = unit.rpartition("-")
    return job_id, int(index)


class StoreBusy(FacefleetError):
    """Another controller (a `serve`, or a `run` in progress) holds the state dir."""


class ControllerLock:
    """One controller per state dir: an exclusive lock on state_dir/controller.lock."""

    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "controller.lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise StoreBusy(f"another controller is running on {state_dir} (lock {self.path})") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        self._file.close()


class Controller:
    def __init__(
        self, state_dir: Path, pool, monitor=None, reporters=None, metrics=None, price_per_gpu_hour=None, log=print,
        stall_timeout_s: float | None | str = "default", progress=None, autoscaler=None, idle_retire_s: float | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.store = JobStore(self.state_dir)
        self.inbox = Inbox(self.state_dir)
        self.pool = pool
        self.reporters = reporters or {}
        self.metrics = metrics
        self.price = price_per_gpu_hour
        self.log = log
        self.runner = JobRunner(
            pool,
            progress,  # JobProgress: `facefleet run`'s bars (units are `<job>-<input>`)
            monitor=monitor,
            autoscaler=autoscaler,
            idle_retire_s=idle_retire_s,
            on_chunk=self._chunk_done,
            on_end=self._unit_ended,
            on_dispatch=self._chunk_sent,
            on_failure=self._chunk_failed,
            feed=max(1, pool.plan.workers * pool.plan.chunks_per_worker),
            replan=False,
            keep_outcomes=False,  # the store has them: a long-running serve must not grow
            stall_timeout_s=stall_timeout_s,  # "default": JobRunner's (300 s, or FACEFLEET_STALL_TIMEOUT_S)
            on_worker_out=self._worker_out,
        )
        self.units: dict[str, set[str]] = {}  # job id -> its units still running
        # ended units whose called-off chunks were still running: their work dir goes once they return
        self.stragglers: dict[str, tuple[Path, list]] = {}
        self.rows: dict[str, list[dict]] = {}  # job id -> chunk rows for its report
        self._last_live = 0.0
        # the reporters' samples into the state dir's sample log, in a thread beside this loop
        self.samples = SampleKeeper(self.state_dir, self.reporters, on_samples=metrics.update_gpus if metrics else None)
        self.samples.start()

    # ---- the loop ----------------------------------------------------------------

    def resume(self) -> int:
        """Pick up every unfinished job in the store; returns how many."""
        unfinished = self.store.recover()
        for job_id in unfinished:
            self._start(job_id)
        return len(unfinished)

    def step(self) -> None:
        for request in self.inbox.take():
            self._handle(request)
            self.inbox.done(request)
        if self.runner.busy:
            self.runner.step()
        else:
            time.sleep(IDLE_SLEEP_S)
        self._sweep_stragglers()
        now = time.monotonic()
        if now - self._last_live >= LIVE_EVERY_S:
            self._last_live = now
            self._publish_live()

    @property
    def idle(self) -> bool:
        return not self.runner.busy and not self.inbox.pending() and not self.store.jobs("queued")

    def serve(self, until_idle: bool = False, should_stop=lambda: False) -> None:
        try:
            while not should_stop():
                self.step()
                if until_idle and self.idle:
                    break
        finally:
            self.runner.close(keep_unfinished=True)
            self.samples.stop()
            self._publish_live()

    def close(self) -> None:
        """End the controller; also when serve() never ran (resume() raised partway):
        jobs it had started then stop their streamed assemblies too (the runner closes once)."""
        self.runner.close(keep_unfinished=True)
        self.samples.stop()
        self.store.close()

    # ---- requests ----------------------------------------------------------------

    def _handle(self, request) -> None:
        kind, payload = request.kind, request.payload
        if self.store.answer_of(request.request_id) is not None:
            return  # answered before a crash that came before the file was removed
        try:
            if kind == "submit":
                job_id = payload["job_id"]
                job_settings(job_id, payload)  # settings this controller cannot use are refused, not queued
                if self.store.job(job_id) is None:
                    self.store.add_job(job_id, payload["name"], payload, int(payload["priority"]), [tuple(p) for p in payload["inputs"]])
                self.store.answer(request.request_id, kind, job_id, True, f"queued job {job_id}")
                self._start(job_id)
            elif kind == "cancel":
                ok, message = self._cancel(payload["job"])
                self.store.answer(request.request_id, kind, payload["job"], ok, message)
            elif kind == "retry":
                job = self._job(payload["job"])
                count = self.store.retry(job.job_id)
                self.store.answer(request.request_id, kind, job.job_id, True, f"job {job.job_id} queued again: {count} chunk(s) to run")
                self._start(job.job_id)
            else:
                self.store.answer(request.request_id, kind, None, False, f"unknown request {kind!r}")
        except (FacefleetError, KeyError, ValueError) as exc:
            self.store.answer(request.request_id, kind, payload.get("job"), False, one_line(exc))

    def _job(self, ref: str):
        job = self.store.job(ref)
        if job is None:
            raise FacefleetError(f"no job {ref}")
        return job

    def _cancel(self, ref: str) -> tuple[bool, str]:
        job = self._job(ref)
        if job.state in ("done", "failed", "cancelled"):
            return False, f"job {job.job_id} is already {job.state}"
        running = self.units.get(job.job_id, set())
        if not running:
            self.store.set_job_state(job.job_id, "cancelled", "cancelled")
            return True, f"job {job.job_id} cancelled"
        self.store.event(job.job_id, "cancel", "cancel requested: stopping its chunks")
        for unit in list(running):
            self.runner.cancel(unit, "cancelled")
        return True, f"job {job.job_id} cancelled: {len(running)} input(s) stopping"

    # ---- starting a job ------------------------------------------------------------

    def _start(self, job_id: str) -> None:
        job = self.store.job(job_id)
        try:
            spec, encode, chunk_frames = job_settings(job_id, job.spec)
        except FacefleetError as exc:  # stored by another version, or changed: the job fails, the others run
            self.log(f"error: {exc}")
            for row in self.store.inputs(job_id):
                if row.state != "done":
                    self.store.set_input_state(job_id, row.index, "failed", str(exc))
            self._finish_job(job_id)
            return
        slots = max(1, self.pool.plan.workers * self.pool.plan.chunks_per_worker)
        planned: list[PlannedJob | JobOutcome] = []
        running: set[str] = set()
        for row in self.store.inputs(job_id):
            if row.state == "done":
                continue
            unit = unit_id(job_id, row.index)
            job_spec = JobSpec(unit, row.input_uri, row.output_uri, pipeline=spec, encode=encode, chunk_frames=chunk_frames)
            recorded = self.store.chunks(job_id, row.index)
            ranges = [FrameRange(c.start, c.start + c.frames) for c in recorded] or None
            try:
                plan = plan_job(job_spec, slots, workdir=self._workdir(job.spec, unit, row.output_uri), ranges=ranges)
            except FacefleetError as exc:
                self.store.set_input_state(job_id, row.index, "failed", str(exc))
                # not running: the runner never ends a unit that it gets as an outcome
                planned.append(JobOutcome(unit, row.input_uri, row.output_uri, error=str(exc)))
                continue
            plan.priority = job.priority
            self._forget_earlier_run(unit)
            if not recorded:
                self.store.plan_input(job_id, row.index, plan.total_frames, [(t.start, t.frames, t.segment_uri) for t in plan.tasks])
            else:
                self._keep_done(job_id, row.index, plan, recorded)
            self.store.set_input_state(job_id, row.index, "running", frames=plan.total_frames)
            planned.append(plan)
            running.add(unit)
        self.units[job_id] = running
        self.rows.setdefault(job_id, [])
        if job.state == "queued":
            self.store.set_job_state(job_id, "running")
        self.runner.add(planned)
        if not running:
            self._finish_job(job_id)

    def _workdir(self, spec: dict, unit: str, output_uri: str) -> Path | None:
        """Where a unit's segments go: the state dir's work/, or for a job stored with
        work "beside-output" (`facefleet run`'s) and a local output, plan_job's default, a
        hidden directory beside the output (None), as a run without a store keeps them: on
        a cluster every node sees the outputs' shared file system, not the driver's state
        dir. The same place on every start, so a resume finds the segments done before."""
        if spec.get("work") == "beside-output" and not is_remote(output_uri):
            return None
        return self.state_dir / "work" / unit

    def _forget_earlier_run(self, unit: str) -> None:
        """A unit that ran before in this controller (a retry) starts afresh: the runner kept
        its outcome (the new run's chunks would be ignored and it would never end), and its
        dispatcher the chunks it finished or called off (they would never be sent again) and
        their attempts."""
        self.runner.outcomes.pop(unit, None)
        self.stragglers.pop(unit, None)  # its chunks write the same segments again: keep the dir
        dispatcher = self.runner.dispatcher
        dispatcher.finished.difference_update([key for key in dispatcher.finished if key[0] == unit])
        for key in [key for key in dispatcher.attempts if key[0] == unit]:
            del dispatcher.attempts[key]

    def _keep_done(self, job_id: str, input_index: int, plan: PlannedJob, recorded) -> None:
        """Chunks recorded done whose segment is still there, unchanged, are not run again."""
        for chunk, task in zip(recorded, plan.tasks):
            if chunk.state != "done":
                continue
            try:
                intact = chunk_checksum(task) == chunk.checksum  # what the worker computed when it finished
            except FileNotFoundError:
                intact = False
            if not intact:
                self.store.reset_chunk(job_id, input_index, chunk.index, "its segment is missing or changed: running it again")
                continue
            result = ChunkResult(
                job_id=task.job_id, index=task.index, segment_uri=task.segment_uri, frames=task.frames, faces=chunk.faces,
                seconds=chunk.seconds, worker_id=chunk.worker if chunk.worker is not None else -1, providers={},
                checksum=chunk.checksum or "", started=chunk.started or 0.0,
                stage_times={stage: (float(a), float(b)) for stage, (a, b) in chunk.stage_times.items()},
            )
            plan.results[task.index] = result
            plan.kept.add(task.index)
            self._add_row(job_id, task, result, None, chunk.attempts, chunk.ended or time.time())

    # ---- hooks from the runner ------------------------------------------------------

    def _worker_info(self, worker: int | None):
        return self.pool.infos.get(worker) if hasattr(self.pool, "infos") and worker is not None else None

    def _chunk_sent(self, plan: PlannedJob, task, worker: int, attempt: int) -> None:
        """A chunk went to a worker: the store counts the attempt. Called from inside the
        dispatcher's step, so a store that refuses the write (full disk) only costs the record."""
        job_id, index = split_unit(plan.spec.job_id)
        info = self._worker_info(worker)
        try:
            self.store.chunk_started(job_id, index, task.index, worker, info.node if info else "", info.gpu_uuid if info else None)
        except StoreError as exc:
            self.log(f"warning: start of chunk {task.index} of {plan.spec.job_id} (attempt {attempt}) not recorded: {one_line(exc)}")

    def _chunk_failed(self, plan: PlannedJob, task, worker: int, error: str, final: bool, stopped: bool) -> None:
        """A send came back without a result: the store records the attempt's error; the
        chunk waits to run again, or fails for good (`final`)."""
        job_id, index = split_unit(plan.spec.job_id)
        try:
            self.store.chunk_failed(job_id, index, task.index, error, final, worker=worker, stopped=stopped)
        except StoreError as exc:
            self.log(f"warning: failure of chunk {task.index} of {plan.spec.job_id} not recorded: {one_line(exc)}")

    def _worker_out(self, worker: int, line: str) -> None:
        """A worker was taken out of rotation: a line in the log and an event in every job
        running now (the job's report lists it too)."""
        self.log(f"warning: {line}")
        for job_id in list(self.units):
            try:
                self.store.event(job_id, "worker-out", line)
            except StoreError as exc:
                self.log(f"warning: event of job {job_id} not recorded: {one_line(exc)}")

    def _chunk_done(self, plan: PlannedJob, task, result: ChunkResult) -> None:
        job_id, index = split_unit(plan.spec.job_id)
        info = self._worker_info(result.worker_id)
        now = time.time()
        self.store.chunk_done(
            job_id, index, task.index, task.segment_uri, result.checksum, result.seconds, result.worker_id,
            info.node if info else "", info.gpu_uuid if info else None, result.started, now, faces=result.faces,
            stage_times={stage: list(span) for stage, span in result.stage_times.items()},
        )
        row = self.store.chunk(job_id, index, task.index)
        self._add_row(job_id, task, result, info, row.attempts if row else 1, now)
        if self.metrics is not None and info is not None:
            self.metrics.worker_chunk_done(result.worker_id, info.node)

    def _add_row(self, job_id: str, task, result: ChunkResult, info, attempts: int, ended: float) -> None:
        try:
            from facefleet.report.tables import chunk_row

            self.rows.setdefault(job_id, []).append(chunk_row(task, result, info, max(1, attempts), ended))
        except Exception as exc:  # the report is secondary: the chunk is recorded
            self.log(f"warning: chunk row for the report of {job_id}: {one_line(exc)}")

    def _unit_ended(self, plan: PlannedJob, outcome: JobOutcome) -> None:
        job_id, index = split_unit(plan.spec.job_id)
        # A unit cancelled or failed ends as soon as its chunks are called off, while one may
        # still be finishing (the runner counts called-off chunks as done with): its segment
        # would land in the work dir after the runner removed it, and stay until the controller
        # stops. The dir goes again once those chunks have returned.
        refs = [ref for ref, flight in self.runner.dispatcher.flights.items() if flight.task.job_id == plan.spec.job_id]
        if refs and not plan.simulated:
            self.stragglers[plan.spec.job_id] = (plan.workdir, refs)
        if outcome.error == "cancelled":
            self.store.set_input_state(job_id, index, "cancelled", "cancelled")
        elif outcome.error:
            self.store.set_input_state(job_id, index, "failed", outcome.error)
        else:
            self.store.set_input_state(job_id, index, "done")
        self.units.get(job_id, set()).discard(plan.spec.job_id)
        if not self.units.get(job_id):
            self._finish_job(job_id)

    def _sweep_stragglers(self) -> None:
        if not self.stragglers:
            return
        import ray

        for unit, (workdir, refs) in list(self.stragglers.items()):
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            if len(ready) == len(refs):
                shutil.rmtree(workdir, ignore_errors=True)
                del self.stragglers[unit]

    def _finish_job(self, job_id: str) -> None:
        inputs = self.store.inputs(job_id)
        states = {row.state for row in inputs}
        if "cancelled" in states:
            state, error = "cancelled", "cancelled"
        elif "failed" in states:
            state, error = "failed", next(row.error for row in inputs if row.state == "failed")
        else:
            state, error = "done", None
        self.store.set_job_state(job_id, state, error)
        self.units.pop(job_id, None)
        self._write_report(job_id)
        if self.metrics is not None:
            self.metrics.forget_job(job_id)

    def _write_report(self, job_id: str) -> None:
        try:
            from facefleet.report.tables import write_job_data

            job = self.store.job(job_id)
            summary = {
                "job_id": job.job_id, "name": job.name, "state": job.state, "created": job.created,
                "started": job.started, "finished": job.finished, "inputs": [r.input_uri for r in self.store.inputs(job_id)],
                # workers taken out of rotation while the job ran (their chunks kept failing)
                "workers_out_of_rotation": [
                    out for out in self.runner.workers_out
                    if (job.started or job.created) <= out["time"] <= (job.finished or time.time())
                ],
                "monitoring": self._monitoring_cost(),
            }
            self.samples.flush()
            samples = self._samples_between((job.started or job.created) - 5, (job.finished or time.time()) + 5)
            write_job_data(self.state_dir / "jobs" / job_id, summary, self.rows.pop(job_id, []), samples, self.price)
        except Exception as exc:  # the report is secondary: the job's state is recorded
            self.log(f"warning: report data of job {job_id}: {one_line(exc)}")

    def _monitoring_cost(self) -> dict:
        """What GPU monitoring has cost so far (since the reporters and this controller
        started; for `facefleet run`, its one job): the reporter processes' CPU seconds
        (sampling thread, and the whole process with Ray's threads) and the dispatcher's
        seconds reading them, and the CPU seconds of fetching and logging samples."""
        monitor = self.runner.monitor
        cost = {
            "reporters": len(self.reporters), "samples": 0, "reporter_cpu_s": 0.0, "reporter_process_cpu_s": 0.0,
            "dispatcher_s": monitor.seconds if monitor is not None else 0.0, "sample_log_s": self.samples.seconds,
        }
        if self.reporters:
            import ray

            try:
                for o in ray.get([r.overhead.remote() for r in self.reporters.values()], timeout=5):
                    cost["samples"] += int(o["samples"])
                    cost["reporter_cpu_s"] += o["cpu_seconds"]
                    cost["reporter_process_cpu_s"] += o["process_cpu_seconds"]
            except Exception as exc:  # a reporter restarting: its share is unknown
                cost["error"] = one_line(exc)
        return cost

    # ---- samples, live status, metrics --------------------------------------------

    def _samples_between(self, since: float, until: float):
        if not self.reporters:
            return []
        return self.samples.read(since, until)

    def _publish_live(self) -> None:
        """state_dir/live.json for `facefleet monitor`, and the Prometheus job series."""
        jobs = []
        for job_id in list(self.units):
            row = self.store.job(job_id)
            counts = self.store.chunk_counts(job_id)
            frames_total = sum(r.frames for r in self.store.inputs(job_id))
            frames_done = sum(c.frames for c in self.store.chunks(job_id) if c.state == "done")
            elapsed = time.time() - (row.started or row.created)
            fps = frames_done / elapsed if elapsed > 0 else 0.0
            jobs.append({"job_id": job_id, "name": row.name, "state": row.state, "frames_done": frames_done, "frames_total": frames_total, "fps": fps})
            if self.metrics is not None:
                self.metrics.update_job(job_id, row.name, frames_done, frames_total, fps, counts, row.state)
        infos = getattr(self.pool, "infos", {})
        workers = [
            {"worker_id": w, "node": i.node, "gpu_uuid": i.gpu_uuid, "job_id": None, "job_name": None, "fps": 0.0}
            for w, i in sorted(infos.items())
        ]
        if self.metrics is not None:
            queued = self.store.jobs("queued")
            self.metrics.set_queue_depth(len(queued) + len(self.units), len(self.runner.dispatcher.pending) + sum(len(q) for q in self.runner.waiting.values()))
        tmp = self.state_dir / ".live.json.tmp"
        try:
            tmp.write_text(json.dumps({"time": time.time(), "workers": workers, "jobs": jobs}))
            os.replace(tmp, self.state_dir / "live.json")
        except OSError:
            pass

