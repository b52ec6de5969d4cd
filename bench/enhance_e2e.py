#!/usr/bin/env python3
"""facefleet's enhance pipeline end to end against the restoration model alone (issue 7, target 2).

Target: `enhance` with the restoration-class benchmark model (GFPGAN 1.4 compute, 512x512
faces) keeps the GPU >= 95 % busy (mean NVML utilization, steady state) and reaches, end to
end, >= 85 % of the model's best standalone faces/s (best batch size, same precision, same
GPU). End to end is the job's own time (its summary line: from the job's start, with the
workers up, to its output written; Ray's start and shutdown excluded).

THE MODEL HAS RANDOM WEIGHTS (bench/restoration_model.py): its output is noise. This
measures speed only; nothing it writes is enhancement.

One run, on the machine it runs on:

1. builds bench/work/restoration_unet_512.onnx with bench/restoration_model.py (reused when
   present) and measures the model alone at several batch sizes, in a child process (so
   its CUDA context and memory arena are gone before facefleet starts), with
   restoration_model.measure (onnxruntime, cuDNN exhaustive algorithm search, fp32 as
   onnxruntime runs it); also the model as facefleet loads it (facefleet's create_session)
   at the enhancer's batch size, to show what the session settings cost;
2. generates a video with several faces per frame (facefleet.samples);
3. runs `python -m facefleet run VIDEO -o OUT --pipeline enhance --trust-model
   gfpgan_1.4=MODEL` (and every --variant), sampling NVML utilization every 0.2 s; the
   steady state is the GPU's busy window: from the first sample from which the GPU stays
   >= 50 % busy for a second to the progress bar's last frame done (without GPU samples:
   the progress bar's first to last frame done; without progress prints: the summary
   line's seconds);
4. writes bench/results/enhance_e2e_TAG.json and .md.

The progress bar's first-to-last-frame-done window (kept in each run as `progress_bar`)
overstates the rate of a GPU-bound pipeline: every chunk in flight has its first batches
enhanced before the first frame is done (on the H100, 2026-12-07: the GPU at 100 % for
4.8 s before it, 338 faces/s over that window against 188 over the GPU's busy one).

    python bench/enhance_e2e.py --rescore bench/results/enhance_e2e_h100.json   # re-judge a results file

    .venv/bin/python bench/enhance_e2e.py                      # here: tiny CPU run (tag cpuN)
    PYTHONPATH=/tmp/site:$PWD python3 bench/enhance_e2e.py     # GPU machine: 1080p, 600 frames, 4 faces
    ... --variant='--gpu-share 0.5' --variant='--chunks-per-worker 8'   # extra facefleet runs

`facefleet run` writes no summary.json (only the controller, `facefleet serve`, writes job
reports, and `facefleet submit` takes no enhancer or --trust-model option), so GPU
utilization comes from this script's own NVML sampler.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / "work"
RESULTS = Path(os.environ.get("FACEFLEET_BENCH_RESULTS") or BENCH / "results")  # bench/run.py --results-dir
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

try:
    import psutil
except ImportError:  # Ray vendors psutil in ray/thirdparty_files
    try:
        import importlib.util

        sys.path.append(str(Path(importlib.util.find_spec("ray").origin).parent / "thirdparty_files"))
        import psutil
    except Exception:
        psutil = None

ENHANCER = "gfpgan_1.4"  # the manifest's enhancer whose signature the random model has (input [N,3,512,512])
SUMMARY = re.compile(r"(\d+) frames, (\d+) faces, ([\d.]+) s, ([\d.]+) fps, provider (\S+?),?\s")
PROGRESS = re.compile(r"(\d+)/(\d+) frames")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")
TARGET_RATIO = 0.85
TARGET_UTIL = 95.0
GPU_DEFAULTS = {"width": 1920, "height": 1080, "frames": 600, "faces": 4, "batches": "1,2,4,8,16,32", "repeat": 10,
                "variants": ["--gpu-share 0.5", "--chunks-per-worker 8"]}
CPU_DEFAULTS = {"width": 640, "height": 360, "frames": 8, "faces": 1, "batches": "1", "repeat": 1, "variants": []}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, help="video width (default 1920 with a GPU, 640 without)")
    p.add_argument("--height", type=int, help="video height (default 1080 / 360)")
    p.add_argument("--frames", type=int, help="video frames (default 600 / 8)")
    p.add_argument("--faces", type=int, help="face sprites on screen (default 4 / 1)")
    p.add_argument("--batches", help="standalone batch sizes (default 1,2,4,8,16,32 / 1)")
    p.add_argument("--repeat", type=int, help="standalone timed calls per batch size (default 10 / 1)")
    p.add_argument("--provider", default="auto", choices=("auto", "cuda", "cpu"), help="for the standalone runs")
    p.add_argument("--facefleet-args", default="", help="extra arguments for every facefleet run, one string")
    p.add_argument("--variant", action="append", default=None,
                   help="an extra facefleet run with these arguments (repeatable); default with a GPU: "
                        f"{' and '.join(repr(v) for v in GPU_DEFAULTS['variants'])}; --variant='' for none")
    p.add_argument("--trim", type=float, default=2.0, help="seconds of NVML samples dropped at each end of the steady window")
    p.add_argument("--interval", type=float, default=0.2, help="NVML sampling interval, seconds")
    p.add_argument("--run-timeout", type=float, default=300.0,
                   help="seconds a facefleet run may take before it is killed (with its Ray) and reported")
    p.add_argument("--tag", help="results file suffix (default: cpuN, or the GPU model, e.g. h100)")
    p.add_argument("--rescore", type=Path, help="recompute the steady windows and verdicts of a results JSON from its "
                   "stored NVML samples (for files written before the GPU-busy window), rewrite it and its .md")
    p.add_argument("--standalone-child", help=argparse.SUPPRESS)  # internal: JSON arguments of the standalone run
    return p.parse_args(argv)


# ---- machine and versions -------------------------------------------------------------

def nvml_handles() -> tuple[object | None, list, str | None]:
    """(pynvml module, device handles, why none)."""
    try:
        import pynvml
    except ImportError:
        return None, [], "pynvml (nvidia-ml-py) is not installed: GPU utilization not sampled"
    try:
        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())], None
    except Exception as exc:
        return pynvml, [], f"NVML not usable ({type(exc).__name__}: {exc}): GPU utilization not sampled"


def machine() -> dict:
    pynvml, handles, why = nvml_handles()
    gpus = []
    for h in handles:
        name = pynvml.nvmlDeviceGetName(h)
        gpus.append(name.decode() if isinstance(name, bytes) else name)
    driver = None
    if handles:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "host": platform.node(), "cpus": os.cpu_count(), "cpu_model": model.group(1).strip() if model else platform.processor(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1) if psutil else None,
        "gpus": gpus, "nvidia_driver": driver, "nvml_note": why, "python": platform.python_version(),
    }


def default_tag(info: dict) -> str:
    if info["gpus"]:
        found = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", info["gpus"][0])
        return found.group(1).lower() if found else "gpu"
    return f"cpu{info['cpus']}"


def versions() -> dict:
    import facefleet

    out = {"facefleet": facefleet.__version__}
    for name in ("onnxruntime", "onnxruntime-gpu", "onnx", "av", "ray", "numpy", "opencv-python-headless", "nvidia-ml-py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ---- 1. the model and its standalone throughput ---------------------------------------

def ensure_model() -> dict:
    """bench/work/restoration_unet_512.onnx, built by restoration_model.py unless present."""
    import onnx

    import restoration_model as rm

    path = rm.DEFAULT_OUT
    built = False
    if path.exists():
        model = onnx.load(str(path))
        if model.graph.name != "restoration_unet_random_weights":
            sys.exit(f"{path} exists but is not restoration_model.py's model; move it away")
    else:
        print(f"building {path} (restoration_model.build_unet, seed {rm.SEED})", flush=True)
        model = rm.build_unet()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("tmp-" + path.name)
        onnx.save(model, str(tmp))
        tmp.rename(path)
        built = True
    macs = sum(rm.count_macs(model).values())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": str(path), "built_now": built, "sha256": sha, "gflops_per_face": round(2 * macs / 1e9, 1),
            "target_gflops": round(2 * sum(rm.gfpgan_v14_macs().values()) / 1e9, 1), "parameters": rm.parameters(model),
            "random_weights": True}


def standalone_child(spec: dict) -> dict:
    """In a child process: restoration_model.measure at each batch size, then the model as
    facefleet's create_session loads it at the enhancer's batch size."""
    import numpy as np

    import restoration_model as rm

    path = Path(spec["path"])
    rows = rm.measure(path, spec["provider"], spec["batches"], spec["repeat"], 0)
    out = {"runs": rows, "settings": "restoration_model.measure: ORT_ENABLE_ALL, cudnn_conv_algo_search EXHAUSTIVE, fp32 input"}
    try:
        from facefleet.models.session import create_session
        from facefleet.pipeline import enhance

        batch = getattr(enhance, "ENHANCE_BATCH", 8)
        session = create_session(rm.bench_spec(path, spec["sha256"]), provider=spec["provider"], path=path)
        x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, rm.SIZE, rm.SIZE)).astype(np.float32)
        session.run({"input": x})
        times = []
        for _ in range(max(1, spec["repeat"])):
            t0 = time.perf_counter()
            session.run({"input": x})
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        out["facefleet_session"] = {"batch": batch, "provider": session.provider, "median_s": median,
                                    "faces_per_s": batch / median, "provider_options": {
                                        k: v for k, v in session.provider_options.items() if "cudnn" in k or "tf32" in k}}
        print(f"facefleet's create_session, batch {batch}: {batch / median:.2f} faces/s ({session.provider})", flush=True)
    except Exception as exc:  # diagnostic only
        out["facefleet_session"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def measure_standalone(model: dict, args) -> dict:
    spec = {"path": model["path"], "sha256": model["sha256"], "provider": args.provider,
            "batches": [int(b) for b in args.batches.split(",") if b], "repeat": args.repeat}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--standalone-child", json.dumps(spec)]
    print(f"[standalone] restoration model alone, batches {spec['batches']}, {spec['repeat']} timed call(s) each", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    last = ""
    for line in proc.stdout:
        if line.startswith("{"):
            last = line
        else:
            print("    " + line.rstrip(), flush=True)
    if proc.wait() != 0 or not last:
        sys.exit(f"standalone measurement failed ({proc.returncode})")
    result = json.loads(last)
    best = max(result["runs"], key=lambda r: r["faces_per_s"])
    result["best"] = {"batch": best["batch"], "faces_per_s": round(best["faces_per_s"], 2), "provider": best["provider"]}
    print(f"    best: batch {best['batch']}, {best['faces_per_s']:.2f} faces/s ({best['provider']})", flush=True)
    return result


# ---- 2. the video ---------------------------------------------------------------------

def sample_video(args) -> Path:
    path = WORK / f"enhance_faces_{args.width}x{args.height}_{args.frames}f_{args.faces}k.mp4"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("tmp-" + path.name)
        cmd = [sys.executable, "-m", "facefleet.samples", str(ROOT / "tests" / "data"), str(tmp), "--width", str(args.width),
               "--height", str(args.height), "--frames", str(args.frames), "--faces", str(args.faces)]
        print(f"[video] {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        tmp.rename(path)
        print(f"    {time.perf_counter() - t0:.1f} s", flush=True)
    return path


# ---- 3. facefleet runs with NVML sampling ---------------------------------------------

class Sampler(threading.Thread):
    """NVML utilization / memory of every GPU and machine CPU %, every `interval` s, timestamped."""

    def __init__(self, start: float, interval: float):
        super().__init__(daemon=True)
        self.t0, self.interval, self.stop = start, interval, threading.Event()
        self.samples: list[dict] = []
        self.pynvml, self.handles, self.note = nvml_handles()
        if psutil:
            psutil.cpu_percent(None)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            row = {"t": round(time.perf_counter() - self.t0, 3)}
            if psutil:
                row["cpu"] = psutil.cpu_percent(None)
            if self.handles:
                try:
                    row["gpu"] = [self.pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
                    row["mem_gib"] = [round(self.pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**30, 2) for h in self.handles]
                except Exception:
                    pass
            self.samples.append(row)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def util_stats(samples: list[dict], lo: float, hi: float) -> dict | None:
    """GPU utilization (mean over GPUs per sample) and CPU % of the samples with lo <= t <= hi."""
    rows = [s for s in samples if lo <= s["t"] <= hi]
    gpu = [statistics.fmean(s["gpu"]) for s in rows if s.get("gpu")]
    cpu = [s["cpu"] for s in rows if "cpu" in s]
    mem = [max(s["mem_gib"]) for s in rows if s.get("mem_gib")]
    out = {"window_s": [round(lo, 2), round(hi, 2)], "samples": len(rows)}
    if gpu:
        out["gpu_util"] = {"mean": round(statistics.fmean(gpu), 1), "p5": round(percentile(gpu, 5), 1),
                           "p50": round(percentile(gpu, 50), 1), "p95": round(percentile(gpu, 95), 1),
                           "min": min(gpu), "max": max(gpu)}
        out["gpu_mem_gib_max"] = max(mem) if mem else None
    if cpu:
        out["cpu_percent_mean"] = round(statistics.fmean(cpu), 1)
    return out


def facefleet_cmd(args, video: Path, out: Path, model: str, extra: str) -> list[str]:
    return [sys.executable, "-m", "facefleet", "run", str(video), "-o", str(out), "--pipeline", "enhance",
            "--face-enhancer-model", ENHANCER, "--trust-model", f"{ENHANCER}={model}",
            *shlex.split(args.facefleet_args), *shlex.split(extra)]


def run_facefleet(name: str, cmd: list[str], out: Path, args) -> dict:
    """Run it, timestamp every progress print, sample NVML; steady state from the progress bar."""
    out.unlink(missing_ok=True)
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    # rich draws its live progress bar only on a terminal: these make it draw to our pipe
    env = dict(os.environ, PYTHONUNBUFFERED="1", TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", FORCE_COLOR="1",
               NO_COLOR="1", COLUMNS="200")
    start = time.perf_counter()
    sampler = Sampler(start, args.interval)
    sampler.start()
    # its own session, so that a run past --run-timeout goes with every Ray process it started
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    killer = threading.Timer(args.run_timeout, lambda: os.killpg(proc.pid, 9))
    killer.start()
    marks: list[tuple[float, int, int]] = []
    pieces: list[tuple[float, str]] = []
    pending = ""
    while data := os.read(proc.stdout.fileno(), 65536):
        now = time.perf_counter() - start
        text = data.decode(errors="replace")
        pieces.append((now, text))
        pending = ANSI.sub("", pending + text)
        for m in PROGRESS.finditer(pending):
            marks.append((now, int(m.group(1)), int(m.group(2))))
        pending = pending[-80:]  # a mark split across two reads is seen next time
    proc.wait()
    killer.cancel()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    log = ANSI.sub("", "".join(text for _, text in pieces))
    if wall >= args.run_timeout:
        sys.exit(f"facefleet ran past --run-timeout {args.run_timeout:.0f} s and was killed: {shlex.join(cmd)}\n{log[-4000:]}")
    if proc.returncode != 0:
        sys.exit(f"facefleet failed ({proc.returncode}): {shlex.join(cmd)}\n{log[-4000:]}")
    m = SUMMARY.search(log + " ")
    if not m:
        sys.exit(f"no summary line in facefleet's output:\n{log[-3000:]}")
    frames, faces, seconds, fps, provider = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4)), m.group(5)
    row = {"name": name, "command": shlex.join(cmd), "frames": frames, "faces": faces, "provider": provider,
           "wall_s": round(wall, 2), "summary_s": seconds, "summary_fps": fps,
           "summary_faces_per_s": round(faces / seconds, 2) if seconds else None,
           "wall_faces_per_s": round(faces / wall, 2)}
    # the progress bar's window: the first progress print with frames done to the first that shows all done
    marks = sorted(set(marks))
    first = next((mk for mk in marks if mk[1] > 0), None)
    last = next((mk for mk in marks if mk[1] >= mk[2]), None)
    if first and last and last[0] > first[0] and last[1] > first[1]:
        row["progress_bar"] = window("progress bar, first to last frame done", first[0], last[0], last[1] - first[1],
                                     frames, faces)
    else:  # the summary's seconds run from the job's start to its end (Ray start-up excluded), ending when it printed
        t1 = summary_time(pieces, wall)
        row["progress_bar"] = window("summary line (no progress prints seen)", max(0.0, t1 - seconds), t1, frames,
                                     frames, faces)
    row["samples"] = sampler.samples
    steady_state(row, args.interval, args.trim)
    row["util_whole_run"] = util_stats(sampler.samples, 0.0, wall)
    row["nvml_note"] = sampler.note
    row["progress_marks"] = len(marks)
    row["log_tail"] = log[-1500:]
    row["output_bytes"] = out.stat().st_size if out.exists() else None
    u = row["util_steady"].get("gpu_util")
    st = row["steady"]
    print(f"    {frames} frames, {faces} faces ({provider}); wall {wall:.1f} s; summary {seconds} s = "
          f"{row['summary_faces_per_s']} faces/s; steady ({st['source']}, {st['t1'] - st['t0']:.1f} s) "
          f"{st['faces_per_s']} faces/s; GPU util steady {u['mean'] if u else '-'} % mean, "
          f"p95 {u['p95'] if u else '-'}", flush=True)
    return row


BUSY_UTIL = 50.0  # GPU utilization (%) that counts as the job's enhancer at work
BUSY_S = 1.0  # for this long without a dip: a worker's warm-up call is shorter


def window(source: str, t0: float, t1: float, frames_in: int, frames: int, faces: int) -> dict:
    fps = frames_in / (t1 - t0)
    return {"source": source, "t0": round(t0, 2), "t1": round(t1, 2), "frames": frames_in, "fps": round(fps, 2),
            "faces_per_s": round(fps * faces / frames, 2) if frames else None}


def gpu_busy_from(samples: list[dict], until: float, interval: float) -> float | None:
    """When the GPU got to work on the job: the first NVML sample (before `until`) from
    which utilization, mean over the GPUs, stays >= BUSY_UTIL for BUSY_S; None if never."""
    need = max(1, round(BUSY_S / interval))
    gpu = [(s["t"], statistics.fmean(s["gpu"])) for s in samples if s.get("gpu") and s["t"] <= until]
    for i in range(len(gpu) - need + 1):
        if all(u >= BUSY_UTIL for _, u in gpu[i:i + need]):
            return gpu[i][0]
    return None


def steady_state(row: dict, interval: float, trim: float) -> None:
    """The run's steady window (`steady`) and the utilization in it (`util_steady`): the
    GPU's busy window up to the last frame done, else the progress bar's window."""
    bar = row["progress_bar"]
    start = gpu_busy_from(row.get("samples") or [], bar["t1"], interval)
    if start is not None and start < bar["t1"]:
        row["steady"] = window(f"GPU busy (>= {BUSY_UTIL:g} % for {BUSY_S:g} s) to the last frame done", start,
                               bar["t1"], row["frames"], row["frames"], row["faces"])
    else:
        row["steady"] = dict(bar)
    t0, t1 = row["steady"]["t0"], row["steady"]["t1"]
    lo, hi = (t0 + trim, t1 - trim) if t1 - t0 > 2 * trim + 1 else (t0, t1)
    row["util_steady"] = util_stats(row.get("samples") or [], lo, hi)
    row["util_steady"]["trimmed_s"] = trim if (lo, hi) != (t0, t1) else 0.0


def summary_time(pieces: list[tuple[float, str]], default: float) -> float:
    """When the summary line was read (it is printed as the job ends, before Ray's shutdown)."""
    text = ""
    for now, piece in pieces:
        text = ANSI.sub("", text + piece)
        if SUMMARY.search(text + " "):
            return now
    return default


# ---- 4. report ------------------------------------------------------------------------

def verdict(row: dict, best: float) -> None:
    """The targets: end-to-end faces/s (the job's summary) against the model alone; GPU
    utilization in the steady window. The steady rate's ratio is kept beside."""
    sps = row["steady"]["faces_per_s"]
    row["ratio_steady_to_standalone"] = round(sps / best, 3) if sps and best else None
    e2e = row["summary_faces_per_s"]
    row["ratio_to_standalone"] = round(e2e / best, 3) if e2e and best else None
    u = row["util_steady"].get("gpu_util")
    row["target_ratio_met"] = row["ratio_to_standalone"] is not None and row["ratio_to_standalone"] >= TARGET_RATIO
    row["target_util_met"] = (u["mean"] >= TARGET_UTIL) if u else None


def markdown(res: dict) -> str:
    m, a, s, mod = res["machine"], res["args"], res["standalone"], res["model"]
    best = s["best"]
    lines = [
        f"# enhance end to end vs the restoration model alone ({res['tag']})",
        "",
        "**Random-weight model (bench/restoration_model.py): speed only; its output is noise, not enhancement.**",
        "",
        f"{res['date']}; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, GPU: {', '.join(m['gpus']) or 'none'}"
        + (f" (driver {m['nvidia_driver']})" if m.get("nvidia_driver") else "") + ".",
        f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.",
        f"Model: {mod['gflops_per_face']} GFLOPs per 512x512 face (GFPGAN v1.4 counted: {mod['target_gflops']}), "
        f"{mod['parameters'] / 1e6:.1f} M parameters, sha256 {mod['sha256'][:12]}, loaded by facefleet as "
        f"`{ENHANCER}` through --trust-model.",
        f"Video: {a['width']}x{a['height']}, {a['frames']} frames, {a['faces']} face sprites on screen (`{res['input']}`).",
        "",
        "## The model alone",
        "",
        f"{s['settings']}; median of {a['repeat']} call(s) after a warm-up call.",
        "",
        "| batch | provider | median ms | faces/s |",
        "|---|---|---|---|",
    ]
    for r in s["runs"]:
        lines.append(f"| {r['batch']} | {r['provider']} | {r['median_s'] * 1000:.1f} | {r['faces_per_s']:.2f} |")
    lines += ["", f"**Best: batch {best['batch']}, {best['faces_per_s']} faces/s.**"]
    fs = s.get("facefleet_session") or {}
    if "faces_per_s" in fs:
        how = "its session options, cuDNN HEURISTIC" if "CUDA" in fs["provider"] else "its session options"
        lines.append(f"As facefleet's create_session loads it ({how}; the enhancer's batch {fs['batch']}, "
                     f"median of {a['repeat']}): {fs['faces_per_s']:.2f} faces/s ({fs['provider']}).")
    elif fs:
        lines.append(f"As facefleet's create_session loads it: not measured ({fs.get('error')}).")
    lines += [
        "",
        "## facefleet run --pipeline enhance",
        "",
        f"End to end: the job's own time (facefleet's summary line: workers up to output written; Ray's start and "
        f"shutdown excluded). Steady state: the GPU's busy window, from the first NVML sample from which the GPU "
        f"stays >= {BUSY_UTIL:g} % busy for {BUSY_S:g} s to the progress bar's last frame done (frames/s x the "
        f"run's faces per frame); GPU utilization: NVML every {a['interval']} s, mean over the GPUs, samples in "
        f"the steady window less {a['trim']} s at each end. Targets: end-to-end faces/s >= {TARGET_RATIO:.0%} of "
        f"the best standalone, GPU utilization mean >= {TARGET_UTIL:.0f} %. The progress bar's own window (first "
        "to last frame done) is listed for the record: it overstates a GPU-bound run, whose chunks in flight have "
        "frames enhanced before the first one is done.",
        "",
        "| run | frames | faces | provider | wall s | end to end: s, faces/s | vs standalone | steady: s, faces/s "
        "| steady vs standalone | progress bar window: s, faces/s | GPU util % mean / p5 / p95 (steady) "
        "| GPU mem GiB max | CPU % mean | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        u = r["util_steady"]
        g = u.get("gpu_util")
        gtext = f"{g['mean']} / {g['p5']} / {g['p95']}" if g else "not sampled"
        st, bar = r["steady"], r["progress_bar"]
        ok = "ratio " + ("met" if r["target_ratio_met"] else "NOT met") + ", util " + (
            "-" if r["target_util_met"] is None else "met" if r["target_util_met"] else "NOT met")
        lines.append(
            f"| {r['name']} | {r['frames']} | {r['faces']} | {r['provider']} | {r['wall_s']} | {r['summary_s']}, "
            f"{r['summary_faces_per_s']} | {r['ratio_to_standalone']} | {st['t1'] - st['t0']:.1f}, {st['faces_per_s']} | "
            f"{r['ratio_steady_to_standalone']} | {bar['t1'] - bar['t0']:.1f}, {bar['faces_per_s']} | {gtext} | "
            f"{u.get('gpu_mem_gib_max', '-')} | {u.get('cpu_percent_mean', '-')} | {ok} |")
    notes = sorted({r["nvml_note"] for r in res["runs"] if r["nvml_note"]})
    if notes:
        lines += ["", *[f"Note: {n}." for n in notes]]
    if res.get("rescored"):
        lines += ["", f"Steady windows and verdicts recomputed from the stored NVML samples on {res['rescored']} "
                      "(`--rescore`); the runs are those of the date above."]
    lines += ["", "Steady window from: " + "; ".join(f"{r['name']}: {r['steady']['source']}" for r in res["runs"]) + ".",
              "`facefleet run` writes no summary.json (only `facefleet serve` writes job reports), so these GPU figures "
              "are this script's own NVML samples.", "", "Commands:", ""]
    lines += [f"- {r['name']}: `{r['command']}`" for r in res["runs"]]
    return "\n".join(lines) + "\n"


def rescore(path: Path) -> dict:
    """Recompute a results file's steady windows and verdicts from its stored samples (a
    file written before the GPU-busy window took its steady window from the progress bar)."""
    res = json.loads(path.read_text())
    best = res["standalone"]["best"]["faces_per_s"]
    for r in res["runs"]:
        r.setdefault("progress_bar", r["steady"])
        r.pop("ratio_summary_to_standalone", None)  # what ratio_to_standalone is now
        steady_state(r, res["args"]["interval"], res["args"]["trim"])
        verdict(r, best)
    res["rescored"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    path.write_text(json.dumps(res, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(res))
    return res


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.rescore:
        res = rescore(args.rescore)
        for r in res["runs"]:
            print(f"{r['name']}: end to end {r['summary_faces_per_s']} faces/s = {r['ratio_to_standalone']} of the "
                  f"model alone; steady {r['steady']['faces_per_s']} ({r['ratio_steady_to_standalone']}); "
                  f"progress bar window {r['progress_bar']['faces_per_s']}")
        print(f"rewrote {args.rescore} and its .md")
        return
    if args.standalone_child:
        print(json.dumps(standalone_child(json.loads(args.standalone_child))), flush=True)
        return
    info = machine()
    gpu = bool(info["gpus"]) and args.provider != "cpu"
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    for key in ("width", "height", "frames", "faces", "batches", "repeat"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    variants = [v for v in (args.variant if args.variant is not None else defaults["variants"]) if v.strip()]
    tag = args.tag or default_tag(info)
    if info["nvml_note"]:
        print(f"note: {info['nvml_note']}", flush=True)
    began = time.perf_counter()

    model = ensure_model()
    print(f"model {model['path']}: {model['gflops_per_face']} GFLOPs/face, RANDOM WEIGHTS (speed only)", flush=True)
    standalone = measure_standalone(model, args)
    video = sample_video(args)
    out = WORK / "out_enhance_e2e.mp4"
    runs = [run_facefleet("facefleet (defaults)", facefleet_cmd(args, video, out, model["path"], ""), out, args)]
    for v in variants:
        runs.append(run_facefleet(f"facefleet {v}", facefleet_cmd(args, video, out, model["path"], v), out, args))
    best = standalone["best"]["faces_per_s"]
    for r in runs:
        verdict(r, best)
    res = {
        "tag": tag, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "note": "RANDOM-WEIGHT model (bench/restoration_model.py): speed only, its output is noise, never enhancement",
        "targets": {"ratio_to_standalone": TARGET_RATIO, "gpu_util_mean_percent": TARGET_UTIL},
        "machine": info, "versions": versions(), "args": vars(args), "input": str(video.relative_to(ROOT)),
        "model": model, "standalone": standalone, "runs": runs, "total_s": round(time.perf_counter() - began, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"enhance_e2e_{tag}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(f"\nstandalone best: batch {standalone['best']['batch']}, {best} faces/s")
    for r in runs:
        g = r["util_steady"].get("gpu_util")
        print(f"{r['name']}: end to end {r['summary_faces_per_s']} faces/s = {r['ratio_to_standalone']} of standalone "
              f"(target {TARGET_RATIO}), steady {r['steady']['faces_per_s']}; GPU util mean {g['mean'] if g else '-'} %, p95 {g['p95'] if g else '-'} "
              f"(target {TARGET_UTIL})")
    print(f"total {res['total_s']} s; wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
