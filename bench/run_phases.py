#!/usr/bin/env python3
"""Where the wall time of one `facefleet run` goes, phase by phase: the run is made in this
process with the CLI's own code, and the calls that start and stop things are timed
(starting Ray, the reporters, the workers, the controller's serving of the job, the
closing, Ray's shutdown). The time before the CLI starts (Python start and imports) is
measured from the process's own start time. Each worker's own account of its start
follows (process start to constructor, model sessions, warm-up, NVML lookup).

    python bench/run_phases.py [--json] -- RUN ARGS...   (e.g. -- video.mp4 -o out.mp4 -q)
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path

T0 = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


PHASES: list[tuple[str, float, float]] = []
WORKERS: list[dict] = []  # each worker's own start, as it reported it (WorkerInfo.start_seconds)


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES.append((name, start, time.time()))

    return wrapper


def timed_session(fn):
    """ray_session: its start (up to the yield) and its end (after the body) as two phases."""

    @contextlib.contextmanager
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.time()
        with fn(*args, **kwargs) as cluster:
            PHASES.append(("ray start", start, time.time()))
            try:
                yield cluster
            finally:
                end_start = time.time()
        PHASES.append(("ray shutdown", end_start, time.time()))

    return wrapper


def patch() -> None:
    import ray

    from facefleet.cluster import pool, reporter, runtime
    from facefleet.jobs import controller, session

    runtime.ray_session = timed_session(runtime.ray_session)
    session.start_monitoring = timed("reporters start", session.start_monitoring)
    start_pool = timed("workers start", pool.WorkerPool.__init__)

    def init_pool(self, *args, **kwargs):
        start_pool(self, *args, **kwargs)
        WORKERS.extend({"worker": i.worker_id, **i.start_seconds} for i in self.infos.values())

    pool.WorkerPool.__init__ = init_pool
    pool.WorkerPool.shutdown = timed("workers stop", pool.WorkerPool.shutdown)
    reporter.await_reporters = timed("reporters wait", reporter.await_reporters)
    reporter.stop_reporters = timed("reporters stop", reporter.stop_reporters)
    controller.Controller.resume = timed("controller resume", controller.Controller.resume)
    controller.Controller.serve = timed("job (controller serve)", controller.Controller.serve)
    controller.Controller.close = timed("controller close", controller.Controller.close)
    del ray  # imported here so that its import counts before the CLI's


def main() -> None:
    argv = sys.argv[1:]
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else False
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else argv
    from facefleet.cluster.worker import process_started

    born = process_started() or T0
    patch()
    imported = time.time()
    from facefleet.cli import app

    code = 0
    try:
        app(["run", *run_args], standalone_mode=False)
    except SystemExit as exc:
        code = exc.code or 0
    end = time.time()
    rows = [("python start + imports", born, imported)] + sorted(PHASES, key=lambda p: p[1])
    covered = sum(e - s for name, s, e in rows)
    table = [{"phase": name, "at_s": round(s - born, 2), "seconds": round(e - s, 2)} for name, s, e in rows]
    result = {
        "wall_s": round(end - born, 2), "phases": table, "outside_phases_s": round(end - born - covered, 2),
        "workers": WORKERS, "exit": code,
    }
    if as_json:
        print(json.dumps(result))
    else:
        print(f"wall {result['wall_s']} s (exit {code})")
        for row in table:
            print(f"  {row['phase']:<24} at {row['at_s']:>6.2f} s  {row['seconds']:>6.2f} s")
        print(f"  {'(outside these)':<24}           {result['outside_phases_s']:>6.2f} s")
        for worker in WORKERS:
            print("  worker " + ", ".join(f"{k} {v}" for k, v in worker.items() if k != "worker") + f" s (worker {worker['worker']})")


if __name__ == "__main__":
    main()
