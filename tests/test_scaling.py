"""The scaling policy with a fake clock, and the adapter with a recording request function."""

from __future__ import annotations

import pytest

from facefleet.cluster.scaling import Autoscaler, ScalingPolicy, ScalingRequest
from facefleet.errors import FacefleetError

FPS = 30.0  # measured frames per second of one GPU


def backlog_for(seconds: float, gpus: int, fps: float = FPS) -> int:
    """Frames that take `seconds` to drain on `gpus` GPUs."""
    return int(seconds * fps * gpus)


def test_defaults_are_the_documented_thresholds():
    policy = ScalingPolicy()
    assert (policy.up_util, policy.target_backlog_s, policy.down_util, policy.down_after_s) == (0.9, 120, 0.3, 60)
    assert policy.max_gpus is None


def test_up_when_busy_and_backlog_longer_than_target():
    policy = ScalingPolicy()
    # 2 GPUs at 95 %, 10 minutes of backlog: 600 s * 2 GPUs -> 10 GPUs drain it in 120 s
    d = policy.decide(0, 0.95, backlog_for(600, 2), FPS, gpus=2, pending_request=0)
    assert d.kind == "up"
    assert d.gpus == 10
    assert "95%" in d.reason and "10 GPU" in d.reason


def test_request_size_rounds_up_and_is_capped():
    policy = ScalingPolicy(max_gpus=4)
    d = policy.decide(0, 0.95, backlog_for(121, 1), FPS, 1, 0)
    assert (d.kind, d.gpus) == ("up", 2)
    assert policy.decide(0, 0.95, backlog_for(600, 2), FPS, 2, 0).gpus == 4
    at_max = policy.decide(0, 0.95, backlog_for(600, 4), FPS, 4, 0)
    assert at_max.kind == "hold" and "maximum" in at_max.reason


def test_drain_time_is_backlog_over_fps_times_gpus():
    policy = ScalingPolicy()
    assert policy.drain_seconds(3600, 30.0, 2) == 60.0
    assert policy.drain_seconds(0, None, 0) == 0.0
    assert policy.drain_seconds(10, 30.0, 0) == float("inf")
    assert policy.gpus_to_drain(3600 * 4, 30.0) == 4  # 14400 frames / (30 fps * 120 s)


def test_hold_when_backlog_short_or_gpus_not_busy():
    policy = ScalingPolicy()
    short = policy.decide(0, 0.99, backlog_for(100, 2), FPS, 2, 0)
    assert short.kind == "hold" and "drains in 100 s" in short.reason
    idle_gpus = policy.decide(0, 0.50, backlog_for(600, 2), FPS, 2, 0)
    assert idle_gpus.kind == "hold" and "would not help" in idle_gpus.reason
    exactly_at_threshold = policy.decide(0, 0.90, backlog_for(600, 2), FPS, 2, 0)
    assert exactly_at_threshold.kind == "hold"


def test_hold_when_already_requested():
    policy = ScalingPolicy()
    d = policy.decide(0, 0.95, backlog_for(600, 2), FPS, 2, pending_request=10)
    assert (d.kind, d.gpus) == ("hold", 10) and "already requested" in d.reason
    more = policy.decide(0, 0.95, backlog_for(1200, 2), FPS, 2, pending_request=10)
    assert (more.kind, more.gpus) == ("up", 20)


def test_backlog_without_any_gpu_asks_for_one_until_speed_is_known():
    policy = ScalingPolicy()
    d = policy.decide(0, None, 5000, None, gpus=0, pending_request=0)
    assert (d.kind, d.gpus) == ("up", 1)
    assert policy.decide(1, None, 5000, None, gpus=0, pending_request=1).kind == "hold"
    # a speed measured earlier sizes the request
    assert policy.decide(0, None, backlog_for(480, 1), FPS, gpus=0, pending_request=0).gpus == 4
    # GPUs present but no chunk finished yet: no estimate, no change
    assert policy.decide(0, 0.99, 5000, None, gpus=2, pending_request=0).kind == "hold"


def test_release_when_the_queue_drains():
    policy = ScalingPolicy()
    d = policy.decide(0, 0.95, 0, FPS, gpus=4, pending_request=4)
    assert (d.kind, d.gpus) == ("release", 0)
    assert policy.decide(1, 0.95, 0, FPS, gpus=4, pending_request=0).kind == "hold"


def test_down_only_after_60_s_below_30_percent_with_no_backlog():
    policy = ScalingPolicy()
    assert policy.decide(0, 0.10, 0, FPS, 4, 0).kind == "hold"  # quiet since t=0
    assert policy.decide(59.9, 0.10, 0, FPS, 4, 0).kind == "hold"
    d = policy.decide(60, 0.10, 0, FPS, 4, 0)
    # 4 GPUs at 10 % is 0.4 GPU of work: one GPU carries it below 90 %
    assert (d.kind, d.gpus) == ("down", 1)
    assert "10%" in d.reason and "4 -> 1" in d.reason
    # the timer restarts after a decision: the next one comes another 60 s later
    assert policy.decide(61, 0.10, 0, FPS, 4, 0).kind == "hold"
    d = policy.decide(120, 0.0, 0, FPS, 4, 0)
    assert (d.kind, d.gpus) == ("down", 0)


def test_down_timer_resets_on_load_or_backlog():
    policy = ScalingPolicy()
    policy.decide(0, 0.10, 0, FPS, 4, 0)
    policy.decide(30, 0.50, 0, FPS, 4, 0)  # busy again: the quiet period restarts
    assert policy.decide(80, 0.10, 0, FPS, 4, 0).kind == "hold"
    assert policy.decide(139, 0.10, 0, FPS, 4, 0).kind == "hold"
    assert policy.decide(140, 0.10, 0, FPS, 4, 0).kind == "down"

    policy = ScalingPolicy()
    policy.decide(0, 0.10, 0, FPS, 4, 0)
    policy.decide(30, 0.10, 100, FPS, 4, 0)  # a backlog: not quiet
    assert policy.decide(70, 0.10, 0, FPS, 4, 0).kind == "hold"
    assert policy.decide(130, 0.10, 0, FPS, 4, 0).kind == "down"


def test_low_but_nonzero_load_on_one_gpu_is_kept():
    policy = ScalingPolicy()
    policy.decide(0, 0.20, 0, FPS, 1, 0)
    assert policy.decide(100, 0.20, 0, FPS, 1, 0).kind == "hold"
    # quiet since t=0; once the last GPU is idle it can go
    d = policy.decide(200, 0.0, 0, FPS, 1, 0)
    assert (d.kind, d.gpus) == ("down", 0)


def test_thresholds_are_configurable():
    policy = ScalingPolicy(up_util=0.7, target_backlog_s=30, down_util=0.5, down_after_s=10)
    assert policy.decide(0, 0.75, backlog_for(40, 1), FPS, 1, 0).kind == "up"
    policy.decide(0, 0.3, 0, FPS, 2, 0)
    d = policy.decide(10, 0.3, 0, FPS, 2, 0)  # 0.6 GPU of work fits one GPU below 70 %
    assert (d.kind, d.gpus) == ("down", 1)


@pytest.mark.parametrize(
    "kwargs",
    [dict(up_util=0.3, down_util=0.5), dict(up_util=90), dict(target_backlog_s=0), dict(max_gpus=0), dict(down_after_s=-1)],
)
def test_bad_thresholds_are_refused(kwargs):
    with pytest.raises(FacefleetError):
        ScalingPolicy(**kwargs)


class RecordingRequest:
    def __init__(self):
        self.calls: list[list[dict]] = []

    def __call__(self, *, bundles):
        self.calls.append(bundles)


def test_adapter_requests_bundles_and_resets_when_drained():
    request = RecordingRequest()
    scaler = Autoscaler(ScalingPolicy(cpus_per_gpu=4, max_gpus=3), request=request)

    d = scaler.step(0, 0.95, backlog_for(600, 1), FPS, gpus=1)
    assert (d.kind, d.gpus) == ("up", 3)
    assert request.calls == [[{"GPU": 1, "CPU": 4}] * 3]
    assert scaler.requested == 3

    # same situation again: the request stands, nothing is sent
    assert scaler.step(5, 0.95, backlog_for(600, 1), FPS, gpus=1).kind == "hold"
    assert len(request.calls) == 1

    assert scaler.step(10, 0.95, 0, FPS, gpus=3).kind == "release"
    assert request.calls[-1] == []
    assert scaler.requested == 0

    # low load for 60 s: "down" is the controller's cue; no request stands, none is sent
    scaler.step(20, 0.0, 0, FPS, gpus=3)
    d = scaler.step(80, 0.0, 0, FPS, gpus=3)
    assert (d.kind, d.gpus) == ("down", 0)
    assert len(request.calls) == 2

    assert [entry.time for entry in scaler.log] == [0, 10]
    assert scaler.log[0].bundles == [{"GPU": 1, "CPU": 4}] * 3
    assert "asking for 3 GPU" in scaler.log[0].reason
    assert isinstance(scaler.log[1], ScalingRequest) and scaler.log[1].bundles == []
    time, bundles, reason = scaler.log[1]  # plain (time, bundles, reason) tuples for reports
    assert "drained" in reason


def test_adapter_release_is_idempotent_unless_forced():
    request = RecordingRequest()
    scaler = Autoscaler(ScalingPolicy(), request=request)
    scaler.release(0)
    assert request.calls == []
    scaler.release(0, "controller start", force=True)
    assert request.calls == [[]]
    assert scaler.log == [ScalingRequest(0, [], "controller start")]


def test_adapter_default_request_is_rays():
    import inspect

    from facefleet.cluster import scaling

    assert Autoscaler(ScalingPolicy())._request is scaling.ray_request_resources
    assert "request_resources(bundles=bundles)" in inspect.getsource(scaling.ray_request_resources)
