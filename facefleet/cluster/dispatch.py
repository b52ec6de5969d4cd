"""The dispatcher: chunk tasks to workers and results back, with retries and tail copies.

- Each next chunk goes to the worker expected to finish it first, at most
  `chunks_per_worker` in flight per worker (Scheduler).
- A chunk whose worker died, or that failed with an unexpected error, is sent again, up
  to `max_attempts` tries; then it fails for good and names itself. An error the input
  caused (FacefleetError) is final at once: trying again would fail the same way.
- When nothing is left to send and a worker has room, the in-flight chunk expected to
  finish last is copied to that worker if the copy is expected to finish sooner; the
  first result wins (chunks are idempotent: both write the same segment) and the other is
  dropped when it comes back.
- A chunk whose progress (frames done, asked of its worker about twice a second) has not
  advanced for `stall_timeout_s` is stalled (a decoder stuck inside FFmpeg, a hung GPU
  call): its worker is killed and restarted by Ray (its other chunks are sent again too)
  and the chunk is retried like any failed send, with an error saying it stalled.
- A retried chunk avoids the workers it failed on while others are alive. A worker on
  which `max_worker_failures` chunks in a row failed by its own errors (not the input's,
  not a death) is taken out of rotation while another worker is in rotation, and
  `on_worker_out(worker, reason)` is told.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import ray

from facefleet.cluster.chunk import ChunkStopped
from facefleet.cluster.monitor import GpuMonitor
from facefleet.cluster.pool import WorkerPool
from facefleet.cluster.scheduler import Scheduler
from facefleet.errors import FacefleetError, one_line
from facefleet.jobs.spec import ChunkResult, ChunkTask

MAX_ATTEMPTS = 3
DIED = "worker died"
# A chunk reports progress after each batch (a few frames, well under a second on a GPU,
# seconds on a CPU); 300 s without one also covers a worker building a new pipeline's
# models on its first chunk. Generous on purpose: a false stall costs a worker restart.
STALL_TIMEOUT_S = 300.0
MAX_WORKER_FAILURES = 3  # chunks in a row failing on one worker: it is taken out of rotation


def chunk_name(task: ChunkTask) -> str:
    if task.kind == "image":
        return "the image"
    return f"chunk {task.index} (frames {task.start}-{task.start + task.frames - 1})"


@dataclass
class ChunkDone:
    task: ChunkTask
    result: ChunkResult


@dataclass
class ChunkFailed:
    task: ChunkTask
    error: str


@dataclass
class _Flight:
    worker: int
    task: ChunkTask
    sent: float
    copy: bool = False  # a duplicate of a chunk already running elsewhere
    advanced: float = 0.0  # when its progress last advanced (monotonic; the send counts)
    frames_seen: int = 0  # frames done its worker last reported
    stalled: str = ""  # why it was given up for stalled ("" while it is not)


@dataclass
class DispatchStats:
    dispatched: int = 0
    duplicates: int = 0
    duplicate_wins: int = 0
    retries: int = 0
    stalls: int = 0  # sends given up because their progress stopped (their worker restarted)
    out_of_rotation: dict[int, str] = field(default_factory=dict)  # worker -> why it got nothing new
    controller_seconds: float = 0.0  # time spent deciding and bookkeeping (not waiting)
    per_worker_frames: dict[int, int] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        pool: WorkerPool,
        max_attempts: int = MAX_ATTEMPTS,
        duplicate_tail: bool = True,
        idle_retire_s: float | None = None,
        monitor: GpuMonitor | None = None,
        stall_timeout_s: float | None = STALL_TIMEOUT_S,
        max_worker_failures: int = MAX_WORKER_FAILURES,
        on_worker_out=None,
    ):
        self.pool = pool
        self.stall_timeout_s = stall_timeout_s  # None: never give a chunk up for stalled
        self.max_worker_failures = max_worker_failures
        self.on_worker_out = on_worker_out or (lambda worker, reason: None)
        self.monitor = monitor  # GPU health from the NVML reporters (None: not steered by load)
        self.first_sent: float | None = None
        self.frames_done = 0
        self.idle_retire_s = idle_retire_s  # retire workers idle this long (None: never)
        self.idle_since: dict[int, float] = {w: time.monotonic() for w in pool.actors}
        self.scheduler = Scheduler(sorted(pool.actors), max_in_flight=pool.plan.chunks_per_worker)
        self.max_attempts = max_attempts
        self.duplicate_tail = duplicate_tail
        self.pending: deque[ChunkTask] = deque()
        self.flights: dict[ray.ObjectRef, _Flight] = {}
        self.attempts: dict[tuple[str, int], int] = {}
        self.finished: set[tuple[str, int]] = set()
        self.progress_now: dict[tuple[str, int], int] = {}
        self.pings: dict[int, ray.ObjectRef] = {}  # workers whose actor died: are they back?
        self.died_at: dict[int, float] = {}  # worker -> when it was first seen dead (restarting)
        self.progress_calls: dict[int, ray.ObjectRef] = {}  # worker -> its progress() call not answered yet
        self.worker_progress: dict[int, dict[tuple[str, int], int]] = {}  # worker -> its last answer
        self.failed_on: dict[tuple[str, int], set[int]] = {}  # chunk key -> workers it failed on
        self.stalled: dict[tuple[tuple[str, int], int], str] = {}  # (chunk key, worker) -> stall error, until told
        self.stats = DispatchStats()

    # ---- what the caller does ----------------------------------------------------

    def add(self, tasks: list[ChunkTask]) -> None:
        self.pending.extend(tasks)

    def drop_job(self, job_id: str) -> None:
        """Send nothing more of this job; its chunks in flight are called off."""
        self.pending = deque(t for t in self.pending if t.job_id != job_id)
        for flight in self.flights.values():
            if flight.task.job_id == job_id:
                self.finished.add(flight.task.key)
                self.pool.stop(flight.worker, flight.task.key)

    @property
    def busy(self) -> bool:
        """Chunks left to send or to hear back from (copies that lost do not count)."""
        return bool(self.pending) or any(f.task.key not in self.finished for f in self.flights.values())

    def wait_for_stragglers(self, timeout: float) -> None:
        """Give chunks that were called off a moment to stop and clean up."""
        if self.flights:
            ray.wait(list(self.flights), num_returns=len(self.flights), timeout=timeout, fetch_local=False)

    def in_flight(self, job_id: str) -> int:
        return sum(1 for f in self.flights.values() if f.task.job_id == job_id and not f.copy)

    def step(self, timeout: float) -> list[ChunkDone | ChunkFailed]:
        """Send what fits, wait up to `timeout` for results, and say what happened."""
        t0 = time.perf_counter()
        self._send()
        if self.duplicate_tail and not self.pending:
            self._copy_stragglers()
        self.stats.controller_seconds += time.perf_counter() - t0
        if not self.flights:
            return []
        ready, rest = ray.wait(list(self.flights), num_returns=1, timeout=timeout, fetch_local=False)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            ready += more
        t0 = time.perf_counter()
        events = []
        for ref in ready:
            event = self._collect(ref)
            if event is not None:
                events.append(event)
        self.stats.controller_seconds += time.perf_counter() - t0
        return events

    def refresh_progress(self) -> dict[tuple[str, int], int]:
        """Frames done of every chunk being processed, by the workers' latest answers
        (asked without waiting: an answer is at most one call old), then give up chunks
        that stalled."""
        calls = {ref: worker for worker, ref in self.progress_calls.items()}
        if calls:
            ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=0, fetch_local=True)
            for ref in ready:
                worker = calls[ref]
                del self.progress_calls[worker]
                try:
                    self.worker_progress[worker] = ray.get(ref)
                except ray.exceptions.RayError:
                    self.worker_progress.pop(worker, None)  # died or restarting: its chunks come back failed
        for worker in [w for w in self.worker_progress if w not in self.pool.actors]:
            del self.worker_progress[worker]
        for worker in [w for w in self.progress_calls if w not in self.pool.actors]:
            del self.progress_calls[worker]
        for worker, actor in self.pool.actors.items():
            if worker not in self.progress_calls:
                self.progress_calls[worker] = actor.progress.remote()
        self.progress_now = {}
        for current in self.worker_progress.values():
            for key, frames in current.items():
                self.progress_now[key] = max(frames, self.progress_now.get(key, 0))
        self._check_stalls(time.monotonic())
        return self.progress_now

    def _check_stalls(self, now: float) -> None:
        if self.stall_timeout_s is None:
            return
        for flight in list(self.flights.values()):
            if flight.stalled:
                continue
            if self.scheduler.loads.get(flight.worker) is None or self.scheduler.loads[flight.worker].unhealthy == DIED:
                flight.advanced = now  # its worker is restarting: that time is not the chunk's
                continue
            done = self.worker_progress.get(flight.worker, {}).get(flight.task.key, 0)
            if done > flight.frames_seen:
                flight.frames_seen, flight.advanced = done, now
            elif now - flight.advanced > self.stall_timeout_s:
                self._give_up_stalled(flight, now)

    def _give_up_stalled(self, flight: _Flight, now: float) -> None:
        """Restart the worker of a stalled chunk: its calls in flight come back as failed
        (the actor died), and the chunk is retried with the stall as its error."""
        worker = flight.worker
        flight.stalled = (
            f"stalled: no progress for {now - flight.advanced:.0f} s (at frame {flight.frames_seen} of "
            f"{flight.task.frames}) on worker {worker}, which was restarted"
        )
        self.stalled[(flight.task.key, worker)] = flight.stalled
        self.stats.stalls += 1
        actor = self.pool.actors.get(worker)
        if actor is not None:
            ray.kill(actor, no_restart=False)
        self.scheduler.set_health(worker, DIED)  # nothing new for it until it answers again
        self.worker_progress.pop(worker, None)

    def rebalance(self) -> None:
        """Give GPUs that joined the cluster workers; take back workers that restarted, drop
        those that are gone for good; retire workers idle too long."""
        for worker in self.pool.grow():
            self.scheduler.add(worker)
            self.idle_since[worker] = time.monotonic()
        self._check_dead()
        if self.monitor is not None:
            self.monitor.refresh()
            gpus = {w: info.gpu_uuid for w, info in self.pool.infos.items() if w in self.pool.actors}
            for worker, reason in self.monitor.health(gpus).items():
                if self.scheduler.loads.get(worker) and self.scheduler.loads[worker].unhealthy != DIED:
                    self.scheduler.set_health(worker, reason)
        if self.idle_retire_s is None or self.pending:
            return
        now = time.monotonic()
        for worker in list(self.pool.actors):
            load = self.scheduler.loads.get(worker)
            if load and not load.in_flight and now - self.idle_since.get(worker, now) > self.idle_retire_s:
                self.pool.retire(worker)
                self.scheduler.remove(worker)

    # ---- inside ------------------------------------------------------------------

    @property
    def restart_timeout_s(self) -> float:
        """How long a dead worker may take to come back before it is given up: a restart
        that needs a resource no live node has (its node died with its GPU) never ends."""
        return self.stall_timeout_s if self.stall_timeout_s is not None else STALL_TIMEOUT_S

    def _check_dead(self) -> None:
        now = time.monotonic()
        for worker in [w for w, l in self.scheduler.loads.items() if l.alive and l.unhealthy == DIED]:
            if worker not in self.pool.actors:
                self.scheduler.remove(worker)
                self.died_at.pop(worker, None)
                continue
            since = self.died_at.setdefault(worker, now)
            if now - since > self.restart_timeout_s:
                # its calls fail (actor killed) and their chunks go to the workers left
                self.pool.retire(worker)
                self.scheduler.remove(worker)
                self.pings.pop(worker, None)
                del self.died_at[worker]
                why = f"it died and did not come back within {self.restart_timeout_s:.0f} s (its node gone?)"
                self.stats.out_of_rotation[worker] = why
                self.on_worker_out(worker, why)
                continue
            ping = self.pings.get(worker)
            if ping is None:
                self.pings[worker] = self.pool.ping(worker)
                continue
            ready, _ = ray.wait([ping], timeout=0)
            if not ready:
                continue
            del self.pings[worker]
            try:
                ray.get(ping)
            except ray.exceptions.ActorDiedError:
                self.pool.retire(worker)  # restarts used up, or no node can host it
                self.scheduler.remove(worker)
                self.died_at.pop(worker, None)
            except ray.exceptions.RayError:
                pass  # still restarting: ask again next time
            else:
                self.scheduler.set_health(worker, "")
                self.died_at.pop(worker, None)

    @property
    def backlog_frames(self) -> int:
        return sum(task.frames for task in self.pending)

    def fps(self) -> float | None:
        """Frames finished per second since the first chunk went out (None: none yet)."""
        if self.first_sent is None or not self.frames_done:
            return None
        return self.frames_done / max(time.monotonic() - self.first_sent, 1e-6)

    def _submit(self, worker: int, task: ChunkTask, copy: bool = False) -> None:
        self.first_sent = self.first_sent or time.monotonic()
        ref = self.pool.submit(worker, task)
        now = time.monotonic()
        self.flights[ref] = _Flight(worker, task, now, copy, advanced=now)
        self.idle_since.pop(worker, None)
        self.scheduler.sent(worker, (task.key, copy), task.frames)
        self.stats.dispatched += 1

    def _send(self) -> None:
        while self.pending:
            task = self.pending[0]
            avoid = frozenset(self.failed_on.get(task.key, ()))
            if avoid and not set(self.scheduler.alive) - avoid:
                avoid = frozenset()  # it failed on every live worker: any of them
            worker = self.scheduler.pick(task.frames, exclude=avoid)
            if worker is None:
                return
            self.pending.popleft()
            if task.key in self.finished:
                continue
            self._submit(worker, task)

    def _copy_stragglers(self) -> None:
        """Copy the chunk expected to finish last onto a worker with room, when that helps."""
        for idle in self.scheduler.idle_slots():
            running = [f for f in self.flights.values() if f.task.key not in self.finished]
            copied = {f.task.key for f in running if f.copy}
            best, best_left = None, 0.0
            for flight in running:
                if flight.copy or flight.task.key in copied or flight.worker == idle:
                    continue
                done = self.progress_now.get(flight.task.key, 0)
                left = self.scheduler.expected_seconds(flight.worker, max(flight.task.frames - done, 0))
                if left > best_left:
                    best, best_left = flight, left
            if best is None or self.scheduler.expected_seconds(idle, best.task.frames) >= best_left:
                return
            self._submit(idle, best.task, copy=True)
            self.stats.duplicates += 1

    def _collect(self, ref: ray.ObjectRef) -> ChunkDone | ChunkFailed | None:
        flight = self.flights.pop(ref)
        if not any(f.worker == flight.worker for f in self.flights.values()):
            self.idle_since[flight.worker] = time.monotonic()
        task, key = flight.task, flight.task.key
        try:
            result = self.pool.result(ref)
        except FacefleetError as exc:
            self.scheduler.failed(flight.worker, (key, flight.copy))
            return self._fail(task, str(exc), final=True)
        except Exception as exc:  # worker died, or a bug: try again elsewhere
            self.scheduler.failed(flight.worker, (key, flight.copy))
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the worker's exception
            if flight.stalled:
                reason = flight.stalled
                self._worker_failed(flight.worker, reason)
            elif isinstance(exc, ray.exceptions.RayActorError):
                reason = "its worker died"
                self.scheduler.set_health(flight.worker, DIED)  # nothing new for it until it answers again
            elif isinstance(cause, ChunkStopped):
                reason = "called off"
            else:
                reason = one_line(cause)
                self._worker_failed(flight.worker, reason)
            self.failed_on.setdefault(key, set()).add(flight.worker)
            return self._fail(task, reason, final=False)
        self.scheduler.count_failure(flight.worker, False)
        self.scheduler.finished(flight.worker, (key, flight.copy), result.frames, result.seconds.get("total", 0.0))
        if key in self.finished:
            return None  # the other copy won, or the job was dropped
        self.finished.add(key)
        self.failed_on.pop(key, None)
        for other in self.flights.values():
            if other.task.key == key:
                self.pool.stop(other.worker, key)  # the losing copy stops between batches
        self.stats.per_worker_frames[flight.worker] = self.stats.per_worker_frames.get(flight.worker, 0) + result.frames
        self.frames_done += result.frames
        if flight.copy:
            self.stats.duplicate_wins += 1
        return ChunkDone(task, result)

    def _worker_failed(self, worker: int, reason: str) -> None:
        """A chunk failed by its worker's fault: after `max_worker_failures` in a row the
        worker is taken out of rotation (unless it is the last one in rotation)."""
        failures = self.scheduler.count_failure(worker, True)
        if failures < self.max_worker_failures:
            return
        why = f"{failures} chunks in a row failed on it; last: {reason}"
        if self.scheduler.take_out(worker, why):
            self.stats.out_of_rotation[worker] = why
            self.on_worker_out(worker, why)

    def forget(self, job_id: str) -> None:
        """Drop what is kept of an ended job's chunks (once none of them is out)."""
        self.finished.difference_update([key for key in self.finished if key[0] == job_id])
        for table in (self.attempts, self.failed_on):
            for key in [key for key in table if key[0] == job_id]:
                del table[key]
        for key in [key for key in self.stalled if key[0][0] == job_id]:
            del self.stalled[key]

    def _fail(self, task: ChunkTask, reason: str, final: bool) -> ChunkFailed | None:
        key = task.key
        if key in self.finished:
            return None
        if any(f.task.key == key for f in self.flights.values()):
            return None  # another copy is still running: let it finish
        attempts = self.attempts.get(key, 1)
        if not final and attempts < self.max_attempts:
            self.attempts[key] = attempts + 1
            self.stats.retries += 1
            self.pending.appendleft(task)
            return None
        self.finished.add(key)
        self.failed_on.pop(key, None)
        if final:
            return ChunkFailed(task, reason)
        return ChunkFailed(task, f"{chunk_name(task)} failed {attempts} times; last: {reason}")
