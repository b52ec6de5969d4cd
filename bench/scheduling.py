#!/usr/bin/env python3
"""Scheduling figures with simulated workers (chunks that sleep: no GPU, no video; every
figure here is simulated): controller time per chunk, time from submit to the first
chunk starting on a warm pool, and scaling efficiency with N workers of fixed speed
(throughput(N) / (N x throughput(1))).

    .venv/bin/python bench/scheduling.py [--max-workers 8] [--ms 5] [--frames-per-worker 600]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.cluster.pool import PoolPlan, WorkerPool  # noqa: E402
from facefleet.cluster.runtime import ray_session  # noqa: E402
from facefleet.jobs.runner import run_jobs, run_planned, simulated_uri  # noqa: E402
from facefleet.jobs.spec import JobSpec  # noqa: E402
from facefleet.pipeline.spec import PipelineSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run(pool: WorkerPool, frames: int, ms: float, chunk_frames: int) -> dict:
    spec = JobSpec(f"sim{time.monotonic_ns()}", simulated_uri(frames, ms), "/tmp/facefleet-sim", chunk_frames=chunk_frames)
    submitted = time.time()
    t0 = time.monotonic()
    outcome = run_jobs([spec], pool, duplicate_tail=False)[0]
    wall = time.monotonic() - t0
    stats = run_planned.last_stats
    assert outcome.ok, outcome.error
    return {
        "frames": frames,
        "wall_s": round(wall, 3),
        "fps": round(frames / wall, 1),
        "chunks": stats.dispatched,
        "controller_ms_per_chunk": round(1000 * stats.controller_seconds / max(stats.dispatched, 1), 3),
        "submitted": submitted,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument("--ms", type=float, default=5.0, help="simulated milliseconds per frame")
    p.add_argument("--frames-per-worker", type=int, default=600)
    p.add_argument("--chunk-frames", type=int, default=60)
    p.add_argument("--tag", default=f"cpu{os.cpu_count()}")
    args = p.parse_args()
    rows = []
    with ray_session(num_cpus=max(2, args.max_workers), num_gpus=args.max_workers):
        for n in range(1, args.max_workers + 1):
            plan = PoolPlan(n, gpus_per_worker=1, cpus_per_worker=1, chunks_per_worker=1)
            pool = WorkerPool(plan, PipelineSpec())
            try:
                run(pool, 10 * n, args.ms, 10)  # warm-up: every worker has run a chunk
                frames = args.frames_per_worker * n
                row = run(pool, frames, args.ms, args.chunk_frames)
                # first chunk start on the warm pool, from a fresh submit
                first = run(pool, n, args.ms, 1)
                starts = [r.started for r in run_planned.last_results]
                row["submit_to_first_chunk_ms"] = round(1000 * (min(starts) - first["submitted"]), 1)
            finally:
                pool.shutdown()
            row["workers"] = n
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["fps"]
    for row in rows:
        row["efficiency"] = round(row["fps"] / (row["workers"] * base), 3)
        row.pop("submitted", None)
    result = {
        "what": "simulated workers: chunks sleep ms x frames; scheduling only (simulated figures)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "ms_per_frame": args.ms,
        "chunk_frames": args.chunk_frames,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scheduling_{args.tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Scheduling with simulated workers ({args.tag}; simulated figures)",
        "",
        f"{result['date']}; {os.cpu_count()} CPUs; chunks of {args.chunk_frames} frames sleeping {args.ms} ms per frame;"
        f" {args.frames_per_worker} frames per worker; one chunk in flight per worker.",
        "",
        "| workers | frames | wall s | fps | efficiency | controller ms/chunk | submit to first chunk ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['frames']} | {r['wall_s']} | {r['fps']} | {r['efficiency']} | "
            f"{r['controller_ms_per_chunk']} | {r['submit_to_first_chunk_ms']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
