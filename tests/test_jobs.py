"""The job queue with real processes: submit, a controller killed with SIGKILL in the middle
of a 3-video batch, resume, and the outputs against a fault-free run; bad requests
refused at submit time with nothing queued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from facefleet.jobs.spec import JobSpec
from facefleet.jobs.store import Inbox, JobStore, StoreError
from facefleet.samples import SampleSpec
from localrun import decode_all, run_local

FACEFLEET = [sys.executable, "-m", "facefleet"]
VIDEOS = [SampleSpec(width=320, height=240, frames=48 + 8 * i, gop=8, seed=i) for i in range(3)]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*FACEFLEET, *args], capture_output=True, text=True, timeout=timeout)


def start_controller(state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*FACEFLEET, "serve", "--state-dir", str(state), "--gpu-backend", "simulated", "--workers", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the controller and every process it started (its Ray), by its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def done_chunks(state: Path) -> dict[tuple[str, int, int], tuple[float, str]]:
    if not (state / "facefleet.db").exists():
        return {}
    try:
        store = JobStore(state, readonly=True)
    except StoreError:  # the controller is creating it
        return {}
    with store:
        return {
            (c.job_id, c.input_index, c.index): (c.ended, c.checksum)
            for job in store.jobs()
            for c in store.chunks(job.job_id)
            if c.state == "done"
        }


@pytest.fixture(scope="module")
def videos(sample_factory):
    return [sample_factory(spec, name=f"clip{i}.mp4")[0] for i, spec in enumerate(VIDEOS)]


def test_sigkill_of_the_controller_mid_batch_then_resume_recomputes_only_unfinished_chunks(videos, tmp_path):
    # the same batch without faults, its chunks run in this process: it depends on the
    # inputs only, so it runs in a thread while the processes below run (compared at the end)
    clean = tmp_path / "clean"
    clean.mkdir()
    with ThreadPoolExecutor(1) as background:
        reference = background.submit(run_clean, videos, clean)
        killed_then_resumed(videos, tmp_path)
        reference.result()
    out = tmp_path / "out"
    for video in videos:
        pts_a, frames_a = decode_all(out / video.name)
        pts_b, frames_b = decode_all(clean / video.name)
        assert pts_a == pts_b and len(frames_a) == len(frames_b)
        assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))


def run_clean(videos: list[Path], clean: Path) -> None:
    for video in videos:
        run_local(JobSpec(job_id=video.stem, input_uri=str(video), output_uri=str(clean / video.name), chunk_frames=8))


def killed_then_resumed(videos: list[Path], tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    submitted = cli("submit", *map(str, videos), "-o", str(out), "--chunk-frames", "8", "--state-dir", str(state), "--wait", "0")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    controller = start_controller(state)
    try:
        deadline = time.monotonic() + 120
        while len(done_chunks(state)) < 6:  # some chunks of the batch are done, most are not
            assert controller.poll() is None, controller.stderr.read().decode()
            assert time.monotonic() < deadline, "the controller finished no chunk in 2 minutes"
            time.sleep(0.05)
    finally:
        kill_group(controller)
    killed_at = time.time()
    before = done_chunks(state)
    with JobStore(state, readonly=True) as store:
        total = sum(len(store.chunks(job_id, i.index)) for i in store.inputs(job_id))
        assert store.job(job_id).state == "running"
    assert 6 <= len(before) < total
    assert not any(out.glob("*.mp4")) or len(list(out.glob("*.mp4"))) < 3

    resumed = cli("resume", "--state-dir", str(state), "--gpu-backend", "simulated", "--workers", "1", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = done_chunks(state)
    assert len(after) == total
    rerun = {key for key, (ended, _) in after.items() if ended > killed_at}
    assert rerun == set(after) - set(before)  # only the chunks not done were computed again
    assert all(after[key] == before[key] for key in before)  # done chunks kept: same time, same checksum
    with JobStore(state, readonly=True) as store:
        assert store.job(job_id).state == "done"
        assert store.integrity_check() == []
    assert not any((state / "work").iterdir())  # segments removed once the outputs are in place


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--pipeline", "blurify"], "blurify"),
        (["--replacewith", "paint"], "--replacewith must be one of"),
        (["-o", "../outside"], "'..'"),
        (["-o", "/abs/out", "--output-root", "ROOT"], "absolute"),
        (["NOMATCH"], "matches nothing"),
        (["MISSING"], "not found"),
    ],
)
def test_bad_requests_are_refused_at_submit_with_nothing_queued(args, reason, videos, tmp_path):
    state = tmp_path / "state"
    args = [a.replace("ROOT", str(tmp_path / "root")) for a in args]
    inputs = [str(videos[0])]
    if args == ["NOMATCH"]:
        inputs, args = [str(tmp_path / "none-*.mp4")], []
    if args == ["MISSING"]:
        inputs, args = [str(tmp_path / "missing.mp4")], []
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "out")]
    result = cli("submit", *inputs, *args, "--state-dir", str(state), "--wait", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and reason in lines[0]
    assert not (state / "inbox").exists() or not Inbox(state).pending()


def test_submit_from_a_job_file_uses_the_same_options(videos, tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text(f'inputs = ["{videos[0]}"]\noutput = "{tmp_path / "out"}"\npriority = 3\nchunk_frames = 16\nname = "from-file"\n')
    state = tmp_path / "state"
    result = cli("submit", "--from", str(job_file), "--state-dir", str(state), "--wait", "0")
    assert result.returncode == 0, result.stderr
    [request] = Inbox(state).pending()
    assert request.payload["priority"] == 3 and request.payload["name"] == "from-file"
    assert request.payload["settings"]["chunk_frames"] == 16
    job_file.write_text('inputs = ["x.mp4"]\noutput = "o"\nturbo = true\n')
    bad = cli("submit", "--from", str(job_file), "--state-dir", str(tmp_path / "state2"), "--wait", "0")
    assert bad.returncode == 2 and "turbo" in bad.stderr
