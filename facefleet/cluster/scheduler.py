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

    def pick(self, frames: int) -> int | None:
        """The worker to send a chunk of `frames` frames to, or None if all are full."""
        best, best_finish = None, float("inf")
        for worker, load in self.loads.items():
            if not load.alive or len(load.in_flight) >= self.max_in_flight:
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

    def remove(self, worker: int) -> None:
        self.loads[worker].alive = False
        self.loads[worker].in_flight.clear()

    @property
    def has_capacity(self) -> bool:
        return any(l.alive and len(l.in_flight) < self.max_in_flight for l in self.loads.values())

    @property
    def alive(self) -> list[int]:
        return [w for w, l in self.loads.items() if l.alive]
