#!/usr/bin/env python3
"""Video decoding on the CPU (PyAV's decoder threads) against the GPU (NVDEC, FFmpeg's cuda
hwaccel through PyAV), laid out as a default anonymize run decodes: K chunks at once, each
decoding its own frame range with cores / K decoder threads the way facefleet's
`decode_range` does (seek to the keyframe, decode forward, keep the range's frames,
converted to BGR as the stages get them); NVDEC on the process's CUDA primary context.

facefleet decodes on the CPU: this measured NVDEC as a lever (README "Performance"), and it
did not help. It ran as `facefleet run --gpu-decode` at commit 7e726c9, since removed.

For each way: frames per second, the process's CPU seconds per frame (what decoding takes
from the x264 encoders in a real run), and the wait for a chunk's first frame. Then one
range that starts past a keyframe is decoded both ways and compared frame by frame.

    python bench/gpu_decode.py [VIDEO] [--frames 1800] [--chunks 8] [--rounds 2] [--tag h100]

With no VIDEO, a 1080p sample with faces is generated into bench/work/. --tag writes
bench/results/gpu_decode_TAG.json as well as printing the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
from av.codec.hwaccel import HWAccel  # noqa: E402

from facefleet.media.plan import keyframe_at_or_before, plan_ranges  # noqa: E402
from facefleet.media.probe import probe_video  # noqa: E402


def nvdec_available() -> bool:
    try:
        HWAccel("cuda", options={"primary_ctx": "1"}).create(av.codec.Codec("h264", "r"))
    except (av.error.FFmpegError, NotImplementedError, ValueError, OSError):
        return False
    return True


def decode_range(uri: str, first: int, last: int, seek: int, threads: int, gpu: bool = False):
    """(pts, BGR image) of the frames with first <= pts <= last, decoded from the keyframe at `seek`."""
    hwaccel = HWAccel("cuda", allow_software_fallback=True, options={"primary_ctx": "1"}) if gpu else None
    with av.open(uri, hwaccel=hwaccel) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        container.seek(seek, stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.pts > last:
                return
            if frame.pts >= first:
                yield frame.pts, frame.to_ndarray(format="bgr24")


def ranges(info, chunks: int) -> list[tuple[int, int, int]]:
    """(first pts, last pts, seek pts) of `chunks` about equal frame ranges (facefleet's
    planner, boundaries left where they fall)."""
    pts, keys = info.frame_pts, info.keyframes
    size = -(-info.frames // chunks)
    return [(pts[r.start], pts[r.end - 1], pts[keyframe_at_or_before(keys, r.start)])
            for r in plan_ranges(info.frames, keys, size, snap=0)]


def decode_all(uri: str, spans: list[tuple[int, int, int]], threads: int, gpu: bool) -> dict:
    def one(span: tuple[int, int, int]) -> tuple[int, float]:
        t0 = time.perf_counter()
        first = None
        count = 0
        for _pts, _image in decode_range(uri, span[0], span[1], span[2], threads=threads, gpu=gpu):
            first = first if first is not None else time.perf_counter() - t0
            count += 1
        return count, first or 0.0

    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(len(spans)) as pool:
        done = list(pool.map(one, spans))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    frames = sum(c for c, _ in done)
    return {
        "frames": frames,
        "wall_s": round(wall, 3),
        "fps": round(frames / wall, 1),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 3),
        "cpu_percent_of_machine": round(100 * cpu / wall / (os.cpu_count() or 1), 1),
        "first_frame_s_mean": round(sum(f for _, f in done) / len(done), 3),
    }


def compare(uri: str, info, start: int, count: int) -> dict:
    """One range decoded both ways, compared frame by frame."""
    seek = info.frame_pts[keyframe_at_or_before(info.keyframes, start)]
    first, last = info.frame_pts[start], info.frame_pts[min(info.frames, start + count) - 1]
    cpu = list(decode_range(uri, first, last, seek, threads=2))
    gpu = list(decode_range(uri, first, last, seek, threads=2, gpu=True))
    assert len(cpu) == count, "the comparison range was not decoded whole"
    diffs = [np.abs(a[1].astype(np.int16) - b[1].astype(np.int16)) for a, b in zip(cpu, gpu)]
    return {
        "first_frame": start,
        "frames": [len(cpu), len(gpu)],
        "same_pts": [p for p, _ in cpu] == [p for p, _ in gpu],
        "identical_frames": sum(int(not d.any()) for d in diffs),
        "max_abs_diff": int(max((d.max() for d in diffs), default=0)),
        "mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])) if diffs else 0.0, 5),
        "share_of_values_differing": round(float(np.mean([np.count_nonzero(d) / d.size for d in diffs])) if diffs else 0.0, 6),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", nargs="?")
    p.add_argument("--frames", type=int, default=1800, help="frames of the generated sample (no VIDEO)")
    p.add_argument("--chunks", type=int, default=8, help="chunks decoded at once (a default run on 16 cores: 2 x 4)")
    p.add_argument("--rounds", type=int, default=2, help="CPU and GPU runs, alternating")
    p.add_argument("--tag", help="write bench/results/gpu_decode_TAG.json")
    args = p.parse_args()
    video = args.video
    if not video:
        video = str(ROOT / "bench" / "work" / f"faces_1920x1080_{args.frames}.mp4")
        if not Path(video).exists():
            Path(video).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "facefleet.samples", str(ROOT / "tests" / "data"), video,
                            "--width", "1920", "--height", "1080", "--frames", str(args.frames)],
                           check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    if not nvdec_available():
        sys.exit("gpu_decode: NVDEC is not usable here (no CUDA driver or GPU, or an FFmpeg without cuda)")
    info = probe_video(video)
    spans = ranges(info, args.chunks)
    threads = max(1, (os.cpu_count() or 1) // args.chunks)
    runs: dict[str, list[dict]] = {"cpu": [], "nvdec": []}
    for r in range(args.rounds):
        for way in ("cpu", "nvdec"):
            result = decode_all(video, spans, threads, gpu=way == "nvdec")
            runs[way].append(result)
            print(f"[{way} {r + 1}] {json.dumps(result)}", flush=True)
    summary = {
        "what": "decode_range over K frame ranges at once, CPU (PyAV threads) vs NVDEC (cuda hwaccel)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "host": platform.node()},
        "gpu": _gpu_name(),
        "versions": {"av": av.__version__, "ffmpeg": av.library_versions.get("libavcodec")},
        "video": {"path": video, "frames": info.frames, "size": [info.width, info.height], "codec": info.codec,
                  "keyframes": len(info.keyframes)},
        "chunks_at_once": len(spans),
        "decoder_threads_per_chunk_cpu": threads,
        "runs": runs,
        "comparison": compare(video, info, start=info.frames // 3 + 7, count=120),
    }
    print(json.dumps(summary, indent=1))
    if args.tag:
        out = ROOT / "bench" / "results" / f"gpu_decode_{args.tag}.json"
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {out}")


def _gpu_name() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    except Exception:  # no NVML here: the name is only for the record
        return None


if __name__ == "__main__":
    main()
