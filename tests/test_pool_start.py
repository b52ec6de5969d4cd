"""A pool whose workers do not all start: it goes on with those that did (a worker planned
for the GPU of a node that just died never starts), and fails only when none starts."""

from __future__ import annotations

import pytest

import facefleet.cluster.pool as pool_module
from facefleet.cluster.pool import PoolPlan, WorkerPool
from facefleet.cluster.runtime import ray_session
from facefleet.errors import ClusterError
from facefleet.jobs.runner import run_jobs, simulated_uri
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.spec import PipelineSpec


@pytest.fixture(scope="module")
def one_gpu():
    with ray_session(num_cpus=2, num_gpus=1) as info:  # fake GPUs: Ray's accounting only
        yield info


def test_a_worker_that_cannot_start_is_left_out_after_the_grace(one_gpu, monkeypatch, capsys):
    monkeypatch.setattr(pool_module, "START_GRACE_S", 2.0)
    pool = WorkerPool(PoolPlan(2, gpus_per_worker=1, cpus_per_worker=0.5, chunks_per_worker=1), PipelineSpec())
    try:
        assert len(pool.actors) == 1 and pool.plan.workers == 1 and len(pool.infos) == 1
        (info,) = pool.infos.values()
        # the worker's own account of its start (bench/run_phases.py prints it)
        assert set(info.start_seconds) == {"process", "models", "warm_up", "gpu"}
        assert all(0 <= s < 60 for s in info.start_seconds.values())
        assert info.start_seconds["process"] > 0.1  # at least Python's and Ray's start
        err = capsys.readouterr().err
        assert "did not start within 2 s of the first one" in err and "going on with 1 worker(s)" in err
        (outcome,) = run_jobs([JobSpec("left", simulated_uri(20, 1.0), "/tmp/left-out")], pool)
        assert outcome.ok and outcome.frames == 20
    finally:
        pool.shutdown()


def test_no_worker_starting_is_an_error(one_gpu, monkeypatch):
    monkeypatch.setattr(pool_module, "START_TIMEOUT_S", 2)
    with pytest.raises(ClusterError, match="did not start within 2 s: the cluster lacks the resources"):
        WorkerPool(PoolPlan(1, gpus_per_worker=2, cpus_per_worker=0.5, chunks_per_worker=1), PipelineSpec())


def test_a_reporter_for_a_node_that_is_gone_is_dropped(one_gpu, capsys):
    """Ray lists a SIGKILLed node alive for about 16 s: a reporter pinned to it cannot be
    scheduled; the others start and the controller goes on without it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from facefleet.cluster.reporter import NvmlReporter, await_reporters, start_reporters, stop_reporters

    reporters = start_reporters(0.5, "simulated", wait=False)
    gone = "ab" * 28  # a node id no node has
    reporters[gone] = ray.remote(num_cpus=0)(NvmlReporter).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(gone, soft=False)
    ).remote(0.5, "simulated", node=gone)
    try:
        await_reporters(reporters, timeout_s=60)
        assert gone not in reporters and len(reporters) == 1
        assert f"no GPU reporter on node {gone[:12]}: the node is gone" in capsys.readouterr().err
    finally:
        stop_reporters(reporters)
