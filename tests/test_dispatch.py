"""Scheduling on Ray with simulated chunks (they sleep; labelled simulated): load-aware
routing, tail copies, retries, and out-of-memory halving (no Ray)."""

from __future__ import annotations

import time

import pytest

from facefleet.cluster.chunk import is_out_of_memory, run_chunk
from facefleet.cluster.pool import PoolPlan, WorkerPool
from facefleet.jobs.runner import plan_job, run_jobs, run_planned, simulated_uri
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.processor import Processor, build_processor
from facefleet.pipeline.spec import PipelineSpec
from facefleet.pipeline.stages import AnonymizeStage, DetectStage
from facefleet.samples import SampleSpec


SHARED_RAY = (4, 2)  # num_cpus, num_gpus: test_steering.py runs on the same embedded Ray (conftest.py)


@pytest.fixture(scope="module")
def cluster(shared_ray):
    return shared_ray(*SHARED_RAY)


def pool_of(slowdowns, chunks_per_worker=1):
    plan = PoolPlan(len(slowdowns), gpus_per_worker=1, cpus_per_worker=1, chunks_per_worker=chunks_per_worker,
                    slowdowns=tuple(slowdowns))
    return WorkerPool(plan, PipelineSpec())


def sim_job(job_id, frames, ms, chunk_frames, failing=()):
    return JobSpec(job_id, simulated_uri(frames, ms, failing), f"/tmp/{job_id}", chunk_frames=chunk_frames)


def test_twice_as_fast_worker_does_twice_the_frames(cluster):
    pool = pool_of([1.0, 2.0])  # worker 0: 10 ms/frame, worker 1: 20 ms/frame (simulated)
    try:
        outcome = run_jobs([sim_job("h", 600, 10, 30)], pool, duplicate_tail=False)[0]
        stats = run_planned.last_stats
    finally:
        pool.shutdown()
    assert outcome.ok and outcome.frames == 600
    fast, slow = stats.per_worker_frames[0], stats.per_worker_frames[1]
    assert 1.5 <= fast / slow <= 2.6, stats.per_worker_frames
    ideal = 600 / (100 + 50)  # seconds with a perfect split of rates 100 and 50 fps
    assert outcome.seconds <= ideal * 1.10 + 0.3, (outcome.seconds, ideal)  # + Ray's per-chunk round trips


def test_a_slow_worker_is_overtaken_at_the_tail(cluster):
    times = {}
    for copy in (False, True):
        pool = pool_of([1.0, 8.0])  # worker 1 is 8x slower
        try:
            t0 = time.monotonic()
            outcome = run_jobs([sim_job(f"t{copy}", 240, 10, 60)], pool, duplicate_tail=copy)[0]
            times[copy] = time.monotonic() - t0
            stats = run_planned.last_stats
        finally:
            pool.shutdown()
        assert outcome.ok and outcome.frames == 240
        if copy:
            assert stats.duplicates >= 1 and stats.duplicate_wins >= 1
    # without copies the job waits for the slow worker's chunk (60 x 80 ms = 4.8 s)
    assert times[False] > 4.5
    assert times[True] < 0.7 * times[False], times


def test_a_chunk_that_keeps_failing_fails_its_job_only(cluster):
    pool = pool_of([1.0, 1.0])
    try:
        bad, good = run_jobs([sim_job("bad", 90, 1, 30, failing=(1,)), sim_job("good", 90, 1, 30)], pool)
        stats = run_planned.last_stats
    finally:
        pool.shutdown()
    assert good.ok and good.frames == 90
    assert bad.error == "chunk 1 (frames 30-59) failed 3 times; last: RuntimeError: simulated failure of chunk 1"
    assert stats.retries == 2


def test_out_of_memory_halves_the_batch_and_retries_the_chunk(sample_factory, tmp_path):
    """An injected allocation failure for batches above 2 frames: the chunk still completes."""

    class FailBigBatches:
        name, context = "alloc", 0

        def process(self, items):
            if len(items) > 2:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")
            return items

        def flush(self):
            return []

    spec = PipelineSpec(batch_size=8)
    base = build_processor(spec)
    processor = Processor(
        spec, base.detector, lambda chunk: [DetectStage(base.detector), FailBigBatches(), AnonymizeStage(spec.anonymize)]
    )
    src, _ = sample_factory(SampleSpec(width=320, height=180, frames=20))
    job = plan_job(JobSpec("o", str(src), str(tmp_path / "o.mp4"), chunk_frames=100))
    job.workdir.mkdir()
    result = run_chunk(job.tasks[0], processor)
    assert (result.frames, result.batch_size, result.oom_retries) == (20, 2, 2)
    assert is_out_of_memory(MemoryError("std::bad_alloc")) and not is_out_of_memory(ValueError("bad frame"))


def test_idle_workers_are_retired_while_others_finish(cluster):
    pool = pool_of([1.0, 10.0])  # worker 1 takes 10x longer over its chunk: 3 s
    try:
        outcome = run_jobs([sim_job("idle", 60, 10, 30)], pool, duplicate_tail=False, idle_retire_s=0.5)[0]
        retired = 0 not in pool.actors
    finally:
        pool.shutdown()
    assert outcome.ok and outcome.frames == 60
    assert retired  # worker 0 finished its chunk at 0.3 s and sat idle past 0.5 s while worker 1 worked on


def test_no_gpu_means_no_shared_memory_limit():
    from facefleet.cluster.worker import shared_memory_limit

    assert shared_memory_limit(1.0) == 0 and shared_memory_limit(0.5) == 0  # no NVML here


def test_a_dead_worker_that_never_comes_back_is_given_up(cluster):
    """A worker whose restart never ends (its node died with the GPU it needs) is given up
    after the restart timeout, so its chunks go to the workers left instead of waiting."""
    import ray

    from facefleet.cluster.dispatch import DIED, Dispatcher

    @ray.remote(num_cpus=0)
    def never_answers():
        time.sleep(3600)

    class Pool:  # the calls _check_dead makes, for two workers
        plan = PoolPlan(2, gpus_per_worker=1, cpus_per_worker=1, chunks_per_worker=1)

        def __init__(self):
            self.actors, self.retired, self.pinged = {0: object(), 1: object()}, [], []

        def ping(self, worker):
            self.pinged.append(worker)
            return never_answers.remote()

        def retire(self, worker):
            self.retired.append(worker)
            self.actors.pop(worker, None)

    pool, told = Pool(), []
    dispatcher = Dispatcher(pool, stall_timeout_s=0.5, on_worker_out=lambda worker, why: told.append((worker, why)))
    dispatcher.scheduler.set_health(1, DIED)
    dispatcher._check_dead()
    dispatcher._check_dead()  # still restarting: waited for
    assert pool.pinged == [1] and not pool.retired and dispatcher.scheduler.loads[1].alive
    time.sleep(0.6)
    dispatcher._check_dead()
    assert pool.retired == [1] and not dispatcher.scheduler.loads[1].alive
    assert told and told[0][0] == 1 and "did not come back" in told[0][1]
    assert dispatcher.scheduler.pick(10) == 0  # the work goes to the worker left
    ray.cancel(dispatcher.pings.get(1) or never_answers.remote(), force=True)
