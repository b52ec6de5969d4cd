#!/usr/bin/env python3
"""Does the detector slow down when other work runs beside it? Times the worker's own
detector (build_processor's, batch 16) alone and while other threads decode, encode or
run Python code, to tell GPU-side, CPU-side and interpreter-lock slowdowns apart.

    python bench/detect_contention.py VIDEO [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.media.encode import EncodeSettings, SegmentWriter  # noqa: E402
from facefleet.pipeline.processor import build_processor  # noqa: E402
from facefleet.pipeline.spec import PipelineSpec  # noqa: E402


def load_frames(video: str, n: int) -> list:
    frames = []
    with av.open(video) as c:
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == n:
                break
    return frames


def time_batches(detector, frames: list, batches: int, size: int = 16) -> dict:
    times = []
    for i in range(batches):
        start = (i * size) % (len(frames) - size)
        t0 = time.perf_counter()
        detector.detect(frames[start : start + size])
        times.append(1000 * (time.perf_counter() - t0) / size)
    return {"median_ms_per_frame": round(statistics.median(times), 2), "max": round(max(times), 2)}


def encoder_load(frames: list, stop: threading.Event) -> None:
    h, w = frames[0].shape[:2]
    writer = SegmentWriter(Path("/tmp/contention.mp4"), w, h, Fraction(1, 30), Fraction(30), "yuv420p", EncodeSettings())
    pts = 0
    while not stop.is_set():
        writer.write(frames[pts % len(frames)], pts)
        pts += 1
    writer.close()


def decoder_load(video: str, stop: threading.Event) -> None:
    while not stop.is_set():
        with av.open(video) as c:
            for frame in c.decode(video=0):
                frame.to_ndarray(format="bgr24")
                if stop.is_set():
                    return


def python_load(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(10000):
            x += i * i


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("video")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--switch-interval", type=float, default=0.0, help="sys.setswitchinterval (0: leave)")
    args = p.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    frames = load_frames(args.video, 96)
    processor = build_processor(PipelineSpec())
    processor.warm_up()
    detector = processor.detector
    time_batches(detector, frames, 3)
    loads = {
        "alone": [],
        "encoder": [lambda s: encoder_load(frames, s)],
        "decoder": [lambda s: decoder_load(args.video, s)],
        "python": [python_load],
        "encoder+decoder": [lambda s: encoder_load(frames, s), lambda s: decoder_load(args.video, s)],
        "2 encoders+2 decoders": [lambda s: encoder_load(frames, s)] * 2 + [lambda s: decoder_load(args.video, s)] * 2,
    }
    report = {"provider": processor.providers}
    for name, targets in loads.items():
        stop = threading.Event()
        threads = [threading.Thread(target=t, args=(stop,), daemon=True) for t in targets]
        for t in threads:
            t.start()
        time.sleep(0.5 if threads else 0)
        report[name] = time_batches(detector, frames, args.batches)
        stop.set()
        for t in threads:
            t.join()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
