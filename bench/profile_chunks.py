#!/usr/bin/env python3
"""Where a worker's time goes: run one video's chunks in this process, the way a GpuWorker
does (chunks concurrently, one shared processor), and print per-stage time, CPU time per
frame and the threads that ran. No Ray, so settings can be compared quickly.

    python bench/profile_chunks.py VIDEO [--concurrency 2] [--batch-size 16] [--threads 0]
        [--cv2-threads -1] [--chunk-frames 150] [--provider auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.cluster.chunk import run_chunk  # noqa: E402
from facefleet.jobs.runner import plan_job  # noqa: E402
from facefleet.jobs.spec import JobSpec  # noqa: E402
from facefleet.pipeline.processor import build_processor  # noqa: E402
from facefleet.pipeline.spec import PipelineSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("video")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    p.add_argument("--cv2-threads", type=int, default=-1, help="cv2.setNumThreads (-1: leave)")
    p.add_argument("--chunk-frames", type=int, default=150)
    p.add_argument("--provider", default="auto")
    p.add_argument("--out", default="/tmp/profile_out.mp4")
    p.add_argument("--switch-interval", type=float, default=0.0, help="sys.setswitchinterval (0: leave)")
    args = p.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.cv2_threads >= 0:
        cv2.setNumThreads(args.cv2_threads)
    pipeline = PipelineSpec(batch_size=args.batch_size, provider=args.provider)
    job = plan_job(JobSpec("profile", args.video, args.out, pipeline=pipeline, chunk_frames=args.chunk_frames))
    job.workdir.mkdir(parents=True, exist_ok=True)
    processor = build_processor(pipeline, threads=args.threads)
    processor.warm_up()  # as the worker does
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    peak_threads = 0
    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = [pool.submit(run_chunk, task, processor) for task in job.tasks]
        while not all(f.done() for f in futures):
            peak_threads = max(peak_threads, threading.active_count())
            time.sleep(0.05)
        results = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    frames = sum(r.frames for r in results)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r.seconds.items():
            stages[k] = stages.get(k, 0.0) + v
    report = {
        "settings": vars(args),
        "provider": processor.providers,
        "batch_size": processor.batch_size,
        "frames": frames,
        "wall_s": round(wall, 2),
        "fps": round(frames / wall, 1),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 1),
        "python_threads_peak": peak_threads,
        "stage_ms_per_frame": {k: round(1000 * v / frames, 2) for k, v in stages.items()},
    }
    print(json.dumps(report))
    shutil.rmtree(job.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
