#!/usr/bin/env python3
"""Detector time per frame with the preprocessing on the CPU ("host": OpenCV resize,
float32 NCHW fed to the model), as an ONNX graph on the model's device ("graph":
uint8 frames in, resize/pad/normalise there, handed over by IO binding), and split
("split": OpenCV resize on the CPU, the resized uint8 frames into the graph).

For each path: wall time and CPU time per frame of whole `FaceDetector.detect` calls
(CPU time of the calling thread, and of the whole process, which also counts
onnxruntime's own threads), plus the preprocessing step alone, and the bytes per frame
that go to the model's device. Frames are synthetic 1080p pictures with the test faces
pasted in (different places per frame). Runs on whatever provider is present.

    python bench/detect_preprocess.py [--provider auto|cuda|cpu] [--batch 16] [--calls 30] [--tag h100]

--tag writes bench/results/detect_preprocess_TAG.json as well as printing the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facefleet.models.manifest import get_model  # noqa: E402
from facefleet.models.preprocess import DevicePreprocessor  # noqa: E402
from facefleet.models.session import create_session  # noqa: E402
from facefleet.pipeline.detect import FaceDetector, input_plan, padded_size, prepare_batch, resized_frame  # noqa: E402


def make_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    faces = cv2.imread(str(ROOT / "tests" / "data" / "two_people.jpg"))
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        frame = np.full((height, width, 3), 40 + 5 * i, np.uint8)
        fh, fw = faces.shape[:2]
        y = int(rng.integers(0, max(1, height - fh)))
        x = int(rng.integers(0, max(1, width - fw)))
        frame[y : y + fh, x : x + fw] = faces[: height - y, : width - x]
        frames.append(frame)
    return frames


def timed(fn, calls: int, frames: int) -> dict:
    """ms per frame over `calls` calls of fn (each handling `frames` frames)."""
    walls, threads, procs = [], [], []
    for _ in range(calls):
        w0, t0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        threads.append(time.thread_time() - t0)
        procs.append(time.process_time() - p0)

    def per_frame(values):
        return round(1000 * statistics.median(values) / frames, 3)

    return {
        "wall_ms_per_frame": per_frame(walls),
        "thread_cpu_ms_per_frame": per_frame(threads),
        "process_cpu_ms_per_frame": per_frame(procs),
        "wall_ms_per_frame_min": round(1000 * min(walls) / frames, 3),
    }


def bench_path(model, mode: str, frames: list[np.ndarray], args) -> dict:
    detector = FaceDetector(model, args.detect_size, threshold=0.5, max_batch=args.batch, preprocess=mode)
    for _ in range(args.warmup):
        found = detector.detect(frames)
    if detector.last_preprocess != mode:
        took = detector.last_preprocess
        raise SystemExit(f"asked for the {mode} path, the detector took {took}: {detector.graph_failure}")
    height, width = frames[0].shape[:2]
    geom = detector.geometry(width, height)
    spec = model.spec
    rows = padded_size(model, args.batch, len(frames))
    result = {"faces_per_frame": round(sum(len(f) for f in found) / len(frames), 2), "rows": rows}
    result["detect"] = timed(lambda: detector.detect(frames), args.calls, len(frames))
    if mode == "host":
        prep = lambda: prepare_batch(frames, geom, spec.channels, spec.scale, spec.mean, spec.std)  # noqa: E731
        pw, ph = geom.padded
        result["to_device_bytes_per_frame"] = 3 * pw * ph * 4
    else:
        if mode == "split":  # resized on the host, the rest in the graph
            (fw, fh), fed = geom.resized, lambda: [resized_frame(f, geom) for f in frames]  # noqa: E731
        else:
            (fw, fh), fed = (width, height), lambda: frames  # noqa: E731
        pre = DevicePreprocessor(input_plan(fw, fh, geom, rows, spec), model.provider, model.provider_options)
        prep = lambda: pre(fed()).numpy() if pre.device[0] == "cpu" else pre(fed())  # noqa: E731
        result["to_device_bytes_per_frame"] = 3 * fw * fh
    for _ in range(args.warmup):
        prep()
    result["preprocess_only"] = timed(prep, args.calls, len(frames))
    return result


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--provider", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--model", default="centerface")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--detect-size", type=int, default=640)
    p.add_argument("--calls", type=int, default=30, help="timed calls per path")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (CUDA plans, arenas)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--tag", help="also write bench/results/detect_preprocess_TAG.json")
    args = p.parse_args()

    model = create_session(get_model(args.model), provider=args.provider, threads=args.threads)
    frames = make_frames(args.batch, args.width, args.height)
    import onnxruntime as ort

    report = {
        "bench": "detect_preprocess",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "onnxruntime": ort.__version__,
        "model": args.model,
        "provider": model.provider,
        "frame": [args.width, args.height],
        "detect_size": args.detect_size,
        "batch": args.batch,
        "calls": args.calls,
        "paths": {},
    }
    for mode in ("host", "graph", "split"):
        report["paths"][mode] = bench_path(model, mode, frames, args)
    host = report["paths"]["host"]["detect"]
    keys = ("wall_ms_per_frame", "thread_cpu_ms_per_frame", "process_cpu_ms_per_frame")
    for mode in ("graph", "split"):
        other = report["paths"][mode]["detect"]
        report[f"{mode}_vs_host"] = {key: round(other[key] / host[key], 3) for key in keys if host[key]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.tag:
        results = os.environ.get("FACEFLEET_BENCH_RESULTS") or ROOT / "bench" / "results"  # bench/run.py --results-dir
        out = Path(results) / f"detect_preprocess_{args.tag}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
