"""A simulated multi-node cluster on this machine (ray.cluster_utils.Cluster, fake GPUs):
chunks spread over nodes, a node removed mid-job, a node added mid-job."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
from localrun import decode_all
from ray.cluster_utils import Cluster

from facefleet.cluster.pool import WorkerPool, plan_pool
from facefleet.cluster.reporter import REPORTER_PREFIX, start_reporters, stop_reporters
from facefleet.cluster.runtime import describe_cluster, loopback_environment
from facefleet.jobs.runner import run_jobs, run_planned, simulated_uri
from facefleet.jobs.spec import JobSpec
from facefleet.media.encode import EncodeSettings
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec

VIDEO = SampleSpec(width=160, height=96, frames=120, gop=30)
LOSSLESS = EncodeSettings(quality=100)


GPU_NODES = 2


@pytest.fixture(scope="module")
def head():
    """The cluster's head (1 CPU, no GPU), started once for the module (about 8 s with its
    nodes on 2 cores); `cluster` gives each test its GPU nodes."""
    loopback_environment()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def cluster(head):
    """The head and two GPU nodes (1 CPU, 1 fake GPU each), as every test starts with: a
    node the previous test removed is replaced by a new one, one it added is removed, and
    the test starts once Ray counts exactly these nodes alive and their 2 GPUs."""
    c = head
    while len(c.worker_nodes) > GPU_NODES:
        c.remove_node(sorted(c.worker_nodes, key=lambda n: n.unique_id)[-1])
    while len(c.worker_nodes) < GPU_NODES:
        c.add_node(num_cpus=1, num_gpus=1)
    c.wait_for_nodes()
    nodes = sorted(c.worker_nodes, key=lambda n: n.unique_id)
    alive = {c.head_node.node_id, *(n.node_id for n in nodes)}
    deadline = time.monotonic() + 60
    while {n["NodeID"] for n in ray.nodes() if n["Alive"]} != alive or ray.cluster_resources().get("GPU", 0) != GPU_NODES:
        assert time.monotonic() < deadline, (ray.nodes(), ray.cluster_resources())
        time.sleep(0.1)
    yield c, nodes


class When:
    """A progress sink that does something once, when a job has made some progress."""

    def __init__(self, action, after_frames=20):
        self.action, self.after, self.done = action, after_frames, False

    def started(self, *a):
        pass

    def advanced(self, job_id, frames):
        if not self.done and frames >= self.after:
            self.done = True
            self.action()

    def ended(self, outcome):
        pass


def spec(src, out):
    return JobSpec("m", str(src), str(out), pipeline=PipelineSpec(), encode=LOSSLESS, chunk_frames=10)


def test_chunks_spread_over_nodes_and_a_removed_node_loses_nothing(cluster, sample_factory, tmp_path):
    c, nodes = cluster
    src, _ = sample_factory(VIDEO)
    reporters = start_reporters(0.5, "simulated", name_prefix=REPORTER_PREFIX)
    assert set(reporters) == {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # one per node (head too)
    assert len(reporters) == 3
    stop_reporters(reporters)
    pool = WorkerPool(plan_pool(describe_cluster(embedded=False), gpu_share=1.0), PipelineSpec())
    try:
        assert len({info.node_id for info in pool.infos.values()}) == 2  # one worker per GPU node
        clean = run_jobs([spec(src, tmp_path / "clean.mp4")], pool)[0]
        spread = run_planned.last_stats.per_worker_frames
        assert clean.ok and len(spread) == 2 and min(spread.values()) >= 20
        # remove a node while the job runs: its chunks go to the other node
        victim = nodes[1]
        outcome = run_jobs([spec(src, tmp_path / "faulty.mp4")], pool, When(lambda: c.remove_node(victim)))[0]
    finally:
        pool.shutdown()
    assert outcome.ok, outcome.error
    _, a = decode_all(tmp_path / "clean.mp4")
    _, b = decode_all(tmp_path / "faulty.mp4")
    assert len(a) == len(b) == 120
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_node_that_joins_mid_job_gets_a_worker_and_work(cluster, tmp_path):
    c, _ = cluster
    pool = WorkerPool(plan_pool(describe_cluster(embedded=False), gpu_share=1.0), PipelineSpec())
    # simulated chunks of a fixed cost (1200 frames x 30 ms over 2 workers: about 18 s), so the
    # job outlasts the new worker's start however loaded the machine is (with a real 120-frame
    # video it sometimes ended before the new worker was up)
    try:
        outcome = run_jobs(
            [JobSpec("j", simulated_uri(1200, 30), str(tmp_path / "j"), chunk_frames=10)],
            pool,
            When(lambda: c.add_node(num_cpus=1, num_gpus=1), after_frames=10),
        )[0]
        per_worker = run_planned.last_stats.per_worker_frames
    finally:
        pool.shutdown()
    assert outcome.ok and outcome.frames == 1200
    assert per_worker.get(2, 0) > 0, per_worker  # the third worker, on the new node, did chunks
