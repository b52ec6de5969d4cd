"""Load steering from the NVML reporters (simulated backend here: labelled simulated),
the workers' GPU UUIDs, and the autoscaler hook of a run."""

from __future__ import annotations

import time

import pytest

from facefleet.cluster.monitor import GpuMonitor, gpu_health
from facefleet.cluster.pool import PoolPlan, WorkerPool
from facefleet.cluster.reporter import REPORTER_PREFIX, start_reporters, stop_reporters
from facefleet.jobs.runner import run_jobs, run_planned, simulated_uri
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.spec import PipelineSpec

GiB = 2**30


def test_gpu_health_rules():
    assert gpu_health({"memory_used_max": 70 * GiB, "memory_total": 80 * GiB}) == ""
    assert gpu_health({"memory_used_max": 79 * GiB, "memory_total": 80 * GiB}).startswith("GPU memory at 99 %")
    assert gpu_health({"throttled": True, "throttle_reasons": ["thermal"]}) == "GPU throttling (thermal)"
    assert gpu_health({}) == ""


SHARED_RAY = (4, 2)  # num_cpus, num_gpus: test_dispatch.py runs on the same embedded Ray (conftest.py)


@pytest.fixture(scope="module")
def cluster(shared_ray):
    info = shared_ray(*SHARED_RAY)
    reporters = start_reporters(0.2, "simulated", name_prefix=REPORTER_PREFIX)
    yield info, reporters
    stop_reporters(reporters)


@pytest.fixture(scope="module")
def pool(cluster):
    p = WorkerPool(PoolPlan(2, gpus_per_worker=1, cpus_per_worker=1, chunks_per_worker=1), PipelineSpec())
    yield p
    p.shutdown()


def sim(job_id, frames=300, ms=5.0, chunk=30):
    return JobSpec(job_id, simulated_uri(frames, ms), f"/tmp/{job_id}", chunk_frames=chunk)


def test_workers_report_their_own_simulated_gpu(pool):
    infos = pool.infos.values()
    assert all(i.gpu_backend == "simulated" and i.gpu_uuid.startswith("SIM-GPU-") for i in infos)
    assert len({i.gpu_uuid for i in infos}) == 2


def test_busy_workers_show_as_simulated_gpu_utilization(cluster, pool):
    _, reporters = cluster
    monitor = GpuMonitor(reporters, window_s=3.0)
    # 1200 frames x 5 ms on 2 workers: busy about 3 s, as long as the window (600 frames,
    # 1.5 s, once read 0.098 against 0.1 on a loaded machine: half the window was idle)
    run_jobs([sim("busy", frames=1200)], pool, monitor=monitor)
    time.sleep(1.5)  # simulated samples describe the window that ended a second ago
    aggregates = monitor.refresh(wait_s=5.0)
    busy = [a for a in aggregates.values() if a["util_mean"]]
    assert busy and all(a["backend"] == "simulated" for a in aggregates.values())
    assert monitor.simulated and monitor.mean_utilization() > 0.1


class Fixed:
    """A monitor stand-in: one GPU's memory is full."""

    simulated = True

    def __init__(self, full_uuid):
        self.full = full_uuid

    def refresh(self):
        return {}

    def health(self, gpus):
        return {w: "GPU memory at 99 % of 80 GiB" if uuid == self.full else "" for w, uuid in gpus.items()}

    def mean_utilization(self):
        return 0.95


def test_a_gpu_near_its_memory_limit_gets_no_new_chunks(pool):
    full = pool.infos[1].gpu_uuid
    run_jobs([sim("steer", frames=600, chunk=20)], pool, monitor=Fixed(full))
    frames = run_planned.last_stats.per_worker_frames
    # worker 1 may get the first chunks before the first health check; then nothing
    assert frames.get(0, 0) >= 500 and frames.get(1, 0) <= 100, frames


class Recording:
    def __init__(self):
        self.steps, self.released = [], []

    def step(self, now, mean_util, backlog_frames, fps_per_gpu, gpus):
        self.steps.append((mean_util, backlog_frames, fps_per_gpu, gpus))

    def release(self, now, reason="", force=False):
        self.released.append(reason)


def test_a_run_steps_the_autoscaler_and_releases_it_at_the_end(pool):
    scaler = Recording()
    run_jobs([sim("scale", frames=1200, chunk=30)], pool, monitor=Fixed(None), autoscaler=scaler)
    assert scaler.steps and scaler.released == ["the jobs ended"]
    util, backlog, fps, gpus = scaler.steps[0]
    assert util == 0.95 and gpus == 2 and backlog > 0
    assert any(s[2] for s in scaler.steps)  # a per-GPU rate once chunks finished


def test_refresh_never_waits_on_a_slow_reporter(cluster):
    """The dispatcher's refresh asks and takes only answers that have arrived: a reporter
    that takes 1.5 s to answer costs it nothing; its aggregates come with a later refresh."""
    import ray

    @ray.remote(num_cpus=0)
    class SlowReporter:
        def aggregates(self, window_s):
            time.sleep(1.5)
            return {"GPU-slow": {"util_mean": 42.0, "backend": "simulated"}}

    monitor = GpuMonitor({"slow": SlowReporter.remote()})
    t0 = time.perf_counter()
    assert monitor.refresh() == {}
    assert time.perf_counter() - t0 < 0.5
    deadline = time.monotonic() + 30
    while "GPU-slow" not in monitor.refresh():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert monitor.aggregates["GPU-slow"]["util_mean"] == 42.0 and monitor.mean_utilization() == 0.42
    assert 0 < monitor.seconds < 1.0  # its own time, none of it waiting for the 1.5 s answers


def test_sample_keeper_logs_samples_beside_the_loop(cluster, tmp_path):
    """The controller's sample log is kept by a thread: a reporter slow to answer (1 s)
    never holds the caller; the samples land in the log, and `stop` keeps the last ones."""
    import ray

    from facefleet.cluster.nvml import GpuSample
    from facefleet.jobs.sample_keeper import SampleKeeper

    @ray.remote(num_cpus=0)
    class SlowSamples:
        def samples(self, since):
            time.sleep(1.0)
            now = time.time()
            return [GpuSample(now, "node", "GPU-x", 0, "test", 50.0, 1.0, 1, 2, 3.0, 4.0, 5.0, 0.0, 0.0, (), None, backend="simulated")]

    seen = []
    keeper = SampleKeeper(tmp_path, {"slow": SlowSamples.remote()}, every_s=0.2, on_samples=seen.append)
    t0 = time.perf_counter()
    keeper.start()
    assert time.perf_counter() - t0 < 0.5  # the caller goes on
    deadline = time.monotonic() + 30
    while not seen:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    keeper.stop()
    fetched = len(seen)
    keeper.stop()  # once only: no more fetches
    assert len(seen) == fetched
    logged = keeper.read(0, time.time() + 1)
    assert logged.num_rows >= 2 and set(logged.column("gpu_uuid").to_pylist()) == {"GPU-x"}
    assert keeper.seconds > 0
