"""The controller's view of the NVML reporters: which GPUs should get no new work, and
how busy the GPUs are (for scaling)."""

from __future__ import annotations

import time
from typing import Any

MEMORY_LIMIT = 0.95  # a GPU whose memory is fuller than this gets no new chunks
WINDOW_S = 10.0


def gpu_health(aggregate: dict[str, Any], memory_limit: float = MEMORY_LIMIT) -> str:
    """Why a GPU should get no new work ("" when it may): memory nearly full, or a
    limiting throttle reason (thermal, power brake, hardware slowdown) seen lately."""
    used, total = aggregate.get("memory_used_max"), aggregate.get("memory_total")
    if used and total and used / total > memory_limit:
        return f"GPU memory at {100 * used / total:.0f} % of {total / 2**30:.0f} GiB"
    if aggregate.get("throttled"):
        reasons = ", ".join(aggregate.get("throttle_reasons") or ()) or "throttled"
        return f"GPU throttling ({reasons})"
    return ""


class GpuMonitor:
    """GPU health and load from the NVML reporters, for the dispatcher.

    `refresh` never waits on a reporter: it takes the answers that have arrived and asks
    again (an aggregate is at most one refresh old), so a reporter that is slow to answer,
    or restarting, costs the dispatch loop nothing. `seconds`: the dispatcher's time in here.
    """

    def __init__(self, reporters: dict[str, Any], window_s: float = WINDOW_S, memory_limit: float = MEMORY_LIMIT):
        self.reporters = reporters
        self.window_s = window_s
        self.memory_limit = memory_limit
        self.aggregates: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0
        self._asked: dict[Any, str] = {}  # call -> reporter name, for answers not taken yet

    def refresh(self, wait_s: float = 0.0) -> dict[str, dict[str, Any]]:
        """The latest aggregates; `wait_s` > 0 waits that long for the answers asked for
        (a first look, in tests and tools)."""
        import ray

        t0 = time.perf_counter()
        asking = set(self._asked.values())
        for name, actor in self.reporters.items():
            if name not in asking:
                self._asked[actor.aggregates.remote(self.window_s)] = name
        ready, _ = ray.wait(list(self._asked), num_returns=len(self._asked), timeout=wait_s, fetch_local=True)
        for ref in ready:
            del self._asked[ref]
            try:
                self.aggregates.update(ray.get(ref))
            except ray.exceptions.RayError:
                pass  # a reporter restarting: its GPUs keep their last state
        if not wait_s:  # the dispatcher's cost (a wait asked for is not)
            self.seconds += time.perf_counter() - t0
        return self.aggregates

    def health(self, gpu_of_worker: dict[int, str | None]) -> dict[int, str]:
        """Worker -> reason it should get nothing new ("" for healthy)."""
        return {
            worker: gpu_health(self.aggregates[uuid], self.memory_limit) if uuid in self.aggregates else ""
            for worker, uuid in gpu_of_worker.items()
        }

    def mean_utilization(self) -> float | None:
        """Mean GPU utilization over all GPUs, as a fraction (None: no samples)."""
        values = [a["util_mean"] for a in self.aggregates.values() if a.get("util_mean") is not None]
        return sum(values) / len(values) / 100 if values else None

    @property
    def simulated(self) -> bool:
        return any(a.get("backend") == "simulated" for a in self.aggregates.values())
