"""`facefleet run --state-dir`: a one-shot run kept in the job store; SIGKILLed mid-run,
`facefleet run --resume` finishes it with the chunks done before the kill kept, and the
output has the frames of a run that was never interrupted."""

from __future__ import annotations

import subprocess
import time

import numpy as np

from facefleet.jobs.store import JobStore
from facefleet.samples import SampleSpec
from localrun import decode_all
from test_jobs import FACEFLEET, cli, done_chunks, kill_group

VIDEO = SampleSpec(width=320, height=240, frames=96, gop=8, seed=5)


def test_run_killed_mid_way_is_finished_by_run_resume(sample_factory, tmp_path):
    src, _ = sample_factory(VIDEO, name="long clip.mp4")
    state, out = tmp_path / "state", tmp_path / "out.mp4"
    run = subprocess.Popen(
        [*FACEFLEET, "run", str(src), "-o", str(out), "--state-dir", str(state), "--chunk-frames", "8",
         "--workers", "1", "--gpu-backend", "simulated"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(done_chunks(state)) < 3:
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, "the run finished no chunk in 2 minutes"
            time.sleep(0.05)
    finally:
        kill_group(run)
    before = done_chunks(state)
    assert not out.exists()
    with JobStore(state, readonly=True) as store:
        (job,) = store.jobs()
        assert job.state == "running" and job.name == "run"
        total = len(store.chunks(job.job_id))
    assert 3 <= len(before) < total

    resumed = cli("run", "--resume", "--state-dir", str(state), "--workers", "1", "--gpu-backend", "simulated", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"ok  {src} -> {out}" in resumed.stderr
    after = done_chunks(state)
    assert len(after) == total and all(after[key] == before[key] for key in before)  # kept, not redone
    with JobStore(state, readonly=True) as store:
        assert store.job(job.job_id).state == "done" and store.integrity_check() == []

    clean = tmp_path / "clean.mp4"
    ran = cli("run", str(src), "-o", str(clean), "--chunk-frames", "8", "--workers", "1", "-q", timeout=300)
    assert ran.returncode == 0, ran.stderr
    pts_a, frames_a = decode_all(out)
    pts_b, frames_b = decode_all(clean)
    assert pts_a == pts_b and len(frames_a) == VIDEO.frames
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))


def test_state_dir_refuses_settings_the_store_cannot_keep(sample_factory, tmp_path):
    src, _ = sample_factory(VIDEO, name="long clip.mp4")
    result = cli("run", str(src), "-o", str(tmp_path / "o.mp4"), "--state-dir", str(tmp_path / "s"), "--batch-size", "4")
    assert result.returncode == 2
    assert "--state-dir keeps the options" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "facefleet.db").exists()
    resumed = cli("run", str(src), "--resume", "--state-dir", str(tmp_path / "s"))
    assert resumed.returncode == 2 and "give no inputs" in resumed.stderr
