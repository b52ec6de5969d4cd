"""Which worker gets the next chunk: the one expected to finish it first.

Pure bookkeeping, no Ray: the pool tells it what was sent and what came back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_IN_FLIGHT = 2
PRIOR_FPS = 10.0  # assumed speed of a worker that has not finished a chunk yet


@dataclass
class WorkerLoad:
    in_flight: dict[tuple[str, int], int] = field(default_factory=dict)  # chunk key -> frames
    frames_done: int = 0
    busy_seconds: float = 0.0
    alive: bool = True
    unhealthy: str = ""  # why new work skips this worker (memory near full, throttling, errors)
    failures: int = 0  # chunks in a row that failed on this worker (its own errors; reset by a success)
    out_of_rotation: str = ""  # why this worker gets nothing new for good (kept failing); "" in rotation

    @property
    def fps(self) -> float:
        if self.busy_seconds <= 0 or self.frames_done <= 0:
            return PRIOR_FPS
        return self.frames_done / self.busy_seconds

    @property
    def queued_frames(self) -> int:
        return sum(self.in_flight.values())


class Scheduler:
    """Tracks per-worker load and picks workers by expected finish time."""

    def __init__(self, worker_ids: list[int], max_in_flight: int = MAX_IN_FLIGHT):
        self.max_in_flight = max_in_flight
        self.loads = {w: WorkerLoad() for w in worker_ids}

    def pick(self, frames: int, exclude: frozenset[int] = frozenset()) -> int | None:
        """The worker to send a chunk of `frames` frames to, or None if all are full.

        Unhealthy workers get nothing new, unless every live worker is unhealthy (then the
        work goes on rather than stalling). Workers out of rotation get nothing new while
        any other live worker is in rotation.
        """
        best, best_finish = None, float("inf")
        live = [w for w, l in self.loads.items() if l.alive]
        live = [w for w in live if not self.loads[w].out_of_rotation] or live
        any_healthy = any(not self.loads[w].unhealthy for w in live)
        alive = [w for w in live if w not in exclude]
        healthy = [w for w in alive if not self.loads[w].unhealthy]
        for worker in healthy if any_healthy else alive:
            load = self.loads[worker]
            if len(load.in_flight) >= self.max_in_flight:
                continue
            finish = (load.queued_frames + frames) / load.fps
            if finish < best_finish:
                best, best_finish = worker, finish
        return best

    def sent(self, worker: int, key: tuple[str, int], frames: int) -> None:
        self.loads[worker].in_flight[key] = frames

    def finished(self, worker: int, key: tuple[str, int], frames: int, seconds: float) -> None:
        load = self.loads[worker]
        load.in_flight.pop(key, None)
        load.frames_done += frames
        load.busy_seconds += seconds

    def failed(self, worker: int, key: tuple[str, int]) -> None:
        self.loads[worker].in_flight.pop(key, None)

    def count_failure(self, worker: int, failed: bool) -> int:
        """A chunk on `worker` failed by the worker's fault (True) or succeeded (False);
        returns its failures in a row."""
        load = self.loads.get(worker)
        if load is None:
            return 0
        load.failures = load.failures + 1 if failed else 0
        return load.failures

    def take_out(self, worker: int, reason: str) -> bool:
        """Take a worker out of rotation (nothing new for it while another live worker is
        in rotation); False when it was out already or is the last one in rotation."""
        load = self.loads.get(worker)
        others = [w for w, l in self.loads.items() if w != worker and l.alive and not l.out_of_rotation]
        if load is None or load.out_of_rotation or not others:
            return False
        load.out_of_rotation = reason
        return True

    def remove(self, worker: int) -> None:
        self.loads[worker].alive = False
        self.loads[worker].in_flight.clear()

    def add(self, worker: int) -> None:
        self.loads[worker] = WorkerLoad()

    def set_health(self, worker: int, reason: str) -> None:
        """reason "" marks the worker healthy again."""
        if worker in self.loads:
            self.loads[worker].unhealthy = reason

    def expected_seconds(self, worker: int, frames: int) -> float:
        return frames / self.loads[worker].fps

    def idle_slots(self) -> list[int]:
        """Workers with room for another chunk, emptiest first."""
        free = [
            w for w, l in self.loads.items()
            if l.alive and not l.unhealthy and not l.out_of_rotation and len(l.in_flight) < self.max_in_flight
        ]
        return sorted(free, key=lambda w: len(self.loads[w].in_flight))

    @property
    def has_capacity(self) -> bool:
        return any(l.alive and len(l.in_flight) < self.max_in_flight for l in self.loads.values())

    @property
    def alive(self) -> list[int]:
        return [w for w, l in self.loads.items() if l.alive]
