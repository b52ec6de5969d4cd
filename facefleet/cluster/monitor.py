"""The controller's view of the NVML reporters: which GPUs should get no new work, and
how busy the GPUs are (for scaling)."""

from __future__ import annotations

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
    def __init__(self, reporters: dict[str, Any], window_s: float = WINDOW_S, memory_limit: float = MEMORY_LIMIT):
        self.reporters = reporters
        self.window_s = window_s
        self.memory_limit = memory_limit
        self.aggregates: dict[str, dict[str, Any]] = {}

    def refresh(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        import ray

        refs = [actor.aggregates.remote(self.window_s) for actor in self.reporters.values()]
        merged: dict[str, dict[str, Any]] = {}
        for ref in refs:
            try:
                merged.update(ray.get(ref, timeout=timeout))
            except ray.exceptions.RayError:
                pass  # a reporter restarting: its GPUs keep their last state
        self.aggregates.update(merged)
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
