"""The Ray side: loopback binding, GPU pinning (fake GPUs), dispatch, worker loss."""

from __future__ import annotations

import ipaddress
import os
import signal
import time

import av
import psutil
import pytest
import ray

from facefleet.cluster.pool import WorkerPool, plan_pool
from facefleet.cluster.runtime import ClusterInfo
from facefleet.jobs.runner import run_jobs
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec

VIDEO = SampleSpec(width=320, height=180, frames=60, gop=20)
# num_cpus, num_gpus: test_chunk_attempts.py, test_monitor.py and test_reporter.py run on the same
# embedded Ray (conftest.py)
SHARED_RAY = (2, 2)


@pytest.fixture(scope="module")
def cluster(shared_ray):
    """An embedded Ray with two fake GPUs (the machine has none)."""
    return shared_ray(*SHARED_RAY)


@pytest.fixture(scope="module")
def pool(cluster):
    p = WorkerPool(plan_pool(cluster, gpu_share=1.0), PipelineSpec())  # one worker per GPU
    yield p
    p.shutdown()


def ray_processes() -> list[psutil.Process]:
    me = psutil.Process()
    return [me] + me.children(recursive=True)


def test_every_ray_process_listens_on_loopback_only(cluster, pool):
    pids = {p.pid for p in ray_processes()}
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert len(listening) >= 3  # gcs, raylet, workers
    assert all(is_loopback(c.laddr.ip) for c in listening), listening


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_one_worker_per_gpu_each_pinned_to_its_own(cluster, pool):
    assert cluster.gpus == 2
    visible = sorted(info.cuda_visible_devices for info in pool.infos.values())
    assert visible == ["0", "1"]
    # no real GPU here: the worker says it runs on the CPU provider
    assert all(info.providers == {"detect": "CPUExecutionProvider"} for info in pool.infos.values())


def test_plan_pool_shares_gpus_and_cores():
    node = ClusterInfo(cpus=16, gpus=1, nodes=1, embedded=True)
    plan = plan_pool(node)  # two workers per GPU; their 4 chunks each (one per 2 cores) share the 16 cores
    assert (plan.workers, plan.gpus_per_worker, plan.chunks_per_worker, plan.media_threads) == (2, 0.5, 4, 2)
    plan = plan_pool(node, gpu_share=1.0)  # one worker: 8 chunks, one per 2 cores
    assert (plan.workers, plan.gpus_per_worker, plan.chunks_per_worker, plan.media_threads) == (1, 1, 8, 2)
    plan = plan_pool(node, chunks_per_worker=2)
    assert (plan.chunks_per_worker, plan.media_threads) == (2, 4)
    plan = plan_pool(node, gpu_share=0.25)  # 4 cores per worker: 2 chunks
    assert (plan.workers, plan.gpus_per_worker, plan.chunks_per_worker, plan.media_threads) == (4, 0.25, 2, 2)
    wide = plan_pool(ClusterInfo(cpus=128, gpus=2, nodes=2, embedded=False))  # 32 cores per worker: capped
    assert (wide.workers, wide.chunks_per_worker) == (4, 8)
    big = plan_pool(ClusterInfo(cpus=128, gpus=8, nodes=1, embedded=True), chunks_per_worker=4, gpu_share=0.25)
    assert (big.workers, big.media_threads) == (32, 1)
    small = plan_pool(ClusterInfo(cpus=4, gpus=1, nodes=1, embedded=True))
    assert (small.workers, small.chunks_per_worker) == (2, 2)  # 2 cores each: the 2-chunk minimum
    # each GPU worker takes a CPU: with fewer than two CPUs per GPU, one worker per GPU
    assert plan_pool(ClusterInfo(cpus=2, gpus=2, nodes=2, embedded=False)).workers == 2
    assert plan_pool(ClusterInfo(cpus=2, gpus=2, nodes=2, embedded=False), gpu_share=0.5).workers == 4  # as told
    with pytest.raises(Exception, match="more workers"):
        plan_pool(node, workers=2, gpu_share=1.0)


def test_a_gpu_heavy_pipeline_gets_two_workers_per_gpu_and_a_chunk_per_core():
    """enhance: 2 workers x 8 chunks kept an H100 97.5 % busy where 1 x 4 kept it 78 %."""
    node = ClusterInfo(cpus=16, gpus=1, nodes=1, embedded=True)
    plan = plan_pool(node, gpu_heavy=True)
    assert (plan.workers, plan.gpus_per_worker, plan.chunks_per_worker) == (2, 0.5, 8)
    assert plan_pool(node, gpu_heavy=True, gpu_share=1.0).chunks_per_worker == 8  # the user's share; 16 cores, capped
    assert plan_pool(node, gpu_heavy=True, chunks_per_worker=3).chunks_per_worker == 3
    small = plan_pool(ClusterInfo(cpus=4, gpus=1, nodes=1, embedded=True), gpu_heavy=True)
    assert (small.workers, small.chunks_per_worker) == (2, 2)  # 2 cores each: the 2-chunk minimum
    cpu_only = plan_pool(ClusterInfo(cpus=8, gpus=0, nodes=1, embedded=True), gpu_heavy=True)
    assert (cpu_only.workers, cpu_only.chunks_per_worker) == (1, 2)  # no GPU: nothing to keep busy
    assert PipelineSpec(steps=("enhance",)).gpu_heavy and not PipelineSpec().gpu_heavy


def test_plan_pool_without_gpus():
    plan = plan_pool(ClusterInfo(cpus=8, gpus=0, nodes=1, embedded=True))
    assert (plan.workers, plan.gpus_per_worker, plan.cpus_per_worker) == (1, 0, 8)
    assert (plan.onnx_threads, plan.media_threads) == (4, 4)
    plan = plan_pool(ClusterInfo(cpus=8, gpus=0, nodes=1, embedded=True), workers=4)
    assert (plan.workers, plan.cpus_per_worker) == (4, 2)
    # more workers than CPUs: each gets a fraction instead of waiting forever for a whole one
    plan = plan_pool(ClusterInfo(cpus=2, gpus=0, nodes=1, embedded=True), workers=4)
    assert (plan.workers, plan.cpus_per_worker) == (4, 0.5)


def test_jobs_run_across_workers_with_two_chunks_in_flight_each(sample_factory, tmp_path, pool, monkeypatch):
    src, _ = sample_factory(VIDEO)
    outstanding = {w: 0 for w in pool.actors}
    peak = {w: 0 for w in pool.actors}
    owner = {}
    submit, result = pool.submit, pool.result

    def counting_submit(worker, task):
        ref = submit(worker, task)
        owner[ref] = worker
        outstanding[worker] += 1
        peak[worker] = max(peak[worker], outstanding[worker])
        return ref

    def counting_result(ref):
        outstanding[owner[ref]] -= 1
        return result(ref)

    monkeypatch.setattr(pool, "submit", counting_submit)
    monkeypatch.setattr(pool, "result", counting_result)
    specs = [
        JobSpec(f"j{i}", str(src), str(tmp_path / f"out{i}.mp4"), chunk_frames=10) for i in range(2)
    ]
    outcomes = run_jobs(specs, pool)
    assert [o.error for o in outcomes] == [None, None]
    assert all(o.frames == 60 for o in outcomes)
    assert max(peak.values()) == 2
    for i in range(2):
        with av.open(str(tmp_path / f"out{i}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 60
    assert sorted(os.listdir(tmp_path)) == ["out0.mp4", "out1.mp4"]


def test_a_killed_worker_is_restarted_and_its_chunk_sent_again(sample_factory, tmp_path, pool):
    src, _ = sample_factory(VIDEO)
    victim = pool.infos[0].pid
    specs = [JobSpec("k", str(src), str(tmp_path / "out.mp4"), chunk_frames=10)]

    class KillOnFirstProgress:
        killed = False

        def started(self, *a):
            pass

        def advanced(self, job_id, frames_done):
            if not self.killed and frames_done > 0:
                os.kill(victim, signal.SIGKILL)
                self.killed = True

        def ended(self, outcome):
            pass

    watcher = KillOnFirstProgress()
    outcomes = run_jobs(specs, pool, watcher)
    assert watcher.killed
    assert outcomes[0].error is None and outcomes[0].frames == 60
    # the job may end on the other worker while Ray is still restarting this one
    deadline = time.monotonic() + 60
    while True:
        try:
            assert ray.get(pool.actors[0].info.remote(), timeout=60).pid != victim
            break
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
