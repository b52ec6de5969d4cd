#!/usr/bin/env python3
"""facefleet vs a Ray Data baseline (bench/ray_data_baseline.py) on the same generated video.

Both run facefleet's default anonymize pipeline (CenterFace at --detect-size 640, threshold
0.5, blur, mask scale 1.3, libx264 veryfast CRF 18): facefleet as `python -m facefleet run
VIDEO -o OUT`, the baseline as Ray Data `map_batches` batch inference with a detector actor
pool (num_gpus=1 per actor when a GPU is there). Each command is timed from process start
to exit (whole command); each one's steady rate is taken too: facefleet's summary line
(job start to output written, after Ray is up), the baseline's pipeline time (after Ray is
up and the video probed, to the output closed). Ratios are facefleet / baseline, steady vs
steady and whole command vs whole command. The output frame counts are checked against the
input's. CPU % and GPU % (NVML) are sampled every 0.2 s (bench/anonymize_vs_deface.py's
sampler; runs during which other processes used more than 10 % of the tool's CPU time are
repeated).

    .venv/bin/python bench/facefleet_vs_ray_data.py --width 640 --height 360 --frames 300 --tag cpu2
    PYTHONPATH=/tmp/site:$PWD python3 bench/facefleet_vs_ray_data.py --width 1920 --height 1080 \\
        --frames 900 --tag h100

Results: bench/results/ray_data_vs_facefleet_TAG.json and .md. Ray Data needs pandas
(ray[data]); when `import ray.data` fails, pandas is installed into bench/.venv-raydata
(pip --target, no network needed where a wheel index is configured).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import shlex
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import anonymize_vs_deface as avd  # noqa: E402  (sampler, machine info, output inspection)

ROOT = BENCH.parent
WORK = BENCH / "work"
RESULTS = avd.RESULTS  # bench/results, or bench/run.py --results-dir
EXTRA_SITE = BENCH / ".venv-raydata"
TARGET = 1.3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--detect-size", type=int, default=640)
    p.add_argument("--repeat", type=int, default=1, help="runs per command; medians are reported")
    p.add_argument("--concurrency", type=int, default=0,
                   help="baseline detector actors (0: one per GPU, or 1 without a GPU)")
    p.add_argument("--batch-size", type=int, default=16, help="baseline map_batches batch_size")
    p.add_argument("--baseline-args", default="", help="extra ray_data_baseline.py arguments, one string")
    p.add_argument("--facefleet-args", default="", help="extra `facefleet run` arguments, one string")
    p.add_argument("--markdown-only", action="store_true", help="rewrite the .md of --tag from its .json")
    p.add_argument("--tag", help="results file suffix (default: cpuN or the GPU model, e.g. h100)")
    return p.parse_args(argv)


def ensure_ray_data() -> None:
    check = [sys.executable, "-c", "import ray.data"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return
    if not (EXTRA_SITE / "pandas").is_dir():
        print(f"Ray Data needs pandas: installing it into {EXTRA_SITE}", flush=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(EXTRA_SITE),
               "pandas>=2.2.3", "tzdata", "pytz"]
        if subprocess.run(cmd).returncode != 0:
            sys.exit("cannot install pandas for Ray Data; put pandas>=2.2.3 on PYTHONPATH (e.g. in /tmp/site)")


def sample_video(args) -> Path:
    path = WORK / f"faces_{args.width}x{args.height}_{args.frames}.mp4"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("tmp-" + path.name)
        subprocess.run([sys.executable, "-m", "facefleet.samples", str(ROOT / "tests" / "data"), str(tmp),
                        "--width", str(args.width), "--height", str(args.height), "--frames", str(args.frames)],
                       check=True, cwd=ROOT)
        tmp.rename(path)
    return path


def parse_baseline(r: dict) -> dict:
    line = next((ln for ln in reversed(r["text"].splitlines()) if ln.startswith('{"tool"')), None)
    if line is None:
        return {"steady_fps": None}
    res = json.loads(line)
    stats = res.pop("ray_data_stats", "")
    res["ray_data_stats_head"] = stats[:4000]
    return {"steady_fps": res["fps"], "baseline": res, "faces": res["faces"], "provider": ",".join(res["providers"])}


def versions() -> dict:
    out = avd.facefleet_versions()
    for name in ("pandas", "pyarrow", "nvidia-ml-py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            try:
                out[name] = __import__(name).__version__
            except Exception:
                pass
    return out


def check_frames(row: dict, frames: int) -> str:
    got = row["output"]["frames"]
    return "ok" if got == frames else f"MISMATCH: {got} output frames for {frames} input frames"


def markdown(res: dict) -> str:
    m, r = res["machine"], res["ratios"]
    cpu_note = "" if m["gpus"] else " **CPU run: no GPU, onnxruntime CPU provider; not the target's GPU setting.**"
    lines = [
        f"# facefleet vs Ray Data baseline — {res['tag']}" + (" (CPU run)" if not m["gpus"] else ""),
        "",
        f"{res['date']}; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, GPUs: {', '.join(m['gpus']) or 'none'}."
        + cpu_note,
        "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".",
        f"Input: {res['video']['width']}x{res['video']['height']}, {res['video']['frames']} frames (facefleet.samples).",
        "",
        "| run | whole command s (median; runs) | whole-command fps | steady fps | GPU % mean | CPU % mean | tool / others' CPU s | clean runs | output frames |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (res["facefleet"], res["ray_data"]):
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in row["runs"])
        gpu = [x["gpu_percent"]["mean"] for x in row["runs"] if x.get("gpu_percent")]
        cpu = [x["cpu_percent"]["mean"] for x in row["runs"] if x.get("cpu_percent")]
        cpu_s = "; ".join(f"{x['tool_cpu_s']}/{x['other_cpu_s']}" for x in row["runs"])
        lines.append(f"| {row['name']} | {row['wall_s']:.2f}; {walls} | {row['e2e_fps']:.2f} | {row['steady_fps']} | "
                     f"{gpu[0] if gpu else '-'} | {cpu[0] if cpu else '-'} | "
                     f"{cpu_s} | "
                     f"{sum(x['clean'] for x in row['runs'])} of {len(row['spoiled_runs']) + sum(x['clean'] for x in row['runs'])} | "
                     f"{row['output']['frames']} ({row['frames_check']}) |")
    b = res["ray_data"]["runs"][0].get("baseline", {})
    lines += [
        "",
        f"**facefleet / Ray Data: steady {r['steady']}x, whole command {r['e2e']}x** (target >= {TARGET}x).",
        "",
        "A run is clean when other processes used at most 10 % of the tool's CPU time; a command with no clean "
        "run reports its spoiled runs (shared machine), so its numbers are pessimistic.",
        "",
        "Steady: facefleet's summary line (job start to output written); the baseline's pipeline time (after Ray "
        "is up and the video probed, to the output closed). Whole command: process start to exit.",
        "",
        "Baseline (bench/ray_data_baseline.py): `from_items(frame ranges)` -> `map_batches(decode_ranges)` (PyAV, "
        "CPU tasks) -> `map_batches(Detector, compute=ActorPoolStrategy(size=N), num_gpus=1 with a GPU)` "
        "(facefleet's FaceDetector/CenterFace session loaded in `__init__`) -> `map_batches(blur_faces)` "
        "(facefleet's anonymize_frame, CPU tasks) -> `iter_batches()` in the driver with `preserve_order=True`, "
        "encoded with facefleet's SegmentWriter (libx264 veryfast CRF 18). No audio, no face tracking.",
        f"Baseline settings: {json.dumps(b.get('settings', {}))}; operators that ran: {b.get('operators')}; "
        f"detector provider {b.get('providers')}; GPU util (its own NVML sampler) {b.get('gpu_util_mean')}.",
        f"Faces found: facefleet {res['facefleet']['runs'][0].get('faces')}, baseline {b.get('faces')} "
        "(facefleet's tracking fills one-frame gaps).",
        "",
        "Commands:",
        f"- `{res['facefleet']['command']}`",
        f"- `{res['ray_data']['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.markdown_only:  # rewrite the .md from an existing .json
        res = json.loads((RESULTS / f"ray_data_vs_facefleet_{args.tag}.json").read_text())
        (RESULTS / f"ray_data_vs_facefleet_{args.tag}.md").write_text(markdown(res))
        return
    info = avd.machine()
    tag = args.tag or avd.default_tag(info)
    ensure_ray_data()
    video = sample_video(args)
    WORK.mkdir(parents=True, exist_ok=True)
    out_ff, out_rd = WORK / f"out_facefleet_{tag}.mp4", WORK / f"out_ray_data_{tag}.mp4"
    concurrency = args.concurrency or max(1, len(info["gpus"]))

    ff_cmd = [sys.executable, "-m", "facefleet", "run", str(video), "-o", str(out_ff),
              *(["--detect-size", str(args.detect_size)] if args.detect_size != 640 else []),
              *shlex.split(args.facefleet_args)]
    rd_cmd = [sys.executable, str(BENCH / "ray_data_baseline.py"), str(video), "-o", str(out_rd), "--json",
              "--concurrency", str(concurrency), "--batch-size", str(args.batch_size),
              "--detect-size", str(args.detect_size), *shlex.split(args.baseline_args)]

    ff = avd.measure("facefleet", ff_cmd, out_ff, args.frames, args.repeat, avd.parse_facefleet)
    rd = avd.measure("ray data baseline", rd_cmd, out_rd, args.frames, args.repeat, parse_baseline)
    for row in (ff, rd):
        row["frames_check"] = check_frames(row, args.frames)
    ratios = {
        "steady": round(ff["steady_fps"] / rd["steady_fps"], 2) if ff["steady_fps"] and rd["steady_fps"] else None,
        "e2e": round(rd["wall_s"] / ff["wall_s"], 2),
        "target": TARGET,
    }
    res = {
        "tag": tag, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info, "versions": versions(), "cpu_run": not info["gpus"],
        "video": {"path": str(video.relative_to(ROOT)), "width": args.width, "height": args.height, "frames": args.frames},
        "facefleet": ff, "ray_data": rd, "ratios": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ray_data_vs_facefleet_{tag}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (RESULTS / f"ray_data_vs_facefleet_{tag}.md").write_text(markdown(res))
    print(f"\nfacefleet         {ff['e2e_fps']:.2f} fps whole command ({ff['wall_s']:.2f} s), steady {ff['steady_fps']} fps, "
          f"output {ff['frames_check']}")
    print(f"ray data baseline {rd['e2e_fps']:.2f} fps whole command ({rd['wall_s']:.2f} s), steady {rd['steady_fps']} fps, "
          f"output {rd['frames_check']}")
    print(f"ratio facefleet/ray data: {ratios['steady']}x steady, {ratios['e2e']}x whole command (target >= {TARGET}x)")
    print(f"wrote {RESULTS / f'ray_data_vs_facefleet_{tag}.json'} and .md")


if __name__ == "__main__":
    main()
