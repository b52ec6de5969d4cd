"""When to ask the Ray autoscaler for more GPU nodes, and when to let them go.

`ScalingPolicy` is pure bookkeeping with an injected clock (`now` is passed in): from the
mean GPU utilization, the backlog (frames waiting) and the measured frames per second per
GPU it decides one of

- "up": utilization above `up_util` and the backlog would take more than
  `target_backlog_s` to drain at the measured speed (or there is a backlog and no GPU at
  all): ask for enough GPUs to drain it within `target_backlog_s`, at most `max_gpus`;
- "release": the queue drained while a request is standing: drop the request, so that
  nodes whose workers retire can time out;
- "down": utilization below `down_util` for `down_after_s` with no backlog: fewer GPUs
  would carry the load (the controller retires idle workers down to `gpus`);
- "hold": nothing to change.

`Autoscaler` is the edge: it turns decisions into
`ray.autoscaler.sdk.request_resources(bundles=[{"GPU": 1, "CPU": k}] * n)` and
`request_resources(bundles=[])`, remembers what is requested, and logs every request.
A request is a floor the autoscaler keeps the cluster at; it does not remove nodes
itself: nodes go away when they have been idle for the cluster's idle timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from facefleet.errors import FacefleetError

DecisionKind = Literal["up", "down", "hold", "release"]


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    gpus: int  # GPUs wanted after this decision (up/down), 0 (release), the request standing (hold)
    reason: str


@dataclass
class ScalingPolicy:
    """Thresholds (utilizations are fractions 0..1) and the one piece of state: since when
    the cluster has been below `down_util` with no backlog."""

    up_util: float = 0.90
    target_backlog_s: float = 120.0
    down_util: float = 0.30
    down_after_s: float = 60.0
    cpus_per_gpu: float = 1  # CPUs asked for with each GPU (a GpuWorker's num_cpus)
    max_gpus: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.down_util < self.up_util <= 1:
            raise FacefleetError(
                f"scaling thresholds must satisfy 0 <= down ({self.down_util}) < up ({self.up_util}) <= 1 "
                "(utilizations are fractions: 0.9 is 90 %)"
            )
        if self.target_backlog_s <= 0:
            raise FacefleetError(f"--target-backlog must be positive seconds, not {self.target_backlog_s}")
        if self.down_after_s < 0:
            raise FacefleetError(f"the scale-down delay must be >= 0 s, not {self.down_after_s}")
        if self.cpus_per_gpu < 0:
            raise FacefleetError(f"CPUs per GPU must be >= 0, not {self.cpus_per_gpu}")
        if self.max_gpus is not None and self.max_gpus < 1:
            raise FacefleetError(f"--max-gpus must be at least 1, not {self.max_gpus}")
        self._quiet_since: float | None = None

    def drain_seconds(self, backlog_frames: int, fps_per_gpu: float | None, gpus: int) -> float:
        """How long the backlog takes at the measured speed (inf: no GPU or no speed yet)."""
        if backlog_frames <= 0:
            return 0.0
        if not fps_per_gpu or fps_per_gpu <= 0 or gpus <= 0:
            return math.inf
        return backlog_frames / (fps_per_gpu * gpus)

    def gpus_to_drain(self, backlog_frames: int, fps_per_gpu: float) -> int:
        """GPUs that drain the backlog within target_backlog_s at fps_per_gpu each."""
        return max(1, math.ceil(backlog_frames / (fps_per_gpu * self.target_backlog_s)))

    def decide(
        self,
        now: float,
        mean_gpu_util: float | None,
        backlog_frames: int,
        fps_per_gpu: float | None,
        gpus: int,
        pending_request: int,
    ) -> Decision:
        """One decision. `mean_gpu_util` is the mean over the cluster's GPUs (None with no
        GPU), `fps_per_gpu` the measured frames per second of one GPU (None before any
        chunk finished), `gpus` the GPUs the cluster has, `pending_request` the GPU
        bundles requested now."""
        util = mean_gpu_util or 0.0
        quiet = backlog_frames <= 0 and gpus > 0 and util < self.down_util
        if not quiet:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now

        if backlog_frames <= 0:
            if pending_request > 0:
                return Decision("release", 0, f"queue drained: releasing the request for {pending_request} GPU(s)")
            if quiet and now - self._quiet_since >= self.down_after_s:
                wanted = math.ceil(round(util * gpus / self.up_util, 6))
                if wanted < gpus:
                    self._quiet_since = now  # look again after another down_after_s
                    return Decision(
                        "down",
                        wanted,
                        f"GPU utilization {util:.0%} < {self.down_util:.0%} for "
                        f"{self.down_after_s:g} s with no backlog: {gpus} -> {wanted} GPU(s)",
                    )
            return Decision("hold", pending_request, "no backlog")

        if gpus <= 0:
            wanted = self._cap(self.gpus_to_drain(backlog_frames, fps_per_gpu) if fps_per_gpu else 1)
            return self._up_or_hold(wanted, pending_request, f"{backlog_frames} frames waiting and no GPU")
        drain = self.drain_seconds(backlog_frames, fps_per_gpu, gpus)
        if math.isinf(drain):
            return Decision("hold", pending_request, "no throughput measured yet")
        if util <= self.up_util:
            return Decision(
                "hold", pending_request, f"GPU utilization {util:.0%} <= {self.up_util:.0%}: more GPUs would not help"
            )
        if drain <= self.target_backlog_s:
            return Decision(
                "hold", pending_request, f"backlog drains in {drain:.0f} s <= {self.target_backlog_s:g} s"
            )
        wanted = self._cap(self.gpus_to_drain(backlog_frames, fps_per_gpu))
        if wanted <= gpus:
            return Decision("hold", pending_request, f"at the maximum of {self.max_gpus} GPU(s)")
        return self._up_or_hold(
            wanted,
            pending_request,
            f"GPU utilization {util:.0%} > {self.up_util:.0%} and the backlog of {backlog_frames} frames "
            f"drains in {drain:.0f} s > {self.target_backlog_s:g} s at {fps_per_gpu:.1f} fps per GPU",
        )

    def _cap(self, wanted: int) -> int:
        return wanted if self.max_gpus is None else min(wanted, self.max_gpus)

    @staticmethod
    def _up_or_hold(wanted: int, pending_request: int, why: str) -> Decision:
        if wanted <= pending_request:
            return Decision("hold", pending_request, f"{why}; {pending_request} GPU(s) already requested")
        return Decision("up", wanted, f"{why}: asking for {wanted} GPU(s)")


class ScalingRequest(NamedTuple):
    """One call to request_resources, for reports: when, what, why."""

    time: float
    bundles: list[dict[str, float]]
    reason: str


def ray_request_resources(bundles: list[dict[str, float]]) -> None:
    """Ray's request (needs a connected Ray; imported here so the policy needs no Ray)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


class Autoscaler:
    """Turns the policy's decisions into autoscaler requests; the controller calls `step`
    periodically and retires idle workers on a "down" decision.

    A request is not additive: `request_resources` sizes the whole cluster (what it has,
    busy or not) to fit the latest bundles, so "up" asks for the total GPUs wanted.
    """

    def __init__(self, policy: ScalingPolicy, request: Callable[..., None] = ray_request_resources):
        self.policy = policy
        self._request = request
        self.requested = 0  # GPU bundles requested now
        self.log: list[ScalingRequest] = []

    def bundles(self, gpus: int) -> list[dict[str, float]]:
        return [{"GPU": 1, "CPU": self.policy.cpus_per_gpu} for _ in range(gpus)]

    def step(
        self, now: float, mean_util: float | None, backlog_frames: int, fps_per_gpu: float | None, gpus: int
    ) -> Decision:
        decision = self.policy.decide(now, mean_util, backlog_frames, fps_per_gpu, gpus, self.requested)
        if decision.kind == "up":
            self.set_request(now, decision.gpus, decision.reason)
        elif decision.kind == "release":
            self.release(now, decision.reason)
        # "down" comes only after the request was released: the controller retires idle
        # workers down to decision.gpus, and their nodes time out
        return decision

    def set_request(self, now: float, gpus: int, reason: str) -> None:
        bundles = self.bundles(gpus)
        self._request(bundles=bundles)
        self.requested = gpus
        self.log.append(ScalingRequest(now, bundles, reason))

    def release(self, now: float, reason: str = "released", force: bool = False) -> None:
        """Reset the request (request_resources(bundles=[])) when one stands, or always with
        `force` (a controller starting up clears what a previous one left)."""
        if self.requested > 0 or force:
            self.set_request(now, 0, reason)
