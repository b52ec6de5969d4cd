"""Faults (issue 8): a chunk that stalls, a GPU that returns errors, a full disk, and a
seeded multi-job run in which a worker, the reporter and the controller are killed.

The first three run in-process on an embedded Ray (127.0.0.1) with two fake GPUs; the
last runs `facefleet serve` in subprocesses through bench/faults.py (its short form)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from facefleet.cluster.pool import PoolPlan, WorkerPool
from facefleet.cluster.runtime import ray_session
from facefleet.jobs.controller import Controller
from facefleet.jobs.runner import JobRunner, plan_jobs, run_planned, simulated_uri
from facefleet.jobs.spec import JobSpec
from facefleet.jobs.store import Inbox, JobStore
from facefleet.jobs.submit import build_request
from facefleet.media.files import FAULT_ENOSPC_ENV, TMP_MARK
from facefleet.pipeline.spec import PipelineSpec
from facefleet.report.tables import read_job_data
from facefleet.samples import SampleSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

# Full-disk faults, injected by name in every process of the module's Ray (its workers
# inherit the environment when Ray starts): chunk 1's segment of job "diskseg", and the
# output "diskout.mp4".
ENOSPC = "*/.facefleet-diskseg/chunk-00001.mp4,*/diskout.mp4"


@pytest.fixture(scope="module")
def pool():
    before = os.environ.get(FAULT_ENOSPC_ENV)
    os.environ[FAULT_ENOSPC_ENV] = ENOSPC
    try:
        with ray_session(num_cpus=4, num_gpus=2):
            plan = PoolPlan(2, gpus_per_worker=1, cpus_per_worker=1, chunks_per_worker=2)
            workers = WorkerPool(plan, PipelineSpec())
            try:
                yield workers
            finally:
                workers.shutdown()
    finally:
        if before is None:
            os.environ.pop(FAULT_ENOSPC_ENV, None)
        else:
            os.environ[FAULT_ENOSPC_ENV] = before


def all_up(pool, timeout_s: float = 120.0) -> None:
    """Wait until every worker of the module's pool answers: a test after one that had a
    worker restarted (a stalled chunk) starts with both workers there, as when run alone.
    A worker that is still restarting answers ActorUnavailableError: asked again."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get([pool.ping(worker) for worker in pool.actors], timeout=max(1.0, deadline - time.monotonic()))
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def serve(state: Path, pool, requests, duplicate_tail: bool = True, **options) -> list[str]:
    all_up(pool)
    lines: list[str] = []
    for request in requests:
        Inbox(state).put("submit", request.payload())
    controller = Controller(state, pool, log=lines.append, **options)
    controller.runner.dispatcher.duplicate_tail = duplicate_tail
    serve.stats = controller.runner.dispatcher.stats
    try:
        controller.serve(until_idle=True)
        deadline = time.monotonic() + 30
        while controller.runner.dispatcher.flights and time.monotonic() < deadline:
            controller.runner.step()
    finally:
        controller.close()
    return lines


def leftovers(*roots: Path) -> list[Path]:
    """Temporary files and hidden work directories under the roots."""
    return [
        p for root in roots if root.exists() for p in root.rglob("*")
        if TMP_MARK in p.name or p.name.startswith(".facefleet-") or p.suffix == ".tmp"
    ]


def test_a_stalled_chunk_is_retried_after_its_worker_restarts(pool, tmp_path):
    """Chunk 1 hangs after its first batch on its first send (deaf to being called off):
    after 2 s without progress its worker is restarted and the chunk sent again. (Tail
    copies off: with them an idle worker would copy the chunk and win, and the hung copy
    would be restarted away all the same.)"""
    state = tmp_path / "state"
    uri = simulated_uri(60, 2.0, hang=1, hang_tries=1)
    request = build_request([uri], str(tmp_path / "out"), {"chunk_frames": 20}, output_root="")
    t0 = time.monotonic()
    serve(state, pool, [request], duplicate_tail=False, stall_timeout_s=2.0)
    assert serve.stats.stalls == 1
    took = time.monotonic() - t0
    with JobStore(state, readonly=True) as store:
        assert store.job(request.job_id).state == "done"
        tries = store.attempts(request.job_id, 0, 1)
        assert [a.state for a in tries] == ["failed", "done"], tries
        assert re.match(r"stalled: no progress for [23] s \(at frame 10 of 20\) on worker \d, which was restarted", tries[0].error), tries[0].error
        assert store.integrity_check() == []
    assert took < 30, took


def test_a_worker_whose_chunks_all_fail_is_taken_out_of_rotation(pool, tmp_path):
    """Every chunk sent to worker 1 fails with a (simulated) CUDA error: after 3 in a row
    it gets nothing new; its chunks are retried on worker 0 and the job ends done."""
    state = tmp_path / "state"
    uri = simulated_uri(160, 2.0, bad_worker=1)
    request = build_request([uri], str(tmp_path / "out"), {"chunk_frames": 10}, output_root="")
    lines = serve(state, pool, [request], stall_timeout_s=None)
    out = [line for line in lines if "taken out of rotation" in line]
    assert len(out) == 1, lines
    assert out[0].startswith("warning: worker 1 (node ") and "3 chunks in a row failed on it; last: RuntimeError: CUDA error" in out[0]
    with JobStore(state, readonly=True) as store:
        assert store.job(request.job_id).state == "done"
        attempts = store.attempts(request.job_id)
        failed = [a for a in attempts if a.state == "failed"]
        # 3 in a row, plus at most the one still in flight on it when it was taken out
        assert 3 <= len(failed) <= 4 and {a.worker for a in failed} == {1}, failed
        assert all(a.worker == 0 for a in attempts if a.state == "done")
        assert [e.kind for e in store.events(request.job_id)].count("worker-out") == 1
        assert store.integrity_check() == []
    summary = read_job_data(state / "jobs" / request.job_id).summary
    [entry] = summary["workers_out_of_rotation"]
    assert entry["worker"] == 1 and entry["reason"].startswith("3 chunks in a row failed on it")


def test_a_failing_worker_is_taken_out_but_never_the_last_one(pool):
    """In the runner alone: worker 0 returns errors and is taken out, worker 1 does the
    work; the last worker in rotation cannot be taken out."""
    all_up(pool)
    runner = JobRunner(pool, on_worker_out=lambda worker, line: None)
    runner.add(plan_jobs([JobSpec("allbad", simulated_uri(100, 1.0, bad_worker=0), "/tmp/allbad", chunk_frames=10)]))
    while runner.busy:
        runner.step()
    runner.close()
    outcome = runner.outcomes["allbad"]
    assert outcome.ok, outcome.error  # worker 0 out, worker 1 did it all
    assert list(runner.dispatcher.stats.out_of_rotation) == [0]
    loads = runner.dispatcher.scheduler.loads
    assert loads[0].out_of_rotation and not loads[1].out_of_rotation
    assert runner.dispatcher.scheduler.take_out(1, "test") is False  # the last one in rotation stays


def test_disk_full_while_writing_a_segment_or_the_output(pool, tmp_path, sample_factory):
    """ENOSPC (injected) at chunk 1's segment of one job and at another job's output: both
    fail at once with a reason naming the file; nothing at their output paths, no
    temporary file or work directory left; a third job in the batch is done."""
    video, _ = sample_factory(SampleSpec(width=320, height=240, frames=24, gop=8, seed=5), name="disk.mp4")
    out = tmp_path / "out"
    specs = [
        JobSpec("diskseg", str(video), str(out / "diskseg.mp4"), chunk_frames=8),
        JobSpec("diskout", str(video), str(out / "diskout.mp4"), chunk_frames=8),
        JobSpec("fine", str(video), str(out / "fine.mp4"), chunk_frames=8),
    ]
    all_up(pool)
    seg, final, fine = run_planned(plan_jobs(specs), pool, stall_timeout_s=None)
    assert "chunk-00001.mp4: the disk is full (No space left on device (injected)); free some space" in seg.error
    assert final.error.startswith(f"{out / 'diskout.mp4'}: the disk is full"), final.error
    assert fine.ok and (out / "fine.mp4").is_file()
    assert not (out / "diskseg.mp4").exists() and not (out / "diskout.mp4").exists()
    assert leftovers(out) == []
    assert run_planned.last_stats.retries == 0  # a full disk is not retried: the job fails at once


def test_seeded_faults_in_a_multi_job_run(tmp_path, monkeypatch):
    """bench/faults.py's short run: 3 video jobs + a bad input + an output on a full disk
    + a simulated job with a stalling chunk; a worker, the reporter and the controller
    killed at seeded moments. Every job done with the fault-free run's bytes or failed
    with a reason, nothing lost, the store sound, no temporary file left. (The fault-free
    bytes: tests/faultref.py, in this process and shared with test_faults_bench.py.)"""
    from faultref import reference_meanwhile
    from faults import fault_run

    with reference_meanwhile(monkeypatch):
        report = fault_run(tmp_path, seed=3, jobs=3, faults=3, frames=32, workers=1, stall_timeout_s=3.0)
    assert report["lost"] == 0, report
    assert report["integrity"] == [], report
    assert report["leftovers"] == [], report
    assert report["injected"].get("controller killed", 0) >= 1, report
    assert sum(report["injected"].values()) >= 3, report
    by_job = report["jobs"]
    assert all(j["outcome"] in ("done", "failed with reason") for j in by_job), by_job
    assert all(j["outcome"] == "done" and j["identical"] for j in by_job if j["kind"] == "video"), by_job
    assert {j["outcome"] for j in by_job if j["kind"] in ("bad input", "disk full (output)")} == {"failed with reason"}
