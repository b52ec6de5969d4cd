#!/usr/bin/env python3
"""Per-stage costs on this machine, each measured alone (no threads competing):
detector session.run at several batch sizes, preprocessing, output decoding, anonymizing,
colour conversion and x264 encoding of one generated video's frames.

    python bench/diagnose_stages.py [VIDEO] [--provider auto|cuda|cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.models.manifest import get_model  # noqa: E402
from facefleet.models.session import create_session  # noqa: E402
from facefleet.pipeline.anonymize import AnonymizeOptions, anonymize_frame  # noqa: E402
from facefleet.pipeline.detect import FaceDetector, prepare_batch  # noqa: E402
from facefleet.pipeline.geometry import detect_geometry  # noqa: E402


def ms(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round(1000 * (time.perf_counter() - t0) / repeat, 3)


def cuda_variants(x: np.ndarray) -> dict:
    """session.run per frame at batch 16 under CUDA provider options and CPU thread counts."""
    import onnxruntime as ort

    from facefleet.models.manifest import model_path
    from facefleet.models.session import free_dims, read_verified

    spec = get_model("centerface")
    data = free_dims(read_verified(model_path(spec), spec.sha256), spec.make_dynamic)
    results = {}
    for algo in ("HEURISTIC", "EXHAUSTIVE", "DEFAULT"):
        for threads in (1, 0):
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if threads:
                options.intra_op_num_threads = threads
            session = ort.InferenceSession(
                data, options, providers=[("CUDAExecutionProvider", {"cudnn_conv_algo_search": algo}), "CPUExecutionProvider"]
            )
            for _ in range(3):
                session.run(None, {"input.1": x})
            results[f"{algo}_threads{threads}"] = round(ms(lambda: session.run(None, {"input.1": x}), 10) / len(x), 3)
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("video", nargs="?", default="bench/work/faces_1920x1080_300.mp4")
    p.add_argument("--provider", default="auto")
    args = p.parse_args()
    with av.open(args.video) as c:
        frames = [f for _, f in zip(range(64), c.decode(video=0))]
    bgr = [f.to_ndarray(format="bgr24") for f in frames]
    h, w = bgr[0].shape[:2]
    out: dict = {"video": args.video, "size": [w, h]}
    session = create_session(get_model("centerface"), provider=args.provider)
    out["provider"] = session.provider
    detector = FaceDetector(session, 640, 0.5)
    geom = detect_geometry(w, h, 640)
    for batch in (1, 8, 16, 32):
        x = prepare_batch(bgr[:batch], geom, "RGB")
        out[f"run_b{batch}_ms_per_frame"] = round(ms(lambda: session.run({"input.1": x}), 10) / batch, 3)
    if session.provider == "CUDAExecutionProvider":
        out["cuda_variants_b16_ms_per_frame"] = cuda_variants(prepare_batch(bgr[:16], geom, "RGB"))
    out["prepare_b16_ms_per_frame"] = round(ms(lambda: prepare_batch(bgr[:16], geom, "RGB"), 5) / 16, 3)
    out["detect_b16_ms_per_frame"] = round(ms(lambda: detector.detect(bgr[:16]), 5) / 16, 3)
    found = detector.detect(bgr[:1])[0]
    out["faces_in_frame0"] = len(found)
    frame = bgr[0]
    out["anonymize_ms_per_frame"] = ms(lambda: anonymize_frame(frame.copy(), found.boxes, AnonymizeOptions()), 20)
    out["copy_frame_ms"] = ms(lambda: frame.copy(), 20)
    out["to_bgr_ms"] = ms(lambda: frames[1].to_ndarray(format="bgr24"), 20)
    out["from_bgr_to_yuv_ms"] = ms(lambda: av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuv420p"), 20)
    for threads in ("0", "4"):
        container = av.open("/tmp/diag_encode.mp4", "w")
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "threads": threads}
        yuv = [f.reformat(format="yuv420p") for f in frames]
        t0 = time.perf_counter()
        n = 0
        for rep in range(3):
            for f in yuv:
                f.pts = n
                n += 1
                container.mux(stream.encode(f))
        container.mux(stream.encode(None))
        container.close()
        out[f"x264_veryfast_threads{threads}_fps"] = round(n / (time.perf_counter() - t0), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
