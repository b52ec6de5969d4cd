#!/usr/bin/env python3
"""The node's CPU ceiling for a job: decode and encode a video's chunks with no processing
in between, laid out the way facefleet's workers run them.

Each of P processes (workers) runs K chunks at once (chunks per worker), every chunk with
facefleet's own chunk code (decode thread -> nothing -> encode thread, the job's encoder
settings, decoder threads = cores / (P x K) as the worker pool gives them). Frames per
second over the whole video is the most an anonymize job can reach on this machine with
those encoder settings: the GPU stages and the blur only add to it.

    python bench/encode_ceiling.py VIDEO [--processes 1] [--chunks 2] [--preset veryfast] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.cluster.chunk import run_chunk  # noqa: E402
from facefleet.jobs.runner import plan_job  # noqa: E402
from facefleet.jobs.spec import JobSpec  # noqa: E402
from facefleet.media.encode import EncodeSettings  # noqa: E402
from facefleet.pipeline.processor import PipelineRun  # noqa: E402


class PassThrough:
    """A processor with no stages: frames go from the decoder straight to the encoder."""

    batch_size = 16
    providers: dict[str, str] = {}
    checks: dict[str, str] = {}

    def run(self, chunk: int = 0) -> PipelineRun:
        return PipelineRun([])


def _ready(threads: int) -> int:
    """Runs first in every process, so that start-up and imports are not timed."""
    import cv2

    cv2.setNumThreads(threads)
    time.sleep(0.5)  # keeps this process busy so that the others take their share
    return os.getpid()


def _worker(tasks, chunks: int, threads: int) -> tuple[int, float]:
    processor = PassThrough()
    cpu0 = time.process_time()
    with ThreadPoolExecutor(chunks) as pool:
        frames = sum(r.frames for r in pool.map(lambda t: run_chunk(t, processor, threads=threads), tasks))
    return frames, time.process_time() - cpu0


def ceiling(video: str, processes: int, chunks: int, preset: str, chunk_frames: int | None, workdir: Path) -> dict:
    settings = EncodeSettings(preset=preset)
    spec = JobSpec("ceiling", video, str(workdir / "ceiling.mp4"), encode=settings, chunk_frames=chunk_frames or 0)
    job = plan_job(spec, slots=processes * chunks, workdir=workdir / "chunks")
    job.workdir.mkdir(parents=True, exist_ok=True)
    tasks = job.tasks
    threads = max(1, (os.cpu_count() or 1) // (processes * chunks))
    shares = [tasks[p::processes] for p in range(processes)]
    with mp.get_context("spawn").Pool(processes) as pool:
        pids = set(pool.map(_ready, [threads] * processes, chunksize=1))
        t0 = time.perf_counter()
        done = pool.starmap(_worker, [(share, chunks, threads) for share in shares], chunksize=1)
        wall = time.perf_counter() - t0
    frames = sum(f for f, _ in done)
    cpu = sum(c for _, c in done)
    return {
        "processes": processes,
        "chunks_per_process": chunks,
        "decoder_threads": threads,
        "encoder": {"preset": preset, "crf": settings.crf, "threads": settings.encoder_threads},
        "chunk_frames": tasks[0].frames if tasks else 0,
        "chunks": len(tasks),
        "frames": frames,
        "wall_s": round(wall, 2),
        "fps": round(frames / wall, 1),
        "cpu_percent": round(100 * cpu / wall / (os.cpu_count() or 1), 1),
        "processes_started": len(pids),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--chunks", type=int, default=2, help="chunks each process runs at once")
    p.add_argument("--preset", default=EncodeSettings.preset)
    p.add_argument("--chunk-frames", type=int, default=None)
    p.add_argument("--workdir", default="/tmp/facefleet-ceiling")
    args = p.parse_args()
    result = ceiling(args.video, args.processes, args.chunks, args.preset, args.chunk_frames, Path(args.workdir))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
