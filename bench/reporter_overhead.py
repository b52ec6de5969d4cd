"""The NVML reporter's own cost: CPU % of one core at several sampling intervals.

Runs an NvmlReporter in this process for SECONDS at each interval (0.1, 0.5, 1 s by
default) with the backend available here (real NVML on a GPU machine, simulated
otherwise, or --backend), and reports the sampling thread's CPU time over wall time,
the whole process's CPU over the same time (nothing else runs in it), and the mean CPU
cost of one sample. With the simulated backend a feeder thread records busy intervals
(about 20 per second per GPU, like a worker's stage calls), so the model has work to do.

    .venv/bin/python bench/reporter_overhead.py [--seconds 10] [--tag cpu2]

Writes bench/results/reporter_overhead_TAG.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.cluster.nvml import SimulatedNvml, open_backend  # noqa: E402
from facefleet.cluster.reporter import DEFAULT_INTERVAL_S, NvmlReporter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def feed(reporter: NvmlReporter, stop: threading.Event, per_second: float = 20.0) -> None:
    """Busy intervals like a worker's stage calls: half of each period busy, every GPU."""
    uuids = [d.uuid for d in reporter.backend.devices()]
    period = 1.0 / per_second
    while not stop.wait(period):
        now = time.time()
        reporter.record_busy_many([(u, now - period, now - period / 2, 1000 + i) for i, u in enumerate(uuids)])


def measure(backend_kind: str, interval: float, seconds: float, simulated_gpus: int) -> dict:
    backend = open_backend(backend_kind, simulated_gpus=simulated_gpus, window_s=interval)
    reporter = NvmlReporter(interval=interval, backend=backend)
    stop = threading.Event()
    feeder = None
    if isinstance(backend, SimulatedNvml):
        feeder = threading.Thread(target=feed, args=(reporter, stop), daemon=True)
        feeder.start()
    process_cpu = time.process_time()
    time.sleep(seconds)
    cost = reporter.overhead()
    process_cpu = time.process_time() - process_cpu
    stop.set()
    if feeder is not None:
        feeder.join()
    agg = reporter.aggregates(window_s=seconds)
    reporter.stop()
    samples = int(cost["samples"])
    return {
        "interval_s": interval,
        "backend": backend.backend,
        "gpus": len(backend.devices()),
        "seconds": round(cost["wall_seconds"], 3),
        "samples": samples,
        "errors": int(cost["errors"]),
        "thread_cpu_s": round(cost["cpu_seconds"], 6),
        "percent_of_one_core": round(cost["percent_of_one_core"], 4),
        "ms_cpu_per_sample": round(1000 * cost["cpu_seconds"] / samples, 4) if samples else None,
        "process_cpu_s": round(process_cpu, 6),
        "process_percent_of_one_core": round(100 * process_cpu / cost["wall_seconds"], 4),
        "util_mean": {u: a["util_mean"] for u, a in agg.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="run time at each interval")
    parser.add_argument("--intervals", default="0.1,0.5,1", help="sampling intervals, comma-separated")
    parser.add_argument("--backend", default="auto", choices=("auto", "real", "simulated"))
    parser.add_argument("--simulated-gpus", type=int, default=8, help="devices of the simulated backend")
    parser.add_argument("--tag", default=None, help="results file suffix (default: from the machine)")
    args = parser.parse_args()

    intervals = [float(x) for x in args.intervals.split(",")]
    probe = open_backend(args.backend, simulated_gpus=args.simulated_gpus)
    devices = [vars(d) for d in probe.devices()]
    kind = probe.backend
    probe.close()
    tag = args.tag or (f"{kind}_{devices[0]['name'].split()[-1].lower()}" if kind == "real" else f"cpu{os.cpu_count()}")
    runs = []
    print(f"backend {kind}, {len(devices)} GPU(s), {args.seconds:g} s per interval")
    print(f"{'interval':>9} {'samples':>8} {'thread CPU %':>13} {'process CPU %':>14} {'ms CPU/sample':>14}")
    for interval in intervals:
        run = measure(args.backend, interval, args.seconds, args.simulated_gpus)
        runs.append(run)
        print(
            f"{interval:>8g}s {run['samples']:>8} {run['percent_of_one_core']:>13.3f} "
            f"{run['process_percent_of_one_core']:>14.3f} {run['ms_cpu_per_sample'] or 0:>14.3f}"
        )
    default = next((r for r in runs if r["interval_s"] == DEFAULT_INTERVAL_S), None)
    if default is not None:
        verdict = "under" if default["percent_of_one_core"] < 1.0 else "NOT under"
        print(f"at the default {DEFAULT_INTERVAL_S} s interval: {default['percent_of_one_core']:.3f} % of one core, {verdict} 1 %")
    result = {
        "bench": "reporter_overhead",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "backend": kind,
        "devices": devices,
        "seconds_per_interval": args.seconds,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"reporter_overhead_{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
