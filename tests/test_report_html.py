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
import pyarrow.parquet as pq
import pytest

from facefleet.jobs.spec import ChunkResult
from facefleet.report.html import WIDTH, JobView, gantt_chart, nice_ticks, render_cluster_report, render_job_report
from facefleet.report.tables import CHUNKS_FILE, SampleLog, chunk_row, read_job_data, write_job_data

from test_report_tables import T0, sample, synthetic_job, task, worker

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


# --------------------------------------------------------------------------- chunks per worker


def timed_chunk(index: int, worker_id: int, start: float, stages: dict, total: float, back: float = 0.05) -> dict:
    """A chunk row whose stages worked at known times: `stages` maps a stage to (busy
    seconds, first, last), the times in seconds after `start`; no stages: an older row."""
    seconds = {stage: busy for stage, (busy, _, _) in stages.items()} | {"total": total}
    result = ChunkResult("job", index, "", 50, 10, seconds, worker_id, {"detect": "CUDA", "landmarks": "CUDA"},
                         started=start, batch_size=8,
                         stage_times={stage: (start + a, start + b) for stage, (_, a, b) in stages.items()})
    return chunk_row(task(index), result, worker(worker_id, worker_id), 1, start + total + back)


PIPELINED = {"decode": (0.5, 0.0, 0.6), "detect": (0.3, 0.2, 0.9), "landmarks": (0.1, 0.25, 0.95),
             "anonymize": (0.1, 0.3, 1.0), "encode": (0.4, 0.4, 1.1)}  # total 1.2: nothing works 1.1 to 1.2
GAPPED = {"decode": (0.3, 0.0, 0.3), "detect": (0.2, 0.5, 0.8), "encode": (0.3, 0.55, 0.9)}  # nothing 0.3 to 0.5


def gantt_of(job_dir: Path, rows: list[dict]) -> str:
    """The Gantt of a job of `rows` without GPU samples that ran from T0 to T0 + 10 s: its
    time axis starts at 0 (T0)."""
    job = {"job_id": "job", "name": "timed", "state": "done", "created": T0, "started": T0, "finished": T0 + 10}
    write_job_data(job_dir, job, rows, [], None)
    return gantt_chart(JobView.of(read_job_data(job_dir)))


def px(t: float) -> float:
    """Where Unix time `t` falls on gantt_of's charts: the plot spans T0..T0 + 10 s between
    170 (left margin) and WIDTH - 16 (right margin)."""
    return 170 + (t - T0) / 10 * (WIDTH - 170 - 16)


def marks(svg: str, **attrs: str) -> list[dict]:
    """The rects of `svg` whose attributes include `attrs` (data_chunk= for data-chunk=),
    with x, y, width and height as floats, in drawing order."""
    out = []
    for tag in re.findall(r"<rect [^>]*>(?:<title>[^<]*</title>)?", svg):
        found = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        found["title"] = "".join(re.findall(r"<title>([^<]*)</title>", tag))
        if all(found.get(k.replace("_", "-")) == v for k, v in attrs.items()):
            out.append(found | {k: float(found[k]) for k in ("x", "y", "width", "height") if k in found})
    return out


def timed_job(job_dir: Path, chunks: int = 16, workers: int = 2) -> dict:
    """A job whose chunks recorded their stage times, two in flight per worker, one chunk
    from an older worker (no times), GPU samples every half second; returns the summary."""
    rows, free = [], [T0 + 0.5] * (2 * workers)
    for i in range(chunks):
        slot = min(range(len(free)), key=lambda k: free[k])
        slow = 1.0 + 0.4 * (i % 3)  # chunks of uneven cost
        stages = {stage: (busy * slow, a * slow, b * slow) for stage, (busy, a, b) in PIPELINED.items()}
        rows.append(timed_chunk(i, slot % workers, free[slot], {} if i == 5 else stages, 1.2 * slow))
        free[slot] += 1.2 * slow + 0.3
    end = max(free) + 0.5
    samples = [sample(t, g, "node-a", 70.0 + 10 * g) for t in np.arange(T0, end, 0.5) for g in range(workers)]
    job = {"job_id": "job", "name": "timed", "state": "done", "created": T0, "started": T0, "finished": end}
    return write_job_data(job_dir, job, rows, samples, 2.5)


def test_gantt_draws_each_stage_at_its_recorded_times_in_stacked_lanes(tmp_path):
    rows = [timed_chunk(0, 0, T0 + 1, PIPELINED, 1.2), timed_chunk(1, 0, T0 + 3, GAPPED, 1.0),
            timed_chunk(2, 1, T0 + 2, PIPELINED, 1.2)]
    svg = gantt_of(tmp_path / "job", rows)
    assert "lack recorded stage times" not in svg and "data-share" not in svg
    for chunk, start, stages in ((0, T0 + 1, PIPELINED), (1, T0 + 3, GAPPED), (2, T0 + 2, PIPELINED)):
        groups = {"decode": "decode", "detect": "detect", "landmarks": "gpu_other", "anonymize": "cpu_post",
                  "encode": "encode"}
        for stage, (_, a, b) in stages.items():
            [bar] = marks(svg, data_chunk=str(chunk), data_stage=groups[stage])
            assert bar["x"] == pytest.approx(px(start + a), abs=0.01), (chunk, stage)
            assert bar["width"] == pytest.approx(px(start + b) - px(start + a), abs=0.02), (chunk, stage)
    # the stages of chunk 0 overlap in time and are all drawn, each in its own lane of the chunk's bar
    lanes = {stage: marks(svg, data_chunk="0", data_stage=stage)[0]
             for stage in ("decode", "detect", "gpu_other", "cpu_post", "encode")}
    [bare] = marks(svg, data_chunk="0", data_stage="none")
    ys = [lanes[s]["y"] for s in ("decode", "detect", "gpu_other", "cpu_post", "encode")]
    assert ys == sorted(ys) and len(set(ys)) == 5  # stacked top to bottom, none on another
    assert all(bare["y"] <= lane["y"] and lane["y"] + lane["height"] <= bare["y"] + bare["height"]
               for lane in lanes.values())
    assert lanes["decode"]["x"] + lanes["decode"]["width"] > lanes["encode"]["x"]  # decode and encode overlap
    assert "landmarks 0.25–0.95 s" in lanes["gpu_other"]["title"] and "working 0.10 s" in lanes["gpu_other"]["title"]
    # the chunk's bar, bare where no stage works, from its start to its end on the worker, then the return
    assert (bare["x"], bare["width"]) == (pytest.approx(px(T0 + 1), abs=0.01),
                                          pytest.approx(px(T0 + 2.2) - px(T0 + 1), abs=0.02))
    [back] = marks(svg, data_chunk="0", data_stage="return")
    assert back["x"] == pytest.approx(px(T0 + 2.2), abs=0.01)
    # chunk 1 waited from 0.3 s to 0.5 s: no lane covers that stretch, the bare bar does
    stages = [m for m in marks(svg, data_chunk="1") if m.get("data-stage") not in ("none", "return")]
    assert len(stages) == 3
    assert all(m["x"] + m["width"] <= px(T0 + 3.3) + 0.01 or m["x"] >= px(T0 + 3.5) - 0.01 for m in stages)
    [bare] = marks(svg, data_chunk="1", data_stage="none")
    assert bare["x"] < px(T0 + 3.3) and bare["x"] + bare["width"] > px(T0 + 3.5)
    # the legend names the lanes in the report's stage colours
    for label, color in (("decode (CPU thread)", "#4e79a7"), ("detect (GPU)", "#f28e2b"),
                         ("encode (CPU thread)", "#59a14f"), ("waiting (no stage working)", "#bab0ac")):
        assert f'<i style="background:{color}"></i>{label}' in svg, label
    assert lanes["detect"]["fill"] == "#f28e2b" and lanes["encode"]["fill"] == "#59a14f"


def test_gantt_splits_chunks_without_recorded_times_by_shares_and_says_so(tmp_path):
    rows = [timed_chunk(0, 0, T0 + 1, PIPELINED, 1.2), timed_chunk(1, 0, T0 + 3, {}, 1.0),
            timed_chunk(2, 1, T0 + 2, PIPELINED, 1.2)]
    assert rows[1]["decode_start"] is None  # an older worker's chunk: no stage times
    svg = gantt_of(tmp_path / "mixed", rows)
    assert "1 of 3 chunks lack recorded stage times (older data)" in svg
    assert len(marks(svg, data_chunk="0", data_stage="detect")) == 1  # the others keep their times
    assert not marks(svg, data_chunk="1", data_stage="detect") and not marks(svg, data_chunk="1", data_stage="none")
    pieces = [m for m in marks(svg, data_chunk="1") if "data-share" in m]
    assert pieces and pieces[0]["x"] == pytest.approx(px(T0 + 3), abs=0.01)
    assert sum(m["width"] for m in pieces) == pytest.approx(px(T0 + 4) - px(T0 + 3), abs=0.05)
    assert "waiting for decode" in svg  # the share legend is there too

    # a chunks.parquet of schema 1 has no stage time columns at all
    old = tmp_path / "old"
    gantt_of(old, rows)
    table = pq.read_table(old / CHUNKS_FILE)
    pq.write_table(table.drop_columns([c for c in table.column_names if c.endswith(("_start", "_end", "_started",
                                                                                     "_ended"))]), old / CHUNKS_FILE)
    svg = gantt_chart(JobView.of(read_job_data(old)))
    assert "3 of 3 chunks lack recorded stage times" in svg and 'data-stage="detect"' not in svg
    assert "waiting (no stage working)" not in svg and len([m for m in marks(svg) if "data-share" in m]) >= 9


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
    timed_job(tmp_path / "timed")
    pages = {
        "job": render_job_report(state / "jobs" / "a", tmp_path / "job.html"),
        "job-timed": render_job_report(tmp_path / "timed", tmp_path / "job-timed.html"),
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
