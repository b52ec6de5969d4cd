"""The job store and the inbox: states and transitions, plans, recovery and retry, schema
migration, a reader beside the writer, full disks and read-only filesystems."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from facefleet.jobs import store as store_module
from facefleet.jobs.store import (
    CHUNK_STATES,
    DB_NAME,
    SCHEMA_VERSION,
    Inbox,
    JobStore,
    StoreError,
)

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    with JobStore(tmp_path / "state", clock=clock) as job_store:
        yield job_store


def add(store: JobStore, job_id: str, priority: int = 0, inputs: int = 1, chunks: int = 3) -> None:
    """A job with INPUTS inputs, each planned into CHUNKS chunks of 10 frames."""
    pairs = [(f"in{i}.mp4", f"out{i}.mp4") for i in range(inputs)]
    store.add_job(job_id, f"name-{job_id}", {"pipeline": "anonymize"}, priority, pairs)
    for i in range(inputs):
        store.plan_input(job_id, i, 10 * chunks, [(10 * c, 10, f"seg-{i}-{c}.mp4") for c in range(chunks)])


def finish(store: JobStore, job_id: str, input_index: int, index: int) -> None:
    store.chunk_started(job_id, input_index, index, worker=1, node="node-a", gpu_uuid="GPU-1")
    segment = f"seg-{input_index}-{index}.mp4"
    store.chunk_done(job_id, input_index, index, segment, "sha256:ab", {"total": 1.5}, 1, "node-a", "GPU-1", 10.0, 11.5)


def everything(store: JobStore, job_id: str) -> tuple:
    """All rows the store holds for one job, and the job list."""
    return store.jobs(), store.inputs(job_id), store.chunks(job_id), store.events(job_id)


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def run_python(code: str, *args: str, prefix: list[str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [*(prefix or []), sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# --- jobs and their states ---------------------------------------------------------------------

def test_a_job_goes_from_queued_to_done(store, clock):
    add(store, "job-one", inputs=2, chunks=2)
    job = store.job("job-one")
    assert (job.state, job.name, job.spec, job.seq) == ("queued", "name-job-one", {"pipeline": "anonymize"}, 1)
    assert (job.started, job.finished) == (None, None)
    assert [(i.index, i.input_uri, i.output_uri, i.state, i.frames) for i in store.inputs("job-one")] == [
        (0, "in0.mp4", "out0.mp4", "pending", 20),
        (1, "in1.mp4", "out1.mp4", "pending", 20),
    ]
    clock.now = 2000.0
    store.set_job_state("job-one", "running")
    for input_index in (0, 1):
        for index in (0, 1):
            finish(store, "job-one", input_index, index)
        store.set_input_state("job-one", input_index, "done", frames=20)
    clock.now = 3000.0
    store.set_job_state("job-one", "done")
    job = store.job("job-one")
    assert (job.state, job.started, job.finished, job.error) == ("done", 2000.0, 3000.0, None)
    assert store.chunk_counts("job-one") == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    kinds = [e.kind for e in store.events("job-one")]
    assert kinds[0] == "submitted" and kinds[-1] == "done" and "running" in kinds
    assert store.integrity_check() == []


@pytest.mark.parametrize(
    "path, refused",
    [
        (["running", "done"], "running"),
        (["running", "done"], "cancelled"),  # too late to cancel
        (["failed"], "queued"),  # only retry queues it again
        (["cancelled"], "running"),
        (["running", "failed"], "done"),
        ([], "done"),  # queued -> done skips running
    ],
)
def test_invalid_transitions_name_both_states(store, path, refused):
    add(store, "job-two", chunks=1)
    if "done" in path:
        finish(store, "job-two", 0, 0)
    for state in path:
        store.set_job_state("job-two", state)
    old = store.job("job-two").state
    with pytest.raises(StoreError) as exc:
        store.set_job_state("job-two", refused)
    message = one_line_error(exc)
    assert old in message and refused in message
    assert store.job("job-two").state == old


def test_valid_transitions_and_timestamps(store):
    add(store, "queued-cancel")
    store.set_job_state("queued-cancel", "cancelled", "user asked")
    assert (store.job("queued-cancel").error, store.job("queued-cancel").finished) == ("user asked", 1000.0)
    add(store, "queued-fail")
    store.set_job_state("queued-fail", "failed", "bad input")
    add(store, "requeued")
    store.set_job_state("requeued", "running")
    store.set_job_state("requeued", "queued")  # the controller stopped: back in the queue
    store.set_job_state("requeued", "running")
    store.set_job_state("requeued", "running")  # the same state again changes nothing
    assert store.job("requeued").started == 1000.0
    with pytest.raises(StoreError, match="unknown job state"):
        store.set_job_state("requeued", "paused")
    with pytest.raises(StoreError, match="no job"):
        store.set_job_state("missing", "running")


def test_a_job_is_done_only_with_all_chunks_done(store):
    add(store, "job-three", chunks=2)
    store.set_job_state("job-three", "running")
    finish(store, "job-three", 0, 0)
    with pytest.raises(StoreError, match="1 of its chunks are not done"):
        store.set_job_state("job-three", "done")


# --- plans and chunks --------------------------------------------------------------------------

def test_replan_replaces_chunks_until_one_is_done(store):
    add(store, "job-plan", chunks=3)
    store.plan_input("job-plan", 0, 30, [(0, 15, "a.mp4"), (15, 15, "b.mp4")])
    chunks = store.chunks("job-plan")
    assert [(c.index, c.start, c.frames, c.segment_uri) for c in chunks] == [(0, 0, 15, "a.mp4"), (1, 15, 15, "b.mp4")]
    finish(store, "job-plan", 0, 1)
    with pytest.raises(StoreError, match="done chunk"):
        store.plan_input("job-plan", 0, 30, [(0, 30, "c.mp4")])
    assert len(store.chunks("job-plan")) == 2
    with pytest.raises(StoreError, match="no input 5"):
        store.plan_input("job-plan", 5, 30, [(0, 30, "c.mp4")])


def test_chunk_life(store):
    add(store, "job-chunks", chunks=3)
    store.chunk_started("job-chunks", 0, 0, worker=3, node="node-b", gpu_uuid=None)
    chunk = store.chunks("job-chunks", 0)[0]
    assert (chunk.state, chunk.attempts, chunk.worker, chunk.node, chunk.started) == ("running", 1, 3, "node-b", 1000.0)
    store.chunk_failed("job-chunks", 0, 0, "worker died", final=False)
    assert (store.chunks("job-chunks")[0].state, store.chunks("job-chunks")[0].error) == ("pending", "worker died")
    store.chunk_started("job-chunks", 0, 0, worker=4, node="node-b", gpu_uuid="GPU-2")
    store.chunk_started("job-chunks", 0, 0, worker=5, node="node-c", gpu_uuid="GPU-3")  # a duplicate copy
    assert store.chunks("job-chunks")[0].attempts == 3
    with pytest.raises(StoreError, match="checksum"):
        store.chunk_done("job-chunks", 0, 0, "seg.mp4", "", {}, 4, "node-b", "GPU-2", 1.0, 2.0)
    assert store.chunks("job-chunks")[0].state == "running"
    store.chunk_done("job-chunks", 0, 0, "seg.mp4", "sha256:11", {"decode": 0.5}, 4, "node-b", "GPU-2", 1.0, 2.0)
    store.chunk_done("job-chunks", 0, 0, "seg.mp4", "sha256:22", {}, 5, "node-c", "GPU-3", 1.5, 2.5)  # first wins
    store.chunk_failed("job-chunks", 0, 0, "copy lost", final=True)  # a done chunk stays done
    chunk = store.chunks("job-chunks")[0]
    assert (chunk.state, chunk.checksum, chunk.seconds) == ("done", "sha256:11", {"decode": 0.5})
    assert (chunk.worker, chunk.gpu_uuid, chunk.ended) == (4, "GPU-2", 2.0)
    with pytest.raises(StoreError, match="is done; it cannot start"):
        store.chunk_started("job-chunks", 0, 0, worker=1, node="n", gpu_uuid=None)
    store.chunk_started("job-chunks", 0, 1, worker=1, node="n", gpu_uuid=None)
    store.chunk_failed("job-chunks", 0, 1, "bad frame", final=True)
    assert store.chunk_counts("job-chunks") == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    kinds = [e.kind for e in store.events("job-chunks")]
    assert kinds.count("chunk-retry") == 1 and kinds.count("chunk-failed") == 1
    with pytest.raises(StoreError, match="no chunk 9"):
        store.chunk_started("job-chunks", 0, 9, worker=1, node="n", gpu_uuid=None)


def test_reset_chunk_sends_a_done_chunk_back(store):
    add(store, "job-reset", chunks=2)
    finish(store, "job-reset", 0, 0)
    store.reset_chunk("job-reset", 0, 0, "segment missing at resume")
    chunk = store.chunks("job-reset")[0]
    assert (chunk.state, chunk.checksum, chunk.error) == ("pending", None, "segment missing at resume")
    assert store.events("job-reset")[-1].kind == "chunk-reset"
    with pytest.raises(StoreError, match="cannot be reset: it is pending"):
        store.reset_chunk("job-reset", 0, 1, "?")


def test_recover_requeues_running_chunks_and_lists_unfinished_jobs(store):
    add(store, "low-1", priority=0)
    add(store, "high", priority=5)
    add(store, "low-2", priority=0)
    add(store, "finished", priority=9, chunks=1)
    add(store, "cancelled", priority=9)
    store.set_job_state("low-1", "running")
    store.chunk_started("low-1", 0, 0, worker=1, node="n", gpu_uuid=None)
    store.chunk_started("low-1", 0, 1, worker=2, node="n", gpu_uuid=None)
    finish(store, "low-1", 0, 2)
    finish(store, "finished", 0, 0)
    store.set_job_state("finished", "running")
    store.set_job_state("finished", "done")
    store.set_job_state("cancelled", "cancelled")
    assert store.recover() == ["high", "low-1", "low-2"]
    assert [c.state for c in store.chunks("low-1")] == ["pending", "pending", "done"]
    assert store.events("low-1")[-1].kind == "recovered" and "2 chunk(s)" in store.events("low-1")[-1].message
    assert [j.job_id for j in store.jobs()] == ["finished", "cancelled", "high", "low-1", "low-2"]


def test_retry_requeues_failed_and_cancelled_jobs(store):
    add(store, "job-retry", inputs=2, chunks=3)
    store.set_job_state("job-retry", "running")
    finish(store, "job-retry", 0, 0)
    store.chunk_started("job-retry", 0, 1, worker=1, node="n", gpu_uuid=None)
    store.chunk_failed("job-retry", 0, 1, "decoder error", final=True)
    store.chunk_started("job-retry", 0, 2, worker=1, node="n", gpu_uuid=None)
    store.set_input_state("job-retry", 0, "failed", "chunk 1 failed")
    store.set_input_state("job-retry", 1, "cancelled")
    store.set_job_state("job-retry", "failed", "input 0 failed")
    assert store.retry("job-retry") == 5  # everything but the one done chunk
    job = store.job("job-retry")
    assert (job.state, job.error, job.started, job.finished) == ("queued", None, None, None)
    assert [c.state for c in store.chunks("job-retry", 0)] == ["done", "pending", "pending"]
    assert [(i.state, i.error) for i in store.inputs("job-retry")] == [("pending", None), ("pending", None)]
    assert store.events("job-retry")[-1].kind == "retried"
    with pytest.raises(StoreError) as exc:
        store.retry("job-retry")
    assert one_line_error(exc) == "job job-retry is queued; only failed or cancelled jobs can be retried"
    store.set_job_state("job-retry", "cancelled")
    assert store.retry("job-retry") == 5


def test_retry_refuses_a_done_job(store):
    add(store, "abc", chunks=1)
    finish(store, "abc", 0, 0)
    store.set_job_state("abc", "running")
    store.set_job_state("abc", "done")
    with pytest.raises(StoreError, match="^job abc is done; only failed or cancelled jobs can be retried$"):
        store.retry("abc")
    with pytest.raises(StoreError, match="job abc is done"):
        store.reset_chunk("abc", 0, 0, "checksum mismatch")


def test_job_ids_by_prefix(store):
    for job_id in ("3fa85f64aa", "3fa85f64bb", "9c1e0d2f00", "ab"):
        add(store, job_id)
    assert store.job("9c1e").job_id == "9c1e0d2f00"
    assert store.job("ab").job_id == "ab"  # a full id, however short
    assert store.job("9c1") is None  # a prefix needs 4 characters
    assert store.job("ffff") is None
    with pytest.raises(StoreError) as exc:
        store.job("3fa85f")
    message = one_line_error(exc)
    assert "ambiguous" in message and "3fa85f64aa" in message and "3fa85f64bb" in message
    assert store.job("3fa85f64b").job_id == "3fa85f64bb"


def test_jobs_filter_by_state_and_time(store, clock):
    add(store, "early")
    clock.now = 2000.0
    add(store, "late", priority=-1)
    store.set_job_state("late", "failed", "x")
    assert [j.job_id for j in store.jobs(since=1500.0)] == ["late"]
    assert [j.job_id for j in store.jobs(state="queued")] == ["early"]
    assert [j.job_id for j in store.jobs()] == ["early", "late"]
    with pytest.raises(StoreError, match="unknown job state"):
        store.jobs(state="lost")


def test_events_and_answers(store):
    add(store, "job-log")
    first = store.events("job-log")
    store.event("job-log", "note", "resumed on 4 GPUs")
    later = store.events("job-log", after_id=first[-1].id)
    assert [(e.kind, e.message) for e in later] == [("note", "resumed on 4 GPUs")]
    assert store.answer_of("req-1") is None
    store.answer("req-1", "submit", "job-log", True, "queued as job-log")
    store.answer("req-2", "cancel", None, False, "no job zzzz")
    assert store.answer_of("req-1") == (True, "queued as job-log", "job-log")
    assert store.answer_of("req-2") == (False, "no job zzzz", None)
    with pytest.raises(StoreError, match="already exists"):
        add(store, "job-log")
    with pytest.raises(StoreError, match="JSON"):
        store.add_job("not-json", "x", {"when": object()}, 0, [])


def test_integrity_check_finds_broken_invariants(store, tmp_path):
    add(store, "job-ok", chunks=2)
    finish(store, "job-ok", 0, 0)
    finish(store, "job-ok", 0, 1)
    store.set_job_state("job-ok", "running")
    store.set_job_state("job-ok", "done")
    add(store, "job-bad", chunks=2)
    assert store.integrity_check() == []
    raw = sqlite3.connect(store.path, isolation_level=None)  # what no store method would write
    raw.execute("UPDATE chunks SET state = 'done', checksum = NULL WHERE job_id = 'job-bad' AND idx = 0")
    raw.execute("UPDATE chunks SET state = 'lost' WHERE job_id = 'job-bad' AND idx = 1")
    raw.execute("UPDATE chunks SET state = 'pending' WHERE job_id = 'job-ok' AND idx = 1")
    raw.execute("INSERT INTO events (job_id, time, kind, message) VALUES ('nobody', 0, 'x', 'y')")
    raw.close()
    problems = store.integrity_check()
    assert "chunks: unknown state 'lost'" in problems
    assert "chunk 0 of input 0 of job job-bad is done without a checksum" in problems
    assert "job job-ok is done but 1 of its chunks are not" in problems
    assert "a events row refers to a missing jobs row" in problems


def test_the_store_serves_other_threads(store):
    add(store, "job-thread")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(store.job("job-thread").state))
    thread.start()
    thread.join()
    assert seen == ["queued"]


# --- schema versions ---------------------------------------------------------------------------

def schema_version(path: Path) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    finally:
        raw.close()


def test_a_version_0_store_is_upgraded_on_open(tmp_path):
    raw = sqlite3.connect(tmp_path / DB_NAME)  # version 0, written by hand: a meta table and no schema yet
    raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    raw.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    raw.commit()
    raw.close()
    with JobStore(tmp_path) as job_store:
        add(job_store, "after-upgrade")
    assert schema_version(tmp_path / DB_NAME) == SCHEMA_VERSION == 2
    with JobStore(tmp_path, readonly=True) as reader:
        assert reader.job("after-upgrade").state == "queued"


def add_owner_column(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'nobody'")


NEXT = SCHEMA_VERSION + 1  # a version after this code's, with a step of the test's own


def test_a_migration_step_keeps_the_data(tmp_path, monkeypatch):
    with JobStore(tmp_path) as job_store:
        add(job_store, "old-job", inputs=2)
        finish(job_store, "old-job", 1, 2)
        before = everything(job_store, "old-job")
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", NEXT)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION, add_owner_column)
    with JobStore(tmp_path) as job_store:
        assert everything(job_store, "old-job") == before
        assert job_store.integrity_check() == []
    assert schema_version(tmp_path / DB_NAME) == NEXT
    raw = sqlite3.connect(tmp_path / DB_NAME)
    assert raw.execute("SELECT owner FROM jobs").fetchall() == [("nobody",)]
    raw.close()
    monkeypatch.undo()  # this code again, one version behind the store
    for readonly in (False, True):
        with pytest.raises(StoreError) as exc:
            JobStore(tmp_path, readonly=readonly)
        assert f"schema version {NEXT}, newer than this facefleet's ({SCHEMA_VERSION})" in one_line_error(exc)


def test_a_failed_migration_changes_nothing(tmp_path, monkeypatch):
    with JobStore(tmp_path) as job_store:
        add(job_store, "kept")

    def half_done(db: sqlite3.Connection) -> None:
        add_owner_column(db)
        db.execute("ALTER TABLE no_such_table ADD COLUMN x TEXT")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", NEXT)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION, half_done)
    with pytest.raises(StoreError, match="no_such_table"):
        JobStore(tmp_path)
    monkeypatch.undo()
    assert schema_version(tmp_path / DB_NAME) == SCHEMA_VERSION
    with JobStore(tmp_path) as job_store:
        assert job_store.job("kept").state == "queued"
        assert job_store.integrity_check() == []
    raw = sqlite3.connect(tmp_path / DB_NAME)
    assert "owner" not in [row[1] for row in raw.execute("PRAGMA table_info(jobs)")]
    raw.close()


def v1_store(path: Path) -> None:
    """A store as version 1 of the code left it: a job with a done chunk (attempts 0: that
    controller never recorded sends), a chunk started twice and running, one pending."""
    raw = sqlite3.connect(path / DB_NAME)
    for statement in store_module.SCHEMA_V1:
        raw.execute(statement)
    raw.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    raw.execute("INSERT INTO jobs VALUES ('old', 1, 'old', '{}', 'running', 0, 1.0, 2.0, NULL, NULL)")
    raw.execute("INSERT INTO inputs VALUES ('old', 0, 'in.mp4', 'out.mp4', 'running', 30, NULL)")
    raw.executemany(
        "INSERT INTO chunks (job_id, input_index, idx, start, frames, state, attempts, worker, node, gpu_uuid, "
        "started, ended, seconds, segment_uri, checksum, error, faces) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("old", 0, 0, 0, 10, "done", 0, 1, "node-a", None, 3.0, 4.0, '{"total": 1.0}', "s0.mp4", "sha256:aa", None, 2),
            ("old", 0, 1, 10, 10, "running", 2, 2, "node-b", "GPU-2", 5.0, None, "{}", "s1.mp4", None, None, 0),
            ("old", 0, 2, 20, 10, "pending", 0, None, None, None, None, None, "{}", "s2.mp4", None, None, 0),
        ],
    )
    raw.commit()
    raw.close()


def test_a_version_1_store_migrates_to_2_with_its_chunks_readable(tmp_path):
    v1_store(tmp_path)
    with pytest.raises(StoreError, match="schema version 1, older"):
        JobStore(tmp_path, readonly=True)
    with JobStore(tmp_path, clock=Clock(100.0)) as job_store:
        assert job_store.integrity_check() == []
        chunks = job_store.chunks("old")
        assert [(c.state, c.attempts, c.stage_times) for c in chunks] == [("done", 0, {}), ("running", 2, {}), ("pending", 0, {})]
        assert chunks[0].seconds == {"total": 1.0} and chunks[0].faces == 2
        # the one send version 1 knew of (the running chunk's last) is its attempt row
        [kept] = job_store.attempts("old")
        assert (kept.index, kept.attempt, kept.worker, kept.state, kept.started) == (1, 2, 2, "running", 5.0)
        job_store.recover()
        assert job_store.attempts("old")[0].state == "lost"
        assert job_store.chunk_started("old", 0, 1, worker=3, node="node-c", gpu_uuid=None) == 3
    assert schema_version(tmp_path / DB_NAME) == SCHEMA_VERSION == 2
    with JobStore(tmp_path, readonly=True) as reader:
        assert [a.attempt for a in reader.attempts("old", 0, 1)] == [2, 3]
        assert reader.chunk("old", 0, 1).state == "running"


def test_every_attempt_is_recorded(store, clock):
    add(store, "job-tries", chunks=2)
    assert store.chunk_started("job-tries", 0, 0, worker=1, node="node-a", gpu_uuid="GPU-1") == 1
    clock.now = 1001.0
    store.chunk_failed("job-tries", 0, 0, "simulated failure of chunk 0", final=False, worker=1)
    assert (store.chunk("job-tries", 0, 0).state, store.chunk("job-tries", 0, 0).attempts) == ("pending", 1)
    clock.now = 1002.0
    assert store.chunk_started("job-tries", 0, 0, worker=2, node="node-b", gpu_uuid="GPU-2") == 2
    assert store.chunk_started("job-tries", 0, 0, worker=1, node="node-a", gpu_uuid="GPU-1") == 3  # a tail copy
    clock.now = 1003.0
    store.chunk_failed("job-tries", 0, 0, "its worker died", final=False, worker=1)  # the copy died: still running
    assert store.chunk("job-tries", 0, 0).state == "running"
    store.chunk_done("job-tries", 0, 0, "seg.mp4", "sha256:1", {"total": 1.0}, 2, "node-b", "GPU-2", 1002.0, 1003.0,
                     stage_times={"decode": [1002.1, 1002.9]})
    chunk = store.chunk("job-tries", 0, 0)
    assert (chunk.state, chunk.attempts, chunk.worker, chunk.stage_times) == ("done", 3, 2, {"decode": [1002.1, 1002.9]})
    tries = [(a.attempt, a.worker, a.state, a.error, a.started, a.ended) for a in store.attempts("job-tries")]
    assert tries == [
        (1, 1, "failed", "simulated failure of chunk 0", 1000.0, 1001.0),
        (2, 2, "done", None, 1002.0, 1003.0),
        (3, 1, "failed", "its worker died", 1002.0, 1003.0),
    ]
    # two copies running, one finishes: the other is stopped; a call-off is no failure
    store.chunk_started("job-tries", 0, 1, worker=1, node="node-a", gpu_uuid=None)
    store.chunk_started("job-tries", 0, 1, worker=2, node="node-b", gpu_uuid=None)
    store.chunk_done("job-tries", 0, 1, "seg1.mp4", "sha256:2", {}, 1, "node-a", None, 1003.0, 1004.0)
    assert [a.state for a in store.attempts("job-tries", 0, 1)] == ["done", "stopped"]
    store.chunk_failed("job-tries", 0, 1, "called off", final=False, worker=2, stopped=True)
    assert store.chunk("job-tries", 0, 1).state == "done"
    kinds = [e.kind for e in store.events("job-tries")]
    assert kinds.count("chunk-retry") == 2 and "chunk-failed" not in kinds
    assert store.integrity_check() == []


def test_a_reader_refuses_an_old_or_foreign_file(tmp_path):
    with pytest.raises(StoreError, match="no job store in"):
        JobStore(tmp_path / "none", readonly=True)
    raw = sqlite3.connect(tmp_path / DB_NAME)
    raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    raw.commit()
    with pytest.raises(StoreError, match="older than this facefleet's"):
        JobStore(tmp_path, readonly=True)
    raw.execute("CREATE TABLE photos (x)")
    raw.execute("DROP TABLE meta")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not a facefleet job store"):
        JobStore(tmp_path)


def test_a_store_opens_in_wal_mode_with_full_sync(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


# --- a reader beside the writer ----------------------------------------------------------------

READER = """
import sys
from pathlib import Path
from facefleet.jobs.store import JobStore
state, total = Path(sys.argv[1]), int(sys.argv[2])
reader = JobStore(state, readonly=True)
(state / "ready").touch()
reads, last_done, seen = 0, 0, set()
while True:
    stopping = (state / "stop").exists()
    with reader.snapshot():
        job = reader.job("job-busy")
        counts = reader.chunk_counts("job-busy")
        chunks = reader.chunks("job-busy")
    done = [c for c in chunks if c.state == "done"]
    assert sum(counts.values()) == len(chunks) == total, (counts, len(chunks))
    assert counts["done"] == len(done) >= last_done, (counts, last_done)
    assert all(c.checksum for c in done), "a done chunk without its checksum"
    assert job.state != "done" or len(done) == total, "a done job with chunks left"
    if reads % 25 == 0:
        assert reader.integrity_check() == []
    last_done, reads = len(done), reads + 1
    seen.add(last_done)
    if stopping:
        break
print(reads, last_done, len(seen))
"""


def test_a_reader_never_sees_an_error_or_a_torn_state(tmp_path):
    total = 300
    with JobStore(tmp_path) as writer:
        add(writer, "job-busy", chunks=total)
        reader = run_python(READER, str(tmp_path), str(total))
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists() and reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.set_job_state("job-busy", "running")
        for index in range(total):
            finish(writer, "job-busy", 0, index)
            if index % 10 == 0:
                writer.event("job-busy", "progress", f"{index} chunks done")
        writer.set_job_state("job-busy", "done")
        (tmp_path / "stop").touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    reads, last_done, states_seen = map(int, out.split())
    assert last_done == total and states_seen > 2, out  # it read while the writer wrote


PUTTER = """
import sys, time
from facefleet.jobs.store import Inbox
inbox, start = Inbox(sys.argv[1]), float(sys.argv[2])
while time.time() < start:
    pass
print(" ".join(inbox.put("submit", {"n": n, "by": sys.argv[3]}) for n in range(int(sys.argv[4]))))
"""


def test_two_processes_put_at_once_and_both_land(tmp_path):
    start = time.time() + 1.0  # both start at this instant, into an inbox not made yet
    putters = [run_python(PUTTER, str(tmp_path), str(start), name, "50") for name in ("a", "b")]
    ids = []
    for putter in putters:
        out, err = putter.communicate(timeout=60)
        assert putter.returncode == 0, err
        ids += out.split()
    taken = Inbox(tmp_path).take()
    assert len(ids) == 100 and sorted(r.request_id for r in taken) == sorted(ids)
    assert [r.time for r in taken] == sorted(r.time for r in taken)
    spans = {name: [r.time for r in taken if r.payload["by"] == name] for name in ("a", "b")}
    assert min(spans["a"]) < max(spans["b"]) and min(spans["b"]) < max(spans["a"])  # they did put at once


# --- the inbox ---------------------------------------------------------------------------------

def test_inbox_round_trip_and_garbled_files(tmp_path):
    inbox = Inbox(tmp_path)
    assert inbox.take() == [] and inbox.pending() == []
    first = inbox.put("submit", {"inputs": ["a.mp4"]})
    second = inbox.put("cancel", {"job": "3fa8"})
    (inbox.dir / "garbled.json").write_text('{"request_id": "garbled", "kind": "sub')
    (inbox.dir / "f00d.json").write_text(json.dumps({"request_id": "other", "kind": "x", "payload": {}, "time": 1}))
    (inbox.dir / "binary.json").write_bytes(b"\xff\xfe\x00")
    (inbox.dir / ".half.tmp").write_text("{")  # a put that died before its rename
    assert [r.request_id for r in inbox.pending()] == [first, second]
    assert (inbox.dir / "garbled.json").exists()  # readers move nothing
    taken = inbox.take()
    assert [(r.request_id, r.kind, r.payload) for r in taken] == [
        (first, "submit", {"inputs": ["a.mp4"]}),
        (second, "cancel", {"job": "3fa8"}),
    ]
    assert sorted(p.name for p in inbox.bad_dir.iterdir()) == ["binary.json", "f00d.json", "garbled.json"]
    inbox.done(taken[0])
    assert [r.request_id for r in inbox.take()] == [second]


@pytest.mark.parametrize(
    "call, code, said",
    [
        ("write", errno.ENOSPC, "the disk holding {} is full (No space left on device)"),
        ("replace", errno.EROFS, "state dir {} is read-only"),
    ],
)
def test_inbox_put_that_fails_leaves_no_file(tmp_path, monkeypatch, call, code, said):
    inbox = Inbox(tmp_path)

    def refuse(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, refuse)
    with pytest.raises(StoreError) as exc:
        inbox.put("submit", {"inputs": ["a.mp4"]})
    monkeypatch.undo()
    assert one_line_error(exc).startswith(said.format(tmp_path))
    assert list(inbox.dir.iterdir()) == []


# --- full disks and read-only filesystems ------------------------------------------------------

def test_a_full_database_refuses_the_write_and_keeps_earlier_data(tmp_path):
    with JobStore(tmp_path) as job_store:
        add(job_store, "before", inputs=2, chunks=4)
        finish(job_store, "before", 0, 1)
        before = everything(job_store, "before")
        job_store.cap_pages(1)  # no page more than it has now: SQLITE_FULL, as on a full disk
        with pytest.raises(StoreError) as exc:
            job_store.add_job("big", "big", {"blob": "x" * 200_000}, 0, [("in.mp4", "out.mp4")])
        assert one_line_error(exc).startswith(f"the disk holding {tmp_path} is full (database or disk is full)")
        with pytest.raises(StoreError, match="full"):
            job_store.plan_input("before", 1, 4000, [(i, 1, f"segment-{i:05d}.mp4") for i in range(4000)])
        assert job_store.job("big") is None
        assert everything(job_store, "before") == before
        assert job_store.integrity_check() == []
        job_store.cap_pages(1 << 30)  # space again: the store goes on
        job_store.add_job("big", "big", {"blob": "x" * 200_000}, 0, [("in.mp4", "out.mp4")])
    with JobStore(tmp_path, readonly=True) as reader:
        assert reader.integrity_check() == []
        assert [j.job_id for j in reader.jobs()] == ["before", "big"]


def test_a_read_only_store_refuses_writes_in_one_line(store):
    add(store, "job-ro")
    with JobStore(store.state_dir, readonly=True) as reader:
        with pytest.raises(StoreError) as exc:
            reader.set_job_state("job-ro", "cancelled")
        assert "open read-only" in one_line_error(exc)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._db.execute("DELETE FROM jobs")  # not even SQLite itself could write: mode=ro
    assert store.job("job-ro").state == "queued"


def test_a_state_dir_that_cannot_be_made(tmp_path):
    with pytest.raises(StoreError) as exc:  # sysfs refuses new files, even to root
        JobStore("/sys/facefleet-state")
    assert "/sys/facefleet-state" in one_line_error(exc)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError) as exc:
        JobStore(tmp_path / "file" / "state")
    assert str(tmp_path / "file" / "state") in one_line_error(exc)
    with pytest.raises(StoreError):
        Inbox(tmp_path / "file").put("submit", {})


def in_a_mount(script: str, mnt: Path, size: str) -> dict:
    """Run SCRIPT in a mount namespace of its own, with a tmpfs of SIZE at MNT ($MNT), and
    return what it printed as JSON. Skips where namespaces or mounts are not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    shell = f'mkdir -p "$MNT" && mount -t tmpfs -o size={size} tmpfs "$MNT" && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh"]
    env = {**os.environ, "MNT": str(mnt)}
    probe = subprocess.run([*command, "true"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    process = run_python(script, prefix=command, env=env)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out)


FULL_TMPFS = """
import json, os, sys
from facefleet.jobs.store import Inbox, JobStore, StoreError
mnt = os.environ["MNT"]
store = JobStore(mnt)
store.add_job("first", "first", {}, 0, [("in.mp4", "out.mp4")])
store.plan_input("first", 0, 30, [(0, 10, "a"), (10, 10, "b"), (20, 10, "c")])
before = store.chunks("first")
errors = []
for n in range(1000):
    try:
        store.add_job(f"filler-{n}", "f", {"blob": "x" * 20000}, 0, [])
    except StoreError as exc:
        errors.append(str(exc))
        break
result = {"store_error": errors, "jobs": len(store.jobs()), "check": store.integrity_check()}
result["kept"] = store.chunks("first") == before
store.close()
result["check_reopened"] = JobStore(mnt, readonly=True).integrity_check()
inbox = Inbox(mnt + "/more")
try:
    for n in range(1000):
        inbox.put("submit", {"blob": "x" * 20000})
except StoreError as exc:
    result["inbox_error"] = str(exc)
result["left"] = sorted(name for name in os.listdir(inbox.dir) if not name.endswith(".json"))
print(json.dumps(result))
"""


def test_a_really_full_disk(tmp_path):
    result = in_a_mount(FULL_TMPFS, tmp_path / "small", "400k")
    assert result["store_error"] and "is full" in result["store_error"][0], result
    assert result["check"] == result["check_reopened"] == [] and result["kept"]
    assert result["jobs"] > 1
    assert "is full" in result["inbox_error"] and result["left"] == []


READ_ONLY_FS = """
import json, os, subprocess
from facefleet.jobs.store import Inbox, JobStore, StoreError
mnt = os.environ["MNT"]
with JobStore(mnt) as store:
    store.add_job("kept", "kept", {}, 0, [("in.mp4", "out.mp4")])
request = Inbox(mnt).put("submit", {"inputs": ["in.mp4"]})
subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
result = {}
for name, attempt in [
    ("writer", lambda: JobStore(mnt)),
    ("new_dir", lambda: JobStore(mnt + "/new")),
    ("put", lambda: Inbox(mnt).put("cancel", {})),
    ("reader", lambda: JobStore(mnt, readonly=True)),
]:
    try:
        attempt()
        result[name] = "no error"
    except StoreError as exc:
        result[name] = str(exc)
result["pending"] = [r.request_id for r in Inbox(mnt).pending()] == [request]
print(json.dumps(result))
"""


def test_a_read_only_filesystem(tmp_path):
    mnt = tmp_path / "ro"
    result = in_a_mount(READ_ONLY_FS, mnt, "4m")
    for name in ("writer", "new_dir", "put"):
        assert result[name].startswith(f"state dir {mnt}") and "is read-only" in result[name], result
    assert "filesystem is read-only" in result["reader"]
    assert result["pending"]


# --- size ----------------------------------------------------------------------------------

def test_200_jobs_read_fast(tmp_path):
    with JobStore(tmp_path) as writer:
        for n in range(200):
            add(writer, f"job{n:04d}", priority=n % 3, inputs=3, chunks=20)
            finish(writer, f"job{n:04d}", 1, 7)
    started = time.perf_counter()
    with JobStore(tmp_path, readonly=True) as reader:
        listed = reader.jobs()
        queued = reader.jobs(state="queued")
        with reader.snapshot():
            job = reader.job("job0123")
            inputs = reader.inputs(job.job_id)
            chunks = reader.chunks(job.job_id)
            counts = reader.chunk_counts(job.job_id)
            events = reader.events(job.job_id)
    elapsed = time.perf_counter() - started
    assert len(listed) == len(queued) == 200 and len(inputs) == 3 and len(chunks) == 60 and len(events) == 4
    assert counts == {"pending": 59, "running": 0, "done": 1, "failed": 0} and set(counts) == set(CHUNK_STATES)
    assert elapsed < 1.0, f"reading took {elapsed:.3f} s"
    assert (tmp_path / DB_NAME).stat().st_size < 20 * 2**20


def test_a_reader_of_a_store_being_created_is_told_so(tmp_path):
    (tmp_path / DB_NAME).touch()  # the writer created the file and has not written its tables yet
    with pytest.raises(StoreError, match="a controller is creating it"):
        JobStore(tmp_path, readonly=True)
