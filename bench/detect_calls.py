#!/usr/bin/env python3
"""Every detector call of real chunks, timed: wall and CPU time of the calling thread per
call and batch size, with chunks run the way a worker runs them (concurrently, one
shared processor, no Ray). Tells a call that computes on the CPU (CPU time close to
wall time) from one that waits (for the GPU, a lock, or the interpreter).

    python bench/detect_calls.py VIDEO [--concurrency 2] [--chunk-frames 150] [--load none|python]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.cluster.chunk import run_chunk  # noqa: E402
from facefleet.jobs.runner import plan_job  # noqa: E402
from facefleet.jobs.spec import JobSpec  # noqa: E402
from facefleet.models.session import ModelSession  # noqa: E402
from facefleet.pipeline.processor import build_processor  # noqa: E402
from facefleet.pipeline.spec import PipelineSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("video")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--chunk-frames", type=int, default=150)
    p.add_argument("--out", default="/tmp/detect_calls.mp4")
    args = p.parse_args()
    calls: list[tuple[int, float, float]] = []
    lock = threading.Lock()
    original = ModelSession.run

    def timed(self, feeds):
        batch = next(iter(feeds.values())).shape[0]
        w0, c0 = time.perf_counter(), time.thread_time()
        out = original(self, feeds)
        with lock:
            calls.append((batch, 1000 * (time.perf_counter() - w0), 1000 * (time.thread_time() - c0)))
        return out

    ModelSession.run = timed
    pipeline = PipelineSpec()
    job = plan_job(JobSpec("calls", args.video, args.out, pipeline=pipeline, chunk_frames=args.chunk_frames))
    job.workdir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(pipeline)
    processor.warm_up()
    calls.clear()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(lambda t: run_chunk(t, processor), job.tasks))
    wall = time.perf_counter() - t0
    by_batch = collections.defaultdict(list)
    for batch, w, c in calls:
        by_batch[batch].append((w, c))
    report = {
        "concurrency": args.concurrency,
        "wall_s": round(wall, 2),
        "fps": round(sum(t.frames for t in job.tasks) / wall, 1),
        "calls": len(calls),
        "call_wall_s_total": round(sum(w for _, w, _ in calls) / 1000, 2),
        "by_batch": {
            b: {
                "n": len(v),
                "wall_ms_median": round(statistics.median(w for w, _ in v), 1),
                "wall_ms_max": round(max(w for w, _ in v), 1),
                "cpu_ms_median": round(statistics.median(c for _, c in v), 1),
            }
            for b, v in sorted(by_batch.items())
        },
        "first_10_calls_ms": [round(w, 1) for _, w, _ in calls[:10]],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
