"""The command a user types: a video and an image into a directory, on embedded Ray."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

from facefleet.errors import OutputError

from facefleet.samples import SampleSpec


def run_cli(*args, cwd=None, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "facefleet", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_run_video_and_image_into_directory(sample_factory, data_dir, tmp_path):
    video, _ = sample_factory(SampleSpec(width=320, height=180, frames=30), name="clip one.mp4")
    out = tmp_path / "out"
    proc = run_cli("run", str(video), str(data_dir / "two_people.jpg"), "-o", str(out), "--chunk-frames", "10")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("ok")]
    assert len(lines) == 2
    assert "30 frames" in lines[0] and "provider CPU" in lines[0] and "fps" in lines[0]
    assert "1 frames, 2 faces" in lines[1]
    assert sorted(os.listdir(out)) == ["clip one.mp4", "two_people.jpg"]
    with av.open(str(out / "clip one.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 30
    assert "embedded Ray (127.0.0.1)" in proc.stderr


def test_bad_option_is_one_line_error(tmp_path, data_dir):
    proc = run_cli("run", str(data_dir / "obama.jpg"), "-o", str(tmp_path / "x.jpg"), "--replacewith", "pixelate")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --replacewith must be one of blur, solid, mosaic, none"]
    assert not (tmp_path / "x.jpg").exists()


def test_output_extension_must_match_the_input_kind(tmp_path, data_dir):
    proc = run_cli("run", str(data_dir / "obama.jpg"), "-o", str(tmp_path / "x.mp4"))
    assert proc.returncode == 2 and "matching extension" in proc.stderr


def test_unreachable_cluster_address_fails_fast(tmp_path, data_dir):
    proc = run_cli("run", str(data_dir / "obama.jpg"), "-o", str(tmp_path / "x.jpg"), "--address", "127.0.0.1:1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"]


def test_analyze_pipeline_writes_parquet_tables(sample_factory, tmp_path):
    video, _ = sample_factory(SampleSpec(width=320, height=180, frames=20), name="to analyze.mp4")
    proc = run_cli("run", str(video), "-o", str(tmp_path) + "/", "--pipeline", "analyze", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["to analyze.parquet", "to analyze.tracks.parquet"]


def test_enhance_with_a_trusted_signature_compatible_test_model(sample_factory, tmp_path):
    from fakes import enhancer_model

    model = enhancer_model(tmp_path / "test_enhancer.onnx", mode="invert")
    video, _ = sample_factory(SampleSpec(width=320, height=180, frames=20), name="to enhance.mp4")
    out = tmp_path / "enhanced.mp4"
    proc = run_cli("run", str(video), "-o", str(out), "--pipeline", "enhance,debug", "-q", "--trust-model", f"gfpgan_1.4={model}")
    assert proc.returncode == 0, proc.stderr
    assert "without a checksum check (--trust-model)" in proc.stderr
    assert "trusted (unchecked) model: gfpgan_1.4" in proc.stdout
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 20


def test_missing_model_is_refused_before_ray_starts(data_dir, tmp_path):
    env_home = {"HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "facefleet", "run", str(data_dir / "obama.jpg"), "-o", str(tmp_path / "x.jpg"),
         "--pipeline", "enhance", "--face-enhancer-model", "codeformer"],
        capture_output=True, text=True, env={**os.environ, **env_home, "FACEFLEET_MODELS": ""}, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "not for commercial use" in lines[0]
    assert lines[-1].startswith("error: model codeformer (codeformer.onnx) not found")
    assert "facefleet models fetch codeformer" in lines[-1]
    assert "embedded Ray" not in proc.stderr


def test_ts_input_into_directory_gets_mp4_output_and_runs_without_monitoring(sample_factory, tmp_path):
    """A .ts input (a container facefleet cannot write) run with -o DIR is written as
    NAME.mp4; --no-monitor runs the job with no NVML reporters. (No B-frames: a .ts with
    B-frames fails range decode today, media/decode.py.)"""
    video, _ = sample_factory(SampleSpec(width=320, height=180, frames=24, container="ts", bframes=0), name="clip.ts")
    out = tmp_path / "out"
    proc = run_cli("run", str(video), "-o", str(out) + "/", "-q", "--no-monitor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU monitoring off (--no-monitor)" in proc.stderr
    assert sorted(os.listdir(out)) == ["clip.mp4"]
    assert f"ok  {video} -> {out / 'clip.mp4'}: 24 frames" in proc.stdout
    with av.open(str(out / "clip.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 24
    assert monitoring_cost(proc.stderr) == {
        "reporters": 0, "samples": 0, "reporter_cpu_s": 0.0, "reporter_process_cpu_s": 0.0, "dispatcher_s": 0.0, "sample_log_s": 0.0,
    }


def monitoring_cost(stderr: str) -> dict:
    """The `job.monitoring` block of the summary.json of the run named on `stderr`."""
    match = re.search(r"run kept as job (\S+) in (.+?) \(report:", stderr)
    assert match, stderr
    summary = json.loads((Path(match.group(2)) / "jobs" / match.group(1) / "summary.json").read_text())
    return summary["job"]["monitoring"]


def test_a_monitored_run_records_what_monitoring_cost(sample_factory, tmp_path):
    video, _ = sample_factory(SampleSpec(width=160, height=120, frames=16, gop=8, seed=8), name="monitored.mp4")
    proc = run_cli("run", str(video), "-o", str(tmp_path / "out.mp4"), "-q", "--sample-interval", "0.1", "--gpu-backend", "simulated")
    assert proc.returncode == 0, proc.stderr
    cost = monitoring_cost(proc.stderr)
    assert cost["reporters"] == 1 and cost["samples"] >= 1 and "error" not in cost
    assert 0 < cost["reporter_cpu_s"] <= cost["reporter_process_cpu_s"] < 5
    assert 0 < cost["dispatcher_s"] < 1 and 0 <= cost["sample_log_s"] < 5


def test_run_help_documents_no_monitor():
    proc = run_cli("run", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0
    assert "--no-monitor" in proc.stdout and "measuring monitoring's overhead" in proc.stdout


def test_outputs_named_by_facefleet_get_a_writable_container(tmp_path):
    from facefleet.jobs.inputs import resolve_outputs

    inputs = ["/in/a.ts", "/in/b.mkv", "/in/c.MOV", "/in/d.m4v", "/in/e.avi", "/in/f.webm", "/in/g.png", "/in/h.mp4"]
    got = [Path(o).name for _, o in resolve_outputs(inputs, str(tmp_path))]
    assert got == ["a.mp4", "b.mkv", "c.MOV", "d.m4v", "e.mp4", "f.mp4", "g.png", "h.mp4"]
    assert resolve_outputs(["/in/a.mts"], None) == [("/in/a.mts", "/in/a_anonymized.mp4")]
    assert resolve_outputs(["/in/a.ts"], str(tmp_path / "x.mkv")) == [("/in/a.ts", str(tmp_path / "x.mkv"))]
    assert resolve_outputs(["/in/a.ts"], None, table=True) == [("/in/a.ts", "/in/a_faces.parquet")]
    with pytest.raises(OutputError, match="would both be written to"):
        resolve_outputs(["/in/a.ts", "/in/a.mp4"], str(tmp_path))


@pytest.mark.parametrize("name", ["two  spaces.mp4", "new\nline.mp4", "a\ttab.mp4", "bell\x07.mp4", "[bold]x.mp4"])
def test_summary_names_an_awkward_path_once_on_one_line(name):
    from facefleet.errors import InputError, shown
    from facefleet.jobs.runner import JobOutcome
    from facefleet.report.console import summary_line

    path = f"/in put/{name}"
    failed = summary_line(JobOutcome("j", path, "/out/x.mp4", error=str(InputError(path, "not a video\n  (moov atom not found)"))))
    assert failed == f"FAILED {shown(path)}: not a video (moov atom not found)"
    quoted = summary_line(JobOutcome("j", path, "/out/x.mp4", error=f"cannot open {path!s}: denied\tnow"))
    assert quoted == f"FAILED {shown(path)}: cannot open {shown(path)}: denied now"
    ok = summary_line(JobOutcome("j", path, f"/out/{name}", frames=3, seconds=1.0))
    assert ok.startswith(f"ok  {shown(path)} -> /out/{shown(name)}: 3 frames")
    for line in (failed, quoted, ok):
        assert line.isprintable()


def test_stall_timeout_option_retries_a_hung_chunk(tmp_path):
    """A chunk that hangs on its first send (simulated) is given up after --stall-timeout
    and retried on the restarted worker; without the option it would wait 300 s."""
    proc = run_cli(
        "run", "simulated://40?ms=1&hang=0&hang_tries=1", "-o", str(tmp_path / "out"), "--stall-timeout", "2", "-q",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok  simulated://40" in proc.stdout + proc.stderr
    bad = run_cli("run", "simulated://4?ms=1", "-o", str(tmp_path / "x"), "--stall-timeout", "-1")
    assert bad.returncode != 0 and "--stall-timeout must be 0" in bad.stderr
