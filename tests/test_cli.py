"""The command a user types: a video and an image into a directory, on embedded Ray."""

import os
import subprocess
import sys

import av

from facefleet.samples import SampleSpec


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
