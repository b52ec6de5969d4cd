"""Every send of a chunk in the store and in chunks.parquet, stage start/end times of real
chunks, and a runner that forgets the jobs it finished. An in-process controller on an
embedded Ray (127.0.0.1) with one CPU worker running two chunks at once."""

from __future__ import annotations

import time

import pytest

from facefleet.cluster.pool import PoolPlan, WorkerPool
from facefleet.jobs.controller import Controller
from facefleet.jobs.runner import JobRunner, plan_jobs, simulated_uri
from facefleet.jobs.spec import JobSpec
from facefleet.jobs.store import Inbox, JobStore
from facefleet.jobs.submit import build_request
from facefleet.pipeline.spec import PipelineSpec
from facefleet.report.tables import STAGE_GROUPS, read_job_data
from facefleet.samples import SampleSpec


# num_cpus, num_gpus: the embedded Ray of test_cluster.py, test_monitor.py and
# test_reporter.py (conftest.py); this module's one CPU worker takes no GPU
SHARED_RAY = (2, 2)


@pytest.fixture(scope="module")
def pool(shared_ray):
    shared_ray(*SHARED_RAY)
    workers = WorkerPool(PoolPlan(1, gpus_per_worker=0, cpus_per_worker=1, chunks_per_worker=2), PipelineSpec())
    try:
        yield workers
    finally:
        workers.shutdown()


def drain(runner, timeout: float = 30.0) -> None:
    """Step until called-off copies are back (an ended job's copies may still be out)."""
    deadline = time.monotonic() + timeout
    while runner.dispatcher.flights and time.monotonic() < deadline:
        runner.step()
    runner.step()


def serve(state, pool, *requests) -> list[str]:
    """Submit the requests and serve them until nothing is left; returns the log lines."""
    lines: list[str] = []
    for request in requests:
        Inbox(state).put("submit", request.payload())
    controller = Controller(state, pool, log=lines.append)
    try:
        controller.serve(until_idle=True)
        drain(controller.runner)
        held = controller.runner.held()
        assert not any(held.values()), held  # nothing of the finished jobs is kept
        assert not controller.units and not controller.rows
    finally:
        controller.close()
    return lines


def test_a_chunk_that_fails_once_is_recorded_with_two_attempts(pool, tmp_path):
    state = tmp_path / "state"
    uri = simulated_uri(40, 2.0, failing=(1,), fail_tries=1)
    request = build_request([uri], str(tmp_path / "out"), {"chunk_frames": 10}, output_root="")
    lines = serve(state, pool, request)
    assert not [line for line in lines if "warning" in line], lines
    with JobStore(state, readonly=True) as store:
        assert store.job(request.job_id).state == "done"
        chunks = store.chunks(request.job_id)
        assert [(c.index, c.state, c.attempts) for c in chunks] == [(0, "done", 1), (1, "done", 2), (2, "done", 1), (3, "done", 1)]
        tries = store.attempts(request.job_id, 0, 1)
        assert [(a.attempt, a.state) for a in tries] == [(1, "failed"), (2, "done")]
        assert "simulated failure of chunk 1" in tries[0].error and tries[1].error is None
        assert all(a.started <= a.ended for a in tries) and tries[0].ended <= tries[1].started
        assert [e.kind for e in store.events(request.job_id)].count("chunk-retry") == 1
        assert store.integrity_check() == []
    data = read_job_data(state / "jobs" / request.job_id)
    rows = sorted(data.chunks.to_pylist(), key=lambda r: r["chunk"])
    assert [r["attempts"] for r in rows] == [1, 2, 1, 1]
    assert data.summary["totals"]["attempts"] == 5 and data.summary["totals"]["retried_chunks"] == 1
    for row in rows:  # simulated chunks have stage times too
        for group in ("decode", "detect", "encode"):
            assert row["started"] <= row[f"{group}_start"] <= row[f"{group}_end"] <= row["finished"]


def test_a_chunk_that_always_fails_ends_failed_after_its_attempts(pool, tmp_path):
    state = tmp_path / "state"
    request = build_request([simulated_uri(20, 1.0, failing=(0,))], str(tmp_path / "out"), {"chunk_frames": 10}, output_root="")
    serve(state, pool, request)
    with JobStore(state, readonly=True) as store:
        assert store.job(request.job_id).state == "failed"
        chunk = store.chunk(request.job_id, 0, 0)
        assert (chunk.state, chunk.attempts) == ("failed", 3)
        assert [a.state for a in store.attempts(request.job_id, 0, 0)] == ["failed"] * 3
        # chunk 1 was called off when the job failed: its attempt is stopped, the chunk not running
        assert all(a.state != "running" for a in store.attempts(request.job_id))
        assert store.chunk(request.job_id, 0, 1).state in ("pending", "done")
        assert store.integrity_check() == []


def test_stage_times_of_real_video_chunks(pool, tmp_path, sample_factory):
    video, _ = sample_factory(SampleSpec(width=320, height=240, frames=24, gop=8, seed=3), name="stages.mp4")
    state = tmp_path / "state"
    request = build_request([str(video)], str(tmp_path / "out"), {"chunk_frames": 8}, output_root="")
    serve(state, pool, request)
    assert (tmp_path / "out" / "stages.mp4").is_file()
    rows = read_job_data(state / "jobs" / request.job_id).chunks.to_pylist()
    assert len(rows) == 3
    with JobStore(state, readonly=True) as store:
        recorded = {c.index: c.stage_times for c in store.chunks(request.job_id)}
    for row in rows:
        assert not row["simulated"]
        ran = [g for g in STAGE_GROUPS if row[f"{g}_s"] > 0]
        assert {"decode", "detect", "cpu_post", "encode"} <= set(ran), row
        for group in STAGE_GROUPS:
            start, end = row[f"{group}_start"], row[f"{group}_end"]
            if group not in ran:
                continue
            assert start is not None and end is not None, (group, row)
            assert row["started"] <= start <= end <= row["finished"], (group, row)
        # the decode thread starts first; the encoder closes the segment last
        assert row["decode_start"] <= row["detect_start"] and row["encode_end"] >= row["detect_end"]
        started, ended = dict(row["stage_started"]), dict(row["stage_ended"])
        assert set(started) == set(ended) == set(dict(row["stage_seconds"]))
        assert all(started[s] <= ended[s] for s in started)
        assert {s: list(v) for s, v in recorded[row["chunk"]].items()} == {s: [started[s], ended[s]] for s in started}


def test_the_runner_forgets_finished_jobs(pool, tmp_path):
    runner = JobRunner(pool, keep_outcomes=False, feed=2, duplicate_tail=True)
    ended: list[str] = []
    runner.on_end = lambda job, outcome: ended.append(outcome.job_id)
    specs = [
        JobSpec(f"job{i}", simulated_uri(12, 1.0, failing=(1,) if i % 3 == 0 else (), fail_tries=1), f"/tmp/job{i}", chunk_frames=4)
        for i in range(12)
    ]
    specs.append(JobSpec("bad", simulated_uri(8, 1.0, failing=(0,)), "/tmp/bad", chunk_frames=4))
    runner.add(plan_jobs(specs))
    runner.add(plan_jobs([JobSpec("cancelled", simulated_uri(400, 5.0), "/tmp/cancelled", chunk_frames=20)]))
    steps = 0
    while runner.busy:
        runner.step()
        steps += 1
        if steps == 3:
            assert runner.cancel("cancelled", "cancelled")
    drain(runner)
    runner.close()
    assert sorted(ended) == sorted([s.job_id for s in specs] + ["cancelled"])
    held = runner.held()
    assert not any(held.values()), held
    assert not runner.cancel("job0", "too late")


def test_an_input_gone_before_its_job_starts_fails_the_job(pool, tmp_path, sample_factory):
    video, _ = sample_factory(SampleSpec(width=320, height=240, frames=16, gop=8, seed=4), name="gone.mp4")
    copy = tmp_path / "gone.mp4"
    copy.write_bytes(video.read_bytes())
    request = build_request([str(copy)], str(tmp_path / "out"), {"chunk_frames": 8}, output_root="")
    copy.unlink()
    state = tmp_path / "state"
    serve(state, pool, request)
    with JobStore(state, readonly=True) as store:
        assert store.job(request.job_id).state == "failed"
