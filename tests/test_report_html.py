"""The HTML reports: one self-contained file (no script, nothing fetched), the plots
drawn, the diagnosis written in words, simulated numbers labelled, and the page loaded
in headless Chromium (drawn SVG, no console errors, a screenshot).

Chromium is driven through its DevTools protocol over a pipe (--remote-debugging-pipe):
no network and no extra package. Without a Chromium the browser test is skipped;
bench/install_chromium.sh installs one. FACEFLEET_SCREENSHOT_DIR keeps the screenshots."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from facefleet.report.html import nice_ticks, render_cluster_report, render_job_report
from facefleet.report.tables import SampleLog, write_job_data

from test_report_tables import sample, synthetic_job

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A state dir with three jobs of the last two days: a troubled one (decode-bound,
    a slow worker on node-b, a hot GPU, memory near full), an idle one and a GPU-bound one."""
    root = tmp_path_factory.mktemp("state")
    now = time.time()
    synthetic_job(root / "jobs" / "a", gpus=4, chunks=30, nodes=("node-a", "node-b"), slow_worker=2, throttle_gpu=1,
                  memory_frac=0.93, util=45, stage_ms={"decode": 30, "detect": 8, "anonymize": 3, "encode": 4},
                  t0=now - 30 * 3600, job_id="a")
    synthetic_job(root / "jobs" / "b", gpus=4, chunks=3, nodes=("node-a", "node-b"), util=40, t0=now - 5 * 3600,
                  job_id="b")
    synthetic_job(root / "jobs" / "c", gpus=4, chunks=12, nodes=("node-a", "node-b"), util=95, t0=now - 600,
                  job_id="c")
    # the controller's log of the last 8 hours, a sample a minute: busy around the jobs,
    # idle between them, and an hour in which nobody sampled GPU 3
    busy = [(now - 5 * 3600 - 1800, now - 5 * 3600 + 1800), (now - 3600, now)]
    log = []
    for t in np.arange(now - 8 * 3600, now, 60.0):
        for g in range(4):
            if g == 3 and now - 7 * 3600 <= t < now - 6 * 3600:
                continue
            util = 85.0 + 3 * g if any(a <= t <= b for a, b in busy) else 1.0
            log.append(sample(t, g, ("node-a", "node-b")[g % 2], util))
    SampleLog(root).append(log)
    return root


def test_nice_ticks():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 7.3, 8) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert nice_ticks(12, 13)[0] >= 12 and nice_ticks(12, 13)[-1] <= 13  # a flat range still gets ticks


def test_job_report_is_one_self_contained_file_with_the_plots_and_the_diagnosis(state, tmp_path):
    out = render_job_report(state / "jobs" / "a", tmp_path / "a.html")
    text = out.read_text()
    assert "<script" not in text and not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    charts = re.findall(r'data-chart="([\w-]+)"', text)
    assert charts == ["utilization", "memory", "gantt", "stages", "throughput"]
    assert text.count('class="series"') >= 8  # utilization and memory lines of 4 GPUs
    assert text.count("chunk ") >= 30 and "waiting for decode" in text
    assert "Simulated GPUs." in text
    for kind in ("cpu_decode_bound", "memory_near_limit", "throttling", "straggler_worker"):
        assert f'data-kind="{kind}"' in text, kind
    assert "decoding on the CPU is the limit" in text


def test_cluster_report_aggregates_jobs_gpus_nodes_days_and_idle_stretches(state, tmp_path):
    out = render_cluster_report(state, 24 * 3600, tmp_path / "cluster.html")
    text = out.read_text()
    assert "<script" not in text
    assert re.findall(r'data-chart="([\w-]+)"', text) == ["cluster-utilization", "busy-idle", "jobs-per-day"]
    assert "2 job(s)" in text  # job a is 30 hours old
    assert text.count("host-node") == 0 and "node-a" in text and "node-b" in text
    assert "Longest idle stretches" in text and "<td>GPU 0 · node-a</td>" in text
    everything = render_cluster_report(state, 48 * 3600, tmp_path / "all.html").read_text()
    assert "3 job(s)" in everything


def test_cluster_report_reads_the_sample_log_between_jobs(state, tmp_path):
    log_state = tmp_path / "st"
    shutil.copytree(state / "jobs", log_state / "jobs")
    now = time.time()
    SampleLog(log_state).append([sample(now - 3000 + t, 7, "node-z", util=0.0) for t in range(0, 600, 2)])
    text = render_cluster_report(log_state, 3600, tmp_path / "c.html").read_text()
    assert "node-z" in text and "10.0 min" in text  # the log's GPU sat idle for 10 minutes


# --------------------------------------------------------------------------- in a browser


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3: commands in, fd 4:
    messages out, each a JSON text ended by NUL)."""

    def __init__(self, executable: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # above 10 so that moving them onto 3 and 4 in the child cannot clobber each other
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)

        def child_fds():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=child_fds, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        for fd in (to_child_r, from_child_w, high_r, high_w):
            os.close(fd)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        os.close(self._from_child)


PLOTS_DRAWN = """(() => Array.from(document.querySelectorAll('svg.chart')).map(svg => {
  const box = svg.getBoundingClientRect();
  const marks = Array.from(svg.querySelectorAll('polyline.series, rect.mark, path.mark'))
    .filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
  return {chart: svg.dataset.chart, width: box.width, height: box.height, marks: marks.length};
}))()"""


def load_in_browser(browser: Browser, page: Path, screenshot: Path) -> tuple[list[dict], list[str]]:
    """Open `page`, return (per chart: size and drawn marks, console errors), and save a
    full-page screenshot."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.call(f"{domain}.enable", session)
    browser.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=900, deviceScaleFactor=1,
                 mobile=False)
    browser.call("Page.navigate", session, url=page.resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    charts = browser.call("Runtime.evaluate", session, expression=PLOTS_DRAWN, returnByValue=True)["result"]["value"]
    height = browser.call("Runtime.evaluate", session, expression="document.documentElement.scrollHeight",
                          returnByValue=True)["result"]["value"]
    shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    errors = []
    for event in browser.events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif event.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    browser.events.clear()
    return charts, errors


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium or Chrome on PATH (bench/install_chromium.sh installs Chromium)")
    b = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_reports_draw_in_a_browser_without_console_errors(state, browser, tmp_path):
    keep = os.environ.get("FACEFLEET_SCREENSHOT_DIR")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    pages = {
        "job": render_job_report(state / "jobs" / "a", tmp_path / "job.html"),
        "cluster": render_cluster_report(state, 48 * 3600, tmp_path / "cluster.html"),
    }
    for name, page in pages.items():
        shot = shots / f"report-{name}.png"
        charts, errors = load_in_browser(browser, page, shot)
        assert errors == [], errors
        assert len(charts) >= 3, charts
        for chart in charts:
            assert chart["width"] > 500 and chart["height"] > 100, chart
            assert chart["marks"] > 0, chart
        assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one


def test_a_job_without_chunks_or_samples_still_has_a_report(tmp_path):
    job = {"job_id": "empty", "name": "failed early", "state": "failed", "created": 1.0e9, "started": 1.0e9,
           "finished": 1.0e9 + 2}
    write_job_data(tmp_path / "empty", job, [], [], None)
    text = render_job_report(tmp_path / "empty", tmp_path / "empty.html").read_text()
    assert "No GPU samples were recorded" in text and "No chunks finished" in text and "Simulated GPUs" not in text
