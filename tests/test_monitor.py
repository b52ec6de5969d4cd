"""The live monitor: render() as text, the status file, reporters on Ray, and the real
thing in tmux (q and Ctrl-C quit cleanly and give the terminal back)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from gpu_samples import H100, h100_sample
from rich.console import Console

from facefleet.cluster.nvml import GpuSample, SimulatedNvml, simulated_uuid
from facefleet.report.live import STATUS_FILE, UtilizationBar, read_status, render, run_monitor

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0


def gpu(index: int, uuid_: str, utilization: float | None, node: str = "head") -> GpuSample:
    return h100_sample(NOW, uuid_, index, node, utilization_gpu=utilization)


STATUS = {
    "time": NOW - 1,
    "workers": [
        {"worker_id": 0, "node": "head", "gpu_uuid": "GPU-aaaa", "job_id": "j1", "job_name": "clip.mp4", "fps": 40.0},
        {"worker_id": 1, "node": "head", "gpu_uuid": "GPU-aaaa", "job_id": "j2", "job_name": "talk.mov", "fps": 12.5},
        {"worker_id": 2, "node": "head", "gpu_uuid": None, "job_id": None, "job_name": None, "fps": 0.0},
    ],
    "jobs": [
        {"job_id": "j1", "name": "clip.mp4", "state": "running", "frames_done": 150, "frames_total": 300, "fps": 40.0},
        {"job_id": "j2", "name": "talk.mov", "state": "running", "frames_done": 10, "frames_total": 0, "fps": 12.5},
    ],
}


def text_of(renderable, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text()


def row_of(text: str, start: str) -> str:
    rows = [line for line in text.splitlines() if line.lstrip().startswith(start)]
    assert len(rows) == 1, (start, text)
    return rows[0]


def test_real_gpus_one_row_each_with_workers_job_and_fps(tmp_path):
    (tmp_path / STATUS_FILE).write_text(json.dumps(STATUS))
    samples = [gpu(1, "GPU-bbbb", None), gpu(0, "GPU-aaaa", 57.0)]
    text = text_of(render(samples, read_status(tmp_path), source="Ray at 127.0.0.1:6379", now=NOW))
    assert "GPUs: real (NVML)" in text and "Ray at 127.0.0.1:6379" in text
    assert "simulated" not in text
    first, second = row_of(text, "0 "), row_of(text, "1 ")
    assert H100 in first and "57%" in first and "█" in first
    assert "30.5/80 GiB" in first and "412 W" in first and "61 °C" in first
    assert "w0 w1" in first and "clip.mp4, talk.mov" in first and "52.5" in first
    assert "n/a" in second and second.rstrip().endswith("-")  # unknown utilization, no worker
    assert "workers without a GPU row: w2 (idle, 0.0 fps)" in text
    assert "150/300" in row_of(text, "clip.mp4") and "50%" in row_of(text, "clip.mp4")
    assert "10/?" in row_of(text, "talk.mov")


def test_simulated_gpus_are_labelled_simulated():
    sim = SimulatedNvml(gpus=2, node="n1")
    sim.record_busy(sim.devices()[1].uuid, NOW - 1.0, NOW)
    text = text_of(render(sim.sample(NOW), None, now=NOW))
    assert "GPUs: simulated" in text and "not measured" in text
    assert "no controller status" in text
    assert "simulated GPU" in row_of(text, "0 ") and "0%" in row_of(text, "0 ")
    assert "simulated GPU" in row_of(text, "1 ") and "100%" in row_of(text, "1 ")


def test_a_mixed_cluster_marks_the_simulated_rows_and_shows_nodes():
    sim = SimulatedNvml(gpus=1, node="node-b").sample(NOW)
    renamed = [GpuSample(**{**s.to_dict(), "name": "fake", "throttle_reasons": ()}) for s in sim]
    text = text_of(render([gpu(0, "GPU-aaaa", 10.0, node="node-a")] + renamed, None, now=NOW))
    assert "real (NVML) and simulated" in text
    assert "fake (simulated)" in row_of(text, "node-b")
    assert "simulated" not in row_of(text, "node-a")


def test_an_old_status_file_says_so(tmp_path):
    (tmp_path / STATUS_FILE).write_text(json.dumps({**STATUS, "time": NOW - 100}))
    text = text_of(render([gpu(0, "GPU-aaaa", 5.0)], read_status(tmp_path), now=NOW))
    assert "controller status is 100 s old" in text


def test_read_status_tolerates_missing_and_garbled_files(tmp_path):
    assert read_status(None) is None
    assert read_status(tmp_path) is None
    path = tmp_path / STATUS_FILE
    for garbage in ("{not json", "[1, 2]", '"text"', ""):
        path.write_text(garbage)
        assert read_status(tmp_path) is None, garbage
    path.write_text(json.dumps({"time": "late", "workers": [{"worker_id": 3, "fps": "fast"}, 7], "jobs": {"x": 1}}))
    status = read_status(tmp_path)
    assert status["time"] is None and status["jobs"] == []
    assert status["workers"] == [
        {"worker_id": 3, "node": "", "gpu_uuid": None, "job_id": None, "job_name": None, "fps": 0.0}
    ]


def test_the_bar_fills_its_width_in_eighths():
    assert UtilizationBar(50.0).text(10).plain == "█████░░░░░  50%"
    assert UtilizationBar(100.0).text(4).plain == "████ 100%"
    assert UtilizationBar(6.25).text(10).plain.startswith("▋░")  # 5/8 of a cell
    assert UtilizationBar(None).text(10).plain == "n/a"
    narrow = text_of(render([gpu(0, "GPU-aaaa", 57.0)], None, now=NOW), width=80)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "57%" in row_of(narrow, "0 ") and "412 W" in row_of(narrow, "0 ")


def test_once_prints_one_view_of_local_simulated_gpus(tmp_path):
    (tmp_path / STATUS_FILE).write_text(json.dumps(STATUS))
    console = Console(record=True, width=160, color_system=None, file=open(os.devnull, "w"))
    run_monitor(None, tmp_path, once=True, backend="simulated", simulated_gpus=3, console=console)
    text = console.export_text()
    assert "this machine" in text and "GPUs: simulated" in text
    assert [row_of(text, f"{i} ") for i in range(3)]


# --------------------------------------------------------------------------- on Ray


# num_cpus, num_gpus (the reporters take no CPU): test_chunk_attempts.py, test_cluster.py and test_reporter.py run
# on the same embedded Ray (conftest.py)
SHARED_RAY = (2, 2)


@pytest.fixture(scope="module")
def ray_with_reporters(shared_ray):
    from facefleet.cluster.reporter import REPORTER_PREFIX, start_reporters, stop_reporters

    shared_ray(*SHARED_RAY)
    reporters = start_reporters(interval=0.2, backend_kind="simulated", name_prefix=REPORTER_PREFIX)
    try:
        yield reporters
    finally:
        stop_reporters(reporters)


def test_the_monitor_reads_the_named_reporters_of_a_cluster(ray_with_reporters):
    import ray

    from facefleet.cluster.reporter import REPORTER_PREFIX, NvmlReporter
    from facefleet.report.live import ClusterReporters

    # a reporter started by another driver lives in that driver's namespace
    elsewhere = (
        ray.remote(num_cpus=0)(NvmlReporter)
        .options(name=f"{REPORTER_PREFIX}-othernode", namespace="another-controller")
        .remote(0.2, "simulated", node="othernode", simulated_gpus=1)
    )
    try:
        source = ClusterReporters("127.0.0.1:6379")
        deadline = time.monotonic() + 20
        samples = []
        while len(samples) < 3 and time.monotonic() < deadline:
            samples = source.read()
            time.sleep(0.2)
        assert len(samples) == 3 and {s.backend for s in samples} == {"simulated"}
        assert "2 reporter(s)" in source.source
        console = Console(record=True, width=160, color_system=None, file=open(os.devnull, "w"))
        run_monitor("127.0.0.1:6379", None, once=True, console=console)  # uses the Ray already joined
        text = console.export_text()
        assert "2 reporter(s)" in text
        assert len([line for line in text.splitlines() if "simulated GPU" in line]) == 3
        assert row_of(text, "othernode")  # several nodes: a node column
    finally:
        ray.kill(elsewhere)


# --------------------------------------------------------------------------- in tmux

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed: the terminal test needs it")


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check, timeout=10)


@pytest.fixture
def tmux_session(tmp_path):
    """Start the monitor in a new tmux session of its own; yields (name, tmp_path).
    The script records the terminal settings before and after, and the exit code."""
    on_gpu0 = simulated_uuid(0, socket.gethostname())  # the monitor's local simulated GPU 0
    workers = [{**w, "gpu_uuid": on_gpu0 if w["gpu_uuid"] else None} for w in STATUS["workers"]]
    (tmp_path / STATUS_FILE).write_text(json.dumps({**STATUS, "time": time.time(), "workers": workers}))
    name = f"facefleet-monitor-test-{uuid.uuid4().hex[:8]}"
    monitor = (
        f"{sys.executable} -m facefleet.report.live --backend simulated --simulated-gpus 2 "
        f"--interval 0.5 --state-dir {tmp_path}"
    )
    script = (
        f"cd {ROOT}; stty -g > {tmp_path}/before; {monitor} 2> {tmp_path}/stderr; "
        f"echo $? > {tmp_path}/rc; stty -g > {tmp_path}/after"
    )
    tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "40", script)
    try:
        yield name, tmp_path
    finally:
        tmux("kill-session", "-t", name, check=False)  # only this session: gone already when the test passed


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def session_alive(name: str) -> bool:
    return tmux("has-session", "-t", name, check=False).returncode == 0


def shows_table(name: str) -> str | None:
    screen = tmux("capture-pane", "-p", "-t", name, check=False).stdout
    return screen if "simulated GPU" in screen and "workers" in screen else None


@needs_tmux
@pytest.mark.parametrize("key", ["q", "C-c"])
def test_the_monitor_in_a_terminal_quits_on_q_and_ctrl_c(tmux_session, key):
    name, out = tmux_session
    assert wait_for(lambda: shows_table(name), timeout=20), tmux("capture-pane", "-p", "-t", name).stdout
    screen = shows_table(name)
    rows = [line for line in screen.splitlines() if "simulated GPU" in line]
    assert len(rows) == 2 and rows[0].lstrip().startswith("0") and rows[1].lstrip().startswith("1")
    assert "w0 w1" in rows[0] and "clip.mp4, talk.mov" in rows[0] and "52.5" in rows[0]
    assert "w0" not in rows[1] and "facefleet monitor" in screen
    first = screen.splitlines()[0]
    assert wait_for(lambda: (shows_table(name) or "").splitlines()[:1] != [first], timeout=3), "refreshes"
    tmux("send-keys", "-t", name, key)
    assert wait_for(lambda: not session_alive(name), timeout=2), "still running 2 s after the key"
    assert (out / "rc").read_text().strip() == "0"
    assert "Traceback" not in (out / "stderr").read_text()
    assert (out / "before").read_text() == (out / "after").read_text(), "terminal settings restored"
