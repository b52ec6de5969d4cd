"""`facefleet monitor`: a live terminal view of the GPUs, their workers and the jobs.

`render()` is pure: GPU samples plus the controller's status file in, a rich renderable
out (one row per GPU). `run_monitor()` is the edge: it reads the samples (the NVML
reporters of a Ray cluster, or this machine's GPUs through `open_backend`), reads
`STATE_DIR/live.json` (written by the controller), redraws every `interval` seconds
with rich.live.Live and quits on `q` or Ctrl-C, leaving the terminal as it found it.

live.json, as the controller writes it (atomically):
    {"time": float,
     "workers": [{"worker_id": int, "node": str, "gpu_uuid": str|null,
                  "job_id": str|null, "job_name": str|null, "fps": float}],
     "jobs": [{"job_id": str, "name": str, "state": str,
               "frames_done": int, "frames_total": int, "fps": float}]}
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.live import Live
from rich.table import Table
from rich.text import Text

from facefleet.cluster.nvml import BACKENDS, GIB, GpuSample
from facefleet.errors import FacefleetError

STATUS_FILE = "live.json"
STATUS_STALE_S = 10.0  # an older status file is shown as such
REDISCOVER_S = 10.0  # look for reporters of nodes that joined this often
BAR_WIDTH = 20
QUIT_KEYS = ("q", "Q")
_EIGHTHS = " ▏▎▍▌▋▊▉"
UTIL_MIN_WIDTH = 10  # a 5-cell bar and " 100%"
WRAPPING_COLUMNS = {"name": 9, "util": UTIL_MIN_WIDTH, "job": 8}  # column -> its narrowest

Status = dict[str, Any]


# --------------------------------------------------------------------------- status file


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _worker(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker_id": row.get("worker_id"),
        "node": _text(row.get("node")) or "",
        "gpu_uuid": _text(row.get("gpu_uuid")),
        "job_id": _text(row.get("job_id")),
        "job_name": _text(row.get("job_name")),
        "fps": _number(row.get("fps")) or 0.0,
    }


def _job(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": _text(row.get("job_id")) or "",
        "name": _text(row.get("name")) or "",
        "state": _text(row.get("state")) or "",
        "frames_done": int(_number(row.get("frames_done")) or 0),
        "frames_total": int(_number(row.get("frames_total")) or 0),
        "fps": _number(row.get("fps")) or 0.0,
    }


def read_status(state_dir: Path | str | None) -> Status | None:
    """The controller's live.json in `state_dir`, with every field present and typed;
    None when there is no such file or it cannot be read as that format."""
    if state_dir is None:
        return None
    try:
        data = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    rows = {key: data.get(key) if isinstance(data.get(key), list) else [] for key in ("workers", "jobs")}
    return {
        "time": _number(data.get("time")),
        "workers": [_worker(r) for r in rows["workers"] if isinstance(r, dict)],
        "jobs": [_job(r) for r in rows["jobs"] if isinstance(r, dict)],
    }


# --------------------------------------------------------------------------- render


class UtilizationBar:
    """A utilization bar (eighths of a cell) and its percentage, as wide as its column
    allows (`MIN_BAR` to `width` cells); "n/a" when the GPU does not report it."""

    LABEL = 5  # " 100%"
    MIN_BAR = UTIL_MIN_WIDTH - LABEL

    def __init__(self, percent: float | None, width: int = BAR_WIDTH):
        self.percent = percent
        self.width = width

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        if self.percent is None:
            return Measurement(3, 3)
        return Measurement(self.MIN_BAR + self.LABEL, self.width + self.LABEL).with_maximum(options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.text(min(self.width, max(options.max_width - self.LABEL, 1)))

    def text(self, width: int) -> Text:
        percent = self.percent
        if percent is None:
            return Text("n/a", style="dim")
        fraction = min(max(percent / 100.0, 0.0), 1.0)
        full, part = divmod(round(fraction * width * 8), 8)
        filled = "█" * full + (_EIGHTHS[part] if part else "")
        style = "red" if percent >= 90 else "yellow" if percent >= 50 else "green"
        return Text.assemble((filled, style), ("░" * (width - len(filled)), "dim"), f" {percent:3.0f}%")


def _unit(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _memory(sample: GpuSample) -> str:
    if sample.memory_used is None:
        return "n/a"
    total = f"{sample.memory_total / GIB:.0f}" if sample.memory_total else "?"
    return f"{sample.memory_used / GIB:.1f}/{total} GiB"


def _backend_line(samples: list[GpuSample]) -> Text:
    backends = {s.backend for s in samples}
    if not samples:
        return Text("no GPU samples yet", style="yellow")
    if backends == {"real"}:
        return Text("GPUs: real (NVML)", style="green")
    if backends == {"simulated"}:
        return Text("GPUs: simulated: utilization, power and temperature are modelled, not measured", style="yellow")
    return Text("GPUs: real (NVML) and simulated (rows marked simulated)", style="yellow")


def _status_line(status: Status | None, now: float) -> Text | None:
    if status is None:
        return Text("no controller status (live.json): worker, job and fps columns are empty", style="dim")
    written = status.get("time")
    if written is not None and now - written > STATUS_STALE_S:
        return Text(f"controller status is {now - written:.0f} s old (controller stopped?)", style="yellow")
    return None


def _gpu_name(sample: GpuSample) -> Text:
    if not sample.simulated:
        return Text(sample.name)
    label = sample.name if "simulated" in sample.name.lower() else f"{sample.name} (simulated)"
    return Text(label, style="italic")


def _gpu_table(samples: list[GpuSample], workers: list[dict[str, Any]]) -> Table:
    several_nodes = len({s.node for s in samples}) > 1
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold")
    if several_nodes:
        table.add_column("node", no_wrap=True, max_width=12)
    for name, justify in (
        ("gpu", "right"),
        ("name", "left"),
        ("util", "left"),
        ("memory", "right"),
        ("power", "right"),
        ("temp", "right"),
        ("workers", "left"),
        ("job", "left"),
        ("fps", "right"),
    ):
        # name, job and the bar give way on a narrow terminal; the numbers never wrap
        narrows = WRAPPING_COLUMNS.get(name)
        table.add_column(name, justify=justify, no_wrap=narrows is None, min_width=narrows)
    for s in sorted(samples, key=lambda s: (s.node, s.gpu_index, s.gpu_uuid)):
        on_gpu = [w for w in workers if w["gpu_uuid"] == s.gpu_uuid]
        jobs = sorted({w["job_name"] or w["job_id"] for w in on_gpu if w["job_name"] or w["job_id"]})
        row: list[RenderableType] = [s.node[:12]] if several_nodes else []
        row += [
            str(s.gpu_index),
            _gpu_name(s),
            UtilizationBar(s.utilization_gpu),
            _memory(s),
            _unit(s.power_w, "{:.0f} W"),
            _unit(s.temperature_c, "{:.0f} °C"),
            " ".join(f"w{w['worker_id']}" for w in on_gpu) or "-",
            ", ".join(jobs) or "-",
            f"{sum(w['fps'] for w in on_gpu):.1f}" if on_gpu else "-",
        ]
        table.add_row(*row)
    return table


def _jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold")
    for name, justify in (("job", "left"), ("state", "left"), ("frames", "right"), ("done", "right"), ("fps", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for job in jobs:
        done, total = job["frames_done"], job["frames_total"]
        share = f"{100 * done / total:.0f}%" if total else "-"
        table.add_row(job["name"] or job["job_id"], job["state"], f"{done}/{total or '?'}", share, f"{job['fps']:.1f}")
    return table


def render(samples: list[GpuSample], status: Status | None, source: str = "", now: float | None = None) -> RenderableType:
    """The monitor's screen: a header naming the backend (and `source`), one row per GPU
    with the workers on it, their jobs and summed fps from `status` (see read_status),
    then the jobs. Workers whose GPU has no row are listed under the table."""
    now = time.time() if now is None else now
    workers = status["workers"] if status else []
    header = Text.assemble(("facefleet monitor", "bold"), f"  {time.strftime('%H:%M:%S', time.localtime(now))}")
    if source:
        header.append(f"  {source}", style="dim")
    header.append("  (q quits)", style="dim")
    parts: list[RenderableType] = [header, _backend_line(samples)]
    note = _status_line(status, now)
    if note is not None:
        parts.append(note)
    if samples:
        parts.append(_gpu_table(samples, workers))
    shown = {s.gpu_uuid for s in samples}
    elsewhere = [w for w in workers if w["gpu_uuid"] not in shown]
    if elsewhere:
        listed = ", ".join(f"w{w['worker_id']} ({w['job_name'] or w['job_id'] or 'idle'}, {w['fps']:.1f} fps)" for w in elsewhere)
        parts.append(Text(f"workers without a GPU row: {listed}", style="dim"))
    if status and status["jobs"]:
        parts.append(_jobs_table(status["jobs"]))
    return Group(*parts)


# --------------------------------------------------------------------------- sources


class LocalGpus:
    """This machine's GPUs read directly (no Ray)."""

    def __init__(self, backend: str = "auto", simulated_gpus: int = 1):
        from facefleet.cluster.nvml import open_backend

        self._backend = open_backend(backend, node=socket.gethostname(), simulated_gpus=simulated_gpus)
        fell_back = backend == "auto" and self._backend.backend == "simulated"
        self.source = "this machine" + (", no NVML" if fell_back else "")

    def read(self) -> list[GpuSample]:
        return self._backend.sample()

    def close(self) -> None:
        self._backend.close()


class ClusterReporters:
    """The latest samples of every facefleet reporter (named REPORTER_PREFIX-NODEID, in
    whichever namespace the controller's job runs) on the connected Ray cluster."""

    def __init__(self, address: str, timeout_s: float = 2.0):
        self.address = address
        self.timeout_s = timeout_s
        self._actors: dict[str, Any] = {}
        self._last: dict[str, list[GpuSample]] = {}  # actor name -> its latest samples
        self._found_at = float("-inf")

    @property
    def source(self) -> str:
        return f"Ray at {self.address}, {len(self._actors)} reporter(s)"

    def _discover(self) -> None:
        import ray

        from facefleet.cluster.reporter import REPORTER_PREFIX

        found = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name, namespace = entry["name"], entry.get("namespace")
            if not name.startswith(f"{REPORTER_PREFIX}-"):
                continue
            try:
                found[name] = self._actors.get(name) or ray.get_actor(name, namespace=namespace)
            except ValueError:  # gone between listing and lookup
                continue
        self._actors = found
        self._last = {name: samples for name, samples in self._last.items() if name in found}
        self._found_at = time.monotonic()

    def read(self) -> list[GpuSample]:
        import ray

        if not self._actors or time.monotonic() - self._found_at > REDISCOVER_S:
            self._discover()
        refs = {name: actor.latest.remote() for name, actor in self._actors.items()}
        for name, ref in refs.items():
            try:
                self._last[name] = ray.get(ref, timeout=self.timeout_s)
            except ray.exceptions.RayError:
                pass  # a reporter restarting or gone: keep its last samples until rediscovery
        return [s for samples in self._last.values() for s in samples]

    def close(self) -> None:
        self._actors.clear()


# --------------------------------------------------------------------------- keys


class Keys:
    """Single key presses from stdin when it is a terminal (cbreak mode: no echo, no
    Enter needed, Ctrl-C still interrupts); the terminal's settings come back on exit."""

    def __init__(self, stream: Any = None):
        self._stream = sys.stdin if stream is None else stream
        self._fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> Keys:
        try:
            fd = self._stream.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        if not os.isatty(fd):
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._fd = None

    def wait(self, timeout: float) -> str | None:
        """The next key pressed within `timeout` seconds, else None (sleeps without a TTY)."""
        if self._fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
        if not ready:
            return None
        try:
            data = os.read(self._fd, 1)
        except OSError:
            data = b""
        return data.decode(errors="replace") if data else QUIT_KEYS[0]  # no data: the terminal is gone


def wait_for_quit(keys: Keys, interval: float) -> bool:
    """Wait `interval` seconds; True as soon as a quit key is pressed."""
    deadline = time.monotonic() + interval
    while (left := deadline - time.monotonic()) > 0:
        if keys.wait(left) in QUIT_KEYS:
            return True
    return False


# --------------------------------------------------------------------------- the loop


@contextmanager
def _open_source(address: str | None, backend: str, simulated_gpus: int) -> Iterator[Any]:
    with ExitStack() as stack:
        if address:
            from facefleet.cluster.runtime import ray_session

            stack.enter_context(ray_session(address))
            source: Any = ClusterReporters(address)
        else:
            source = LocalGpus(backend, simulated_gpus)
        stack.callback(source.close)
        yield source


def run_monitor(
    address: str | None,
    state_dir: Path | None,
    interval: float = 1.0,
    once: bool = False,
    backend: str = "auto",
    simulated_gpus: int = 1,
    console: Console | None = None,
) -> None:
    """Show the GPUs until `q` or Ctrl-C (or once, with `once`).

    With `address`, join that Ray cluster and read its facefleet reporters (`backend` is
    then the reporters' business); without, read this machine's GPUs through NVML, or
    `simulated_gpus` simulated ones (backend "simulated", or "auto" without NVML).
    Worker, job and fps columns come from `state_dir/live.json` when it exists.
    """
    if interval <= 0:
        raise FacefleetError("--interval must be positive")
    if backend not in BACKENDS:
        raise FacefleetError(f"--backend must be one of {', '.join(BACKENDS)}")
    console = console or Console()
    try:
        with _open_source(address, backend, simulated_gpus) as source:

            def screen() -> RenderableType:
                return render(source.read(), read_status(state_dir), source.source)

            if once:
                console.print(screen())
                return
            with Keys() as keys, Live(screen(), console=console, auto_refresh=False) as live:
                while not wait_for_quit(keys, interval):
                    live.update(screen(), refresh=True)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facefleet.report.live", description="Live view of the GPUs.")
    parser.add_argument("--address", default=None, help="Ray cluster to read the reporters of (default: this machine)")
    parser.add_argument("--state-dir", type=Path, default=None, help="directory of the controller's live.json")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one view and exit")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="GPU backend without --address")
    parser.add_argument("--simulated-gpus", type=int, default=1, help="simulated GPUs without NVML")
    args = parser.parse_args(argv)
    try:
        run_monitor(args.address, args.state_dir, args.interval, args.once, args.backend, args.simulated_gpus)
    except FacefleetError as exc:
        Console(stderr=True).print(f"error: {exc}", markup=False, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
