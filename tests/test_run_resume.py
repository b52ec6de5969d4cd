"""`facefleet run` keeps every run in a job store (its own under the default state dir,
or --state-dir); SIGKILLed mid-run, `facefleet run --resume` finishes it with the chunks
done before the kill kept, and the output has the frames of a run that was never
interrupted and kept nothing (--no-state)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from facefleet.jobs.store import JobStore
from facefleet.jobs.submit import job_settings
from facefleet.media.encode import EncodeSettings
from facefleet.pipeline.anonymize import AnonymizeOptions
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec
from localrun import decode_all
from test_jobs import FACEFLEET, cli, done_chunks, kill_group

VIDEO = SampleSpec(width=320, height=240, frames=96, gop=8, seed=5)


def runs_dir() -> Path:
    """Where `facefleet run` keeps its runs by default (conftest points FACEFLEET_STATE at a temporary dir)."""
    return Path(os.environ["FACEFLEET_STATE"]) / "runs"


def start_run(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """`facefleet run ARGS` in the background, in a process group of its own (kill_group ends
    what is left of it, its Ray included); `finish` collects it."""
    return subprocess.Popen([*FACEFLEET, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_run_killed_mid_way_is_finished_by_run_resume(sample_factory, tmp_path):
    src, _ = sample_factory(VIDEO, name="long clip.mp4")
    out = tmp_path / "out.mp4"
    # the same run with no store (--no-state), whose frames the resumed output must have:
    # it depends on nothing below, so it runs meanwhile
    clean = tmp_path / "clean.mp4"
    clean_run = start_run(str(src), "-o", str(clean), "--chunk-frames", "8", "--workers", "1", "-q", "--no-state")
    try:
        killed_mid_way_then_resumed(src, out, clean, clean_run, tmp_path)
    finally:
        kill_group(clean_run)  # whatever of it is left: its Ray


def killed_mid_way_then_resumed(src: Path, out: Path, clean: Path, clean_run: subprocess.Popen, tmp_path: Path) -> None:
    run = subprocess.Popen(  # no --state-dir: the run gets a store of its own under runs/
        [*FACEFLEET, "run", str(src), "-o", str(out), "--chunk-frames", "8", "--workers", "1", "--gpu-backend", "simulated"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not runs_dir().is_dir() or not any(runs_dir().iterdir()) or len(done_chunks(next(runs_dir().iterdir()))) < 3:
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, "the run finished no chunk in 2 minutes"
            time.sleep(0.05)
    finally:
        kill_group(run)
    (state,) = runs_dir().iterdir()
    before = done_chunks(state)
    assert not out.exists()
    # a run's segments are beside its output (as without a store: a cluster's nodes share
    # the outputs' file system, not the driver's state dir), and found there on resume
    assert list(tmp_path.glob(".facefleet-*/*")) and not (state / "work").exists()
    with JobStore(state, readonly=True) as store:
        (job,) = store.jobs()
        assert job.state == "running" and job.name == "run" and job.job_id == state.name
        total = len(store.chunks(job.job_id))
    assert 3 <= len(before) < total

    resumed = cli("run", "--resume", "--workers", "1", "--gpu-backend", "simulated", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the run kept in {state}" in resumed.stderr
    line = next(line for line in resumed.stdout.splitlines() if line.startswith("ok  "))
    assert line.startswith(f"ok  {src} -> {out}: {VIDEO.frames} frames")
    kept, seconds, fps = re.search(r"(\d+) of the frames done before the resume, ([\d.]+) s, ([\d.]+) fps", line).groups()
    assert int(kept) == 8 * len(before)  # 8-frame chunks: the resumed run's fps counts only the frames it processed
    assert abs(float(fps) - (VIDEO.frames - int(kept)) / float(seconds)) <= 0.05 * float(fps) + 0.1
    after = done_chunks(state)
    assert len(after) == total and all(after[key] == before[key] for key in before)  # kept, not redone
    with JobStore(state, readonly=True) as store:
        assert store.job(job.job_id).state == "done" and store.integrity_check() == []
    again = cli("run", "--resume", timeout=60)  # nothing left: says so, starts nothing
    assert again.returncode == 0 and "no unfinished run" in again.stderr

    ran = finish(clean_run, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert [p.name for p in runs_dir().iterdir()] == [state.name]  # --no-state kept nothing
    pts_a, frames_a = decode_all(out)
    pts_b, frames_b = decode_all(clean)
    assert pts_a == pts_b and len(frames_a) == VIDEO.frames
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))


def test_a_run_whose_inputs_are_all_refused_keeps_no_store(tmp_path):
    missing = tmp_path / "missing clip.mp4"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    ran = cli("run", str(missing), str(text), "-o", str(tmp_path / "out"), timeout=60)
    assert ran.returncode == 1
    assert f"FAILED {missing}: file not found" in ran.stdout and f"FAILED {text}" in ran.stdout
    assert "Ray" not in ran.stderr  # refused before Ray started
    assert not runs_dir().exists() or not any(runs_dir().iterdir())


def test_state_dir_keeps_every_run_option(sample_factory, tmp_path):
    """Options submit does not take (they were refused with --state-dir before) are kept
    in the job, and the run kept there gives the frames of the same run without a store
    (--no-state)."""
    src, _ = sample_factory(SampleSpec(width=160, height=120, frames=16, gop=8, seed=6), name="options clip.mp4")
    (tmp_path / "models").mkdir()
    options = [
        "--chunk-frames", "8", "--batch-size", "2", "--face-mask-padding", "1,2,3,4", "--mosaicsize", "6",
        "--replacewith", "mosaic", "--face-detector-angles", "0,180", "--execution-providers", "cpu",
        "--face-enhancer-model", "codeformer", "--face-enhancer-weight", "0.6", "--models-dir", "models",
        "--output-video-quality", "70", "--workers", "1", "--gpu-backend", "simulated",
    ]
    # the run kept in a store and the same run without one (--no-state) are independent: at
    # once, in tmp_path (--models-dir models is relative to it)
    runs = [start_run(str(src), *args, *options, cwd=tmp_path)
            for args in (["-o", "kept.mp4", "--state-dir", "state"], ["-o", "plain.mp4", "-q", "--no-state"])]
    try:
        kept, plain = (finish(proc, timeout=120) for proc in runs)
    finally:
        for proc in runs:
            kill_group(proc)  # whatever of them is left: their Ray
    assert kept.returncode == 0, kept.stderr
    given = PipelineSpec(
        batch_size=2, mask_padding=(1, 2, 3, 4), anonymize=AnonymizeOptions(replacewith="mosaic", mosaic_size=6),
        detector_angles=(0, 180), provider="cpu", enhancer="codeformer", enhancer_weight=0.6, models_dir=str(tmp_path / "models"),
    )
    with JobStore(tmp_path / "state", readonly=True) as store:
        (job,) = store.jobs()
        assert job.state == "done" and store.inputs(job.job_id)[0].output_uri == str(tmp_path / "kept.mp4")
        assert job_settings(job.job_id, job.spec) == (given, EncodeSettings(quality=70), 8)
    assert plain.returncode == 0, plain.stderr
    pts_a, frames_a = decode_all(tmp_path / "kept.mp4")
    pts_b, frames_b = decode_all(tmp_path / "plain.mp4")
    assert pts_a == pts_b and len(frames_a) == 16
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))

    resumed = cli("run", str(src), "--resume", "--state-dir", str(tmp_path / "state"))
    assert resumed.returncode == 2 and "give no inputs" in resumed.stderr


def test_a_run_whose_default_store_cannot_be_made_says_so_in_one_line(sample_factory, tmp_path, monkeypatch):
    src, _ = sample_factory(SampleSpec(width=160, height=120, frames=8, gop=8, seed=7), name="short.mp4")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("FACEFLEET_STATE", str(blocker / "state"))  # under a file: no directory can be made (even as root)
    ran = cli("run", str(src), "-o", str(tmp_path / "out.mp4"), timeout=60)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    (line,) = [line for line in ran.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: cannot keep the run in {blocker / 'state' / 'runs'}") and "--no-state" in line
    assert not (tmp_path / "out.mp4").exists()


def test_an_interrupted_run_says_how_to_finish_it():
    """Ctrl-C (SIGINT) ends a run at once with status 130 and the command that finishes it;
    the run stays unfinished in its store for `run --resume`."""
    import signal

    # the CLI as `python -m facefleet`, with every thread's stack dumped on SIGUSR1: this
    # test once timed out (no exit within 60 s of the SIGINT) in a full suite (2026-12-07),
    # and not in 13 runs of it and 12 of its scenario on their own since, two with the CPU
    # loaded; if it does again, the failure shows where each thread was
    stacks = "import faulthandler, signal; faulthandler.register(signal.SIGUSR1, all_threads=True)"
    cli_main = "import sys; sys.argv[0] = 'facefleet'; from facefleet.cli import main; main()"
    run = subprocess.Popen(
        [FACEFLEET[0], "-c", f"{stacks}; {cli_main}",
         "run", "simulated://4000?ms=10", "-o", "sim-out", "--chunk-frames", "50", "--workers", "1", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not runs_dir().is_dir() or not any(runs_dir().iterdir()) or not done_chunks(next(runs_dir().iterdir())):
            assert run.poll() is None, run.stderr.read()
            assert time.monotonic() < deadline, "no chunk done in 2 minutes"
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        try:
            _, stderr = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGUSR1)
            time.sleep(2)
            kill_group(run)
            _, stderr = run.communicate()
            raise AssertionError(f"no exit within 60 s of SIGINT; its threads then:\n{stderr[-6000:]}") from None
    finally:
        kill_group(run)  # whatever of it is left: the run and its Ray
    (state,) = runs_dir().iterdir()
    assert run.returncode == 130
    assert f"interrupted: the run is kept in {state}; `facefleet run --resume` finishes it" in stderr
    with JobStore(state, readonly=True) as store:
        (job,) = store.jobs()
        assert job.state == "running" and store.integrity_check() == []


def test_run_resume_skips_a_store_in_use_finishes_the_others_with_the_options_given(tmp_path):
    """Two unfinished run stores, one held by a live controller (its lock taken here): the
    held one is skipped with a line saying so, the other is finished, with the options
    given to --resume (--no-monitor here), and its inputs in the summary in order."""
    from facefleet.jobs.controller import ControllerLock
    from facefleet.jobs.store import Inbox
    from facefleet.jobs.submit import JobRequest, dump_settings

    settings = dump_settings(PipelineSpec(), EncodeSettings(), 8)
    outs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for name in ("busy", "idle"):
        inputs = [("simulated://16?ms=1", f"{outs[0]}-{name}"), ("simulated://24?ms=1", f"{outs[1]}-{name}")]
        Inbox(runs_dir() / name).put("submit", JobRequest(name, "run", 0, inputs, settings, work="beside-output").payload())
    held = ControllerLock(runs_dir() / "busy")
    try:
        resumed = cli("run", "--resume", "--workers", "1", "--gpu-backend", "simulated", "--no-monitor", timeout=300)
    finally:
        held.release()
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped: another controller is running on {runs_dir() / 'busy'}" in resumed.stderr
    assert "GPU monitoring off (--no-monitor)" in resumed.stderr
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("ok  ")]
    assert [line.split(": ")[0] for line in lines] == [
        f"ok  simulated://16?ms=1 -> {outs[0]}-idle", f"ok  simulated://24?ms=1 -> {outs[1]}-idle",
    ]
    with JobStore(runs_dir() / "idle", readonly=True) as store:
        assert store.job("idle").state == "done"
    assert not (runs_dir() / "busy" / "facefleet.db").exists()  # untouched: its request still waits
    assert Inbox(runs_dir() / "busy").pending()


def test_finished_run_stores_are_pruned_after_their_keep_time(tmp_path):
    from facefleet.jobs.session import prune_runs
    from facefleet.jobs.store import Inbox
    from facefleet.jobs.submit import JobRequest, dump_settings

    old, fresh, waiting = tmp_path / "old", tmp_path / "fresh", tmp_path / "waiting"
    for state in (old, fresh):
        JobStore(state).close()  # a store with no job left to run
    request = JobRequest("w", "run", 0, [("simulated://8?ms=1", "x")], dump_settings(PipelineSpec(), EncodeSettings(), 8))
    Inbox(waiting).put("submit", request.payload())
    long_ago = time.time() - 40 * 86400
    for path in (old, *old.rglob("*"), waiting, *waiting.rglob("*")):
        os.utime(path, (long_ago, long_ago))
    assert prune_runs(tmp_path, 30 * 86400) == [old]
    assert not old.exists() and fresh.exists() and waiting.exists()  # unfinished runs stay, however old


def test_a_run_on_a_store_another_controller_runs_is_refused_and_leaves_no_request(sample_factory, tmp_path):
    """`run --state-dir` on a store that `serve` (here: its lock) holds stops with one line
    before its request reaches the store's inbox; before, `run` failed and the controller
    then ran the job anyway."""
    from facefleet.jobs.controller import ControllerLock
    from facefleet.jobs.store import Inbox

    src, _ = sample_factory(SampleSpec(width=160, height=120, frames=8, gop=8, seed=8), name="busy.mp4")
    store = tmp_path / "store"
    held = ControllerLock(store)
    try:
        ran = cli("run", str(src), "-o", str(tmp_path / "out.mp4"), "--state-dir", str(store), timeout=60)
    finally:
        held.release()
    assert ran.returncode != 0 and "Traceback" not in ran.stderr
    assert "another controller is running on" in ran.stderr
    assert Inbox(store).pending() == []
    assert not (tmp_path / "out.mp4").exists()
