#!/usr/bin/env python3
"""Ray Data baseline: facefleet's default anonymize pipeline written as Ray Data batch inference.

The same work as `facefleet run VIDEO -o OUT` (CenterFace at --detect-size 640, threshold
0.5, blur in an ellipse grown 1.3x, libx264 veryfast CRF 18), built the way Ray Data's
batch-inference docs show, with facefleet's own model and blur code so that the comparison
is about the runtime, not the math:

    ray.data.from_items([frame ranges])                       # one row per range of frames
      .map_batches(decode_ranges, batch_size=1)               # CPU tasks: PyAV decode -> frames
      .map_batches(Detector, batch_size=16, num_gpus=1,       # actor pool: onnxruntime session
                   compute=ActorPoolStrategy(size=N))         #   loaded once in __init__
      .map_batches(blur_faces, batch_size=16)                 # CPU tasks: anonymize_frame
    for batch in ds.iter_batches(): SegmentWriter.write(...)  # driver: encode in frame order

`DataContext.execution_options.preserve_order = True` keeps the frames in order. Frames
travel through Ray's object store (that is Ray Data's model); the output is one mp4 with
the source timestamps. Ray Data fuses the decode step into the detector actor when both
ask for the same resources (no GPU: num_cpus=1 each); with num_gpus=1 decode runs in its
own CPU tasks (the operators that ran are in the JSON). Differences from facefleet: no audio (the baseline writes video
only), and no face tracking (facefleet's default links faces over frames and fills
one-frame detection gaps; here every frame is detected on its own, which is slightly less
work). `--blur-in-actor` blurs inside the detector actor instead of in CPU tasks.

Timing: `pipeline_s` runs from after Ray is up and the video probed to the output file
closed (frames / pipeline_s = fps); `process_s` from process start to the end of main.
GPU utilization (NVML, every 0.2 s, mean over the pipeline) is reported when pynvml works.

Ray Data needs pandas (`ray[data]`), which facefleet does not depend on: when `import
ray.data` fails, bench/.venv-raydata (a `pip install --target` folder) is tried.

    .venv/bin/python bench/ray_data_baseline.py VIDEO -o OUT.mp4 [--concurrency 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXTRA_SITE = ROOT / "bench" / ".venv-raydata"
MAX_FACES = 64  # boxes per frame carried from the detector to the blur step (padded array)
PROCESS_START = time.time()
try:
    import psutil

    PROCESS_START = psutil.Process().create_time()
except Exception:
    pass


def import_ray_data():
    """`ray.data`, with bench/.venv-raydata on the path (and on Ray workers' PYTHONPATH) if needed."""
    try:
        import ray.data  # noqa: F401

        return ray.data
    except ImportError as first:
        if not EXTRA_SITE.is_dir():
            sys.exit(f"Ray Data is not importable ({first}); it needs pandas>=2.2.3 (ray[data]). "
                     f"Install it with: pip install --target {EXTRA_SITE} --no-deps 'pandas>=2.2.3' tzdata pytz "
                     "(or put pandas on PYTHONPATH)")
        sys.path.insert(0, str(EXTRA_SITE))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXTRA_SITE), os.environ.get("PYTHONPATH")) if p)
        for name in [m for m in sys.modules if m == "ray.data" or m.startswith("ray.data.")]:
            del sys.modules[name]
        import ray.data

        return ray.data


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--concurrency", type=int, default=1, help="detector actors (each takes num_gpus=1 when a GPU exists)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per detector batch (map_batches batch_size)")
    p.add_argument("--detect-size", type=int, default=640)
    p.add_argument("--thresh", type=float, default=0.5)
    p.add_argument("--mask-scale", type=float, default=1.3)
    p.add_argument("--range-frames", type=int, default=0,
                   help="frames per decode range (rounded to keyframes; 0: about frames / (4 x CPUs), at least 32)")
    p.add_argument("--decode-threads", type=int, default=1, help="FFmpeg decoder threads per decode task")
    p.add_argument("--decode-cpus", type=float, default=1.0,
                   help="num_cpus of each decode task (Ray Data fuses decode into the detector actor when this "
                        "equals the actor's resources, i.e. without a GPU at 1.0)")
    p.add_argument("--blur-in-actor", action="store_true", help="blur in the detector actor, not in CPU tasks")
    p.add_argument("--provider", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
    return p.parse_args(argv)


# ---- Ray Data stages -------------------------------------------------------------------

def frame_ranges(info, range_frames: int) -> list[dict]:
    """Rows [start, end) of about range_frames frames, each starting on a keyframe."""
    starts = sorted(set(info.keyframes) | {0})
    rows, begin = [], 0
    for k in starts[1:] + [info.frames]:
        if k - begin >= range_frames or k == info.frames:
            if k > begin:
                rows.append({"start": begin, "end": k})
            begin = k
    for row in rows:
        row["first_pts"] = info.frame_pts[row["start"]]
        row["last_pts"] = info.frame_pts[row["end"] - 1]
        row["seek_pts"] = info.frame_pts[max(i for i in starts if i <= row["start"])]
    return rows


def make_decoder(uri: str, threads: int, out_batch: int):
    def decode_ranges(batch: dict):
        """Generator UDF: decode each range with PyAV and yield batches of frames."""
        from facefleet.media.decode import decode_range

        for start, first, last, seek in zip(batch["start"], batch["first_pts"], batch["last_pts"], batch["seek_pts"]):
            index, pts, frames = [], [], []
            for i, (p, image) in enumerate(decode_range(uri, int(first), int(last), int(seek), threads=threads)):
                index.append(int(start) + i)
                pts.append(p)
                frames.append(image)
                if len(frames) == out_batch:
                    yield {"index": np.array(index, np.int64), "pts": np.array(pts, np.int64), "frame": np.stack(frames)}
                    index, pts, frames = [], [], []
            if frames:
                yield {"index": np.array(index, np.int64), "pts": np.array(pts, np.int64), "frame": np.stack(frames)}

    return decode_ranges


def blur_faces(batch: dict, mask_scale: float = 1.3) -> dict:
    """CPU step: facefleet's anonymize_frame on every frame's boxes."""
    from facefleet.pipeline.anonymize import AnonymizeOptions, anonymize_frame

    options = AnonymizeOptions(replacewith="blur", mask_scale=mask_scale)
    frames = np.array(batch["frame"], copy=True)  # batches may be read-only views of the block
    for frame, boxes, n in zip(frames, batch["boxes"], batch["faces"]):
        anonymize_frame(frame, boxes[: int(n)], options)
    out = {k: v for k, v in batch.items() if k != "boxes"}
    out["frame"] = frames
    return out


class Detector:
    """Callable class for map_batches' actor pool: the onnxruntime session loads once per actor."""

    def __init__(self, detect_size: int, threshold: float, provider: str, blur: bool, mask_scale: float):
        from facefleet.pipeline.anonymize import AnonymizeOptions
        from facefleet.pipeline.detect import FaceDetector
        from facefleet.pipeline.processor import ModelLoader
        from facefleet.pipeline.spec import PipelineSpec

        spec = PipelineSpec(detect_size=detect_size, threshold=threshold, provider=provider)
        session = ModelLoader(spec).session(spec.detector)
        self.provider = session.provider
        self.detector = FaceDetector(session, detect_size=detect_size, threshold=threshold)
        self.blur = blur
        self.options = AnonymizeOptions(replacewith="blur", mask_scale=mask_scale)

    def __call__(self, batch: dict) -> dict:
        from facefleet.pipeline.anonymize import anonymize_frame

        frames = list(batch["frame"])
        found = self.detector.detect(frames)
        n = len(frames)
        counts = np.array([len(d) for d in found], np.int32)
        out = dict(batch)
        out["faces"] = np.minimum(counts, MAX_FACES)
        out["provider"] = np.array([self.provider] * n)
        if self.blur:
            frames = np.array(batch["frame"], copy=True)
            for frame, d in zip(frames, found):
                anonymize_frame(frame, d.boxes, self.options)
            out["frame"] = frames
        else:
            boxes = np.zeros((n, MAX_FACES, 4), np.float32)
            for i, d in enumerate(found):
                boxes[i, : min(len(d), MAX_FACES)] = d.boxes[:MAX_FACES]
            out["boxes"] = boxes
        out["clipped"] = counts > MAX_FACES
        return out


# ---- NVML --------------------------------------------------------------------------------

class GpuSampler(threading.Thread):
    """Mean GPU utilization over all GPUs, every 0.2 s (None when NVML is not there)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples: list[float] = []
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            self.handles = []

    def run(self) -> None:
        while self.handles and not self.stop.wait(0.2):
            try:
                util = [self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            except Exception:
                return
            self.samples.append(sum(util) / len(util))

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


# ---- main ----------------------------------------------------------------------------------

def run(args) -> dict:
    from facefleet.cluster.runtime import ray_session
    from facefleet.media.encode import EncodeSettings, SegmentWriter, output_pix_fmt
    from facefleet.media.probe import probe_video

    rd = import_ray_data()
    import ray

    with ray_session() as _cluster:
        info = probe_video(args.video)
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        range_frames = args.range_frames or max(32, info.frames // (4 * cpus))
        ranges = frame_ranges(info, range_frames)

        ctx = rd.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # one decoded batch per block: with the default 128 MiB blocks a block holds many
        # frames and nothing reaches the encoder until a whole block is done
        ctx.target_max_block_size = max(1 << 20, info.width * info.height * 3 * args.batch_size)

        sampler = GpuSampler()
        sampler.start()
        t0 = time.perf_counter()
        ds = rd.from_items(ranges, override_num_blocks=len(ranges))
        ds = ds.map_batches(make_decoder(args.video, args.decode_threads, args.batch_size), batch_size=1,
                            num_cpus=args.decode_cpus)
        detector_kw = dict(num_gpus=1) if gpus else dict(num_cpus=1)
        ds = ds.map_batches(
            Detector,
            fn_constructor_kwargs=dict(detect_size=args.detect_size, threshold=args.thresh, provider=args.provider,
                                       blur=args.blur_in_actor, mask_scale=args.mask_scale),
            batch_size=args.batch_size,
            compute=rd.ActorPoolStrategy(size=args.concurrency),  # `concurrency=N` before Ray 2.51
            **detector_kw,
        )
        if not args.blur_in_actor:
            ds = ds.map_batches(blur_faces, fn_kwargs=dict(mask_scale=args.mask_scale), batch_size=args.batch_size, num_cpus=1)

        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        pix_fmt = output_pix_fmt(info.pix_fmt, info.width, info.height)
        writer = SegmentWriter(out, info.width, info.height, info.time_base, info.rate, pix_fmt, EncodeSettings(),
                               info.rotation)
        written = faces = 0
        out_of_order = clipped = 0
        providers: set[str] = set()
        first_frame_s = None
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                if first_frame_s is None:
                    first_frame_s = time.perf_counter() - t0
                for idx, pts, frame in zip(batch["index"], batch["pts"], batch["frame"]):
                    if int(idx) != written or int(pts) != info.frame_pts[written]:
                        out_of_order += 1
                    writer.write(frame, int(pts))
                    written += 1
                faces += int(batch["faces"].sum())
                clipped += int(batch["clipped"].sum())
                providers.update(str(p) for p in batch["provider"])
            writer.close()
        except BaseException:
            writer.abort()
            raise
        pipeline_s = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        try:
            stats = ds.stats()
        except Exception as exc:  # stats are a report, not the result
            stats = f"(no stats: {exc})"

    return {
        "tool": "ray_data_baseline",
        "video": args.video,
        "output": str(out),
        "input_frames": info.frames,
        "frames": written,
        "frames_match": written == info.frames and out_of_order == 0,
        "out_of_order": out_of_order,
        "faces": faces,
        "frames_with_more_than_max_faces": clipped,
        "pipeline_s": round(pipeline_s, 3),
        "fps": round(written / pipeline_s, 2) if pipeline_s else None,
        "first_frame_s": round(first_frame_s, 3) if first_frame_s is not None else None,
        "process_s": round(time.time() - PROCESS_START, 3),
        "gpu_util_mean": sampler.mean(),
        "gpus": gpus,
        "cpus": cpus,
        "providers": sorted(providers),
        "operators": [line.split(":")[0].strip() for line in stats.splitlines() if line.startswith("Operator ")],
        "ray_data_stats": stats,
        "settings": {"concurrency": args.concurrency, "batch_size": args.batch_size, "detect_size": args.detect_size,
                     "thresh": args.thresh, "mask_scale": args.mask_scale, "ranges": len(ranges),
                     "range_frames": range_frames, "decode_threads": args.decode_threads,
                     "decode_cpus": args.decode_cpus, "target_max_block_size": ctx.target_max_block_size,
                     "blur": "detector actor" if args.blur_in_actor else "CPU map_batches tasks",
                     "detector_resources": detector_kw, "audio": "dropped", "tracking": "none",
                     "encoder": "libx264 veryfast CRF 18 (facefleet EncodeSettings) in the driver"},
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    result["process_s"] = round(time.time() - PROCESS_START, 3)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"ray data baseline: {result['frames']}/{result['input_frames']} frames, {result['faces']} faces, "
              f"{result['pipeline_s']:.1f} s, {result['fps']:.1f} fps, provider {','.join(result['providers'])}, "
              f"GPU util {result['gpu_util_mean']}, whole process {result['process_s']:.1f} s")
        if not result["frames_match"]:
            print(f"WARNING: output frames do not match the input ({result['out_of_order']} out of order)")


if __name__ == "__main__":
    main()
