#!/usr/bin/env python3
"""facefleet vs deface 1.5.0: anonymize the same generated video with faces, compare speed.

Both tools run CenterFace at the same detector input size with the same threshold, blur,
mask scale 1.3, and audio kept. Each command is timed from process start to exit (what a
user waits for: end-to-end fps = frames / wall seconds); each tool's steady-state fps is
taken as well (facefleet's summary line, which excludes Ray start-up; deface's tqdm bar,
from the bar's first to its last print). CPU and, where present, GPU utilization are
sampled every 0.2 s.

    .venv/bin/python bench/anonymize_vs_deface.py                     # 1280x720, 900 frames
    .venv/bin/python bench/anonymize_vs_deface.py --width 1920 --height 1080 \\
        --deface-python python3 --tag h100                            # offline GPU machine

Without --deface-python the script makes bench/.venv-deface with deface 1.5.0 plus the
optional ONNX Runtime backend deface's README describes (onnx and the onnxruntime version
facefleet uses). deface's network runs on OpenCV's dnn module without a GPU (what a plain
`pip install deface` does; faster than its onnxruntime backend on CPU here) and on
onnxruntime's CUDA provider with one; --deface-backend overrides. Runs during which other
processes took more than 10 % of the tool's CPU time are repeated (shared machines).
Results go to bench/results/anonymize_vs_deface_TAG.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

try:
    import psutil
except ImportError:  # Ray vendors psutil in ray/thirdparty_files
    import importlib.util

    sys.path.append(str(Path(importlib.util.find_spec("ray").origin).parent / "thirdparty_files"))
    import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / "work"
RESULTS = Path(os.environ.get("FACEFLEET_BENCH_RESULTS") or BENCH / "results")  # bench/run.py --results-dir
DEFACE_VERSION = "1.5.0"
DEFACE_MAIN = "import sys; from deface.deface import main; sys.argv[0] = 'deface'; main()"
# deface never calls onnxruntime.preload_dlls(); the pip CUDA 13 libraries need it to load.
DEFACE_MAIN_CUDA = "import onnxruntime as o; getattr(o, 'preload_dlls', lambda: None)(); " + DEFACE_MAIN
DEFACE_PROBE = """
import json, importlib.metadata as md
def v(name):
    try: return md.version(name)
    except md.PackageNotFoundError: return None
out = {n: v(n) for n in ("deface", "onnxruntime", "onnxruntime-gpu", "onnx", "opencv-python", "imageio", "imageio-ffmpeg")}
try:
    import onnxruntime; out["providers"] = onnxruntime.get_available_providers()
except ImportError: out["providers"] = []
import imageio_ffmpeg; out["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_version()
print(json.dumps(out))
"""
FACEFLEET_SUMMARY = re.compile(r"(\d+) frames, (\d+) faces, ([\d.]+) s, ([\d.]+) fps, provider (\S+)")
TQDM = re.compile(r"(\d+)/(\d+) \[")
OTHERS_LIMIT = 0.1  # a run is spoiled when other processes used more than this share of the tool's CPU time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=900, help="30 s at 29.97 fps; fewer frames weigh Ray start-up more")
    p.add_argument("--detect-size", type=int, default=640, help="facefleet --detect-size; deface --scale matches it")
    p.add_argument("--thresh", type=float, default=0.5, help="detection threshold for both tools")
    p.add_argument("--repeat", type=int, default=1, help="runs per command; medians are reported")
    p.add_argument("--tries", type=int,
                   help="most runs per command, spoiled ones included (default 4 x --repeat); 1 keeps a spoiled run "
                        "(marked clean=false) instead of repeating it, to bound the time on a busy machine")
    p.add_argument("--deface-python", help="interpreter where deface is importable (skips making a venv)")
    p.add_argument("--deface-backend", choices=("onnxrt", "opencv"),
                   help="default: opencv without a GPU (what a plain `pip install deface` runs, and faster on CPU here), "
                        "onnxrt with one (the only way deface uses CUDA)")
    p.add_argument("--deface-ep", default="auto",
                   help="deface --execution-provider: auto (CUDA when a GPU is present, else deface's default), none, or a name")
    p.add_argument("--deface-args", default="", help="extra deface arguments, one string: --deface-args='--boxes'")
    p.add_argument("--facefleet-args", default="", help="extra facefleet arguments for every facefleet run: --facefleet-args='--execution-providers cuda'")
    p.add_argument("--variant", action="append", default=[],
                   help="an extra, non-headline facefleet run with these arguments (repeatable): --variant='--batch-size 8'")
    p.add_argument("--tag", help="results file suffix (default: cpuN, or the GPU model, e.g. h100)")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip measuring the machine's decode+encode ceiling (bench/encode_ceiling.py)")
    return p.parse_args(argv)


# ---- machine and versions -------------------------------------------------------------

def gpu_names() -> list[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    names = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
        names.append(name.decode() if isinstance(name, bytes) else name)
    return names


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_names(),
        "python": platform.python_version(),
    }


def default_tag(info: dict) -> str:
    if info["gpus"]:
        found = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", info["gpus"][0])
        return found.group(1).lower() if found else "gpu"
    return f"cpu{info['cpus']}"


def facefleet_versions() -> dict:
    import facefleet

    out = {"facefleet": facefleet.__version__}  # also when run from a checkout on PYTHONPATH
    for name in ("onnxruntime", "onnxruntime-gpu", "av", "ray", "numpy", "opencv-python-headless"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def ensure_deface_python(args, gpu: bool) -> str:
    if args.deface_python:
        return args.deface_python
    venv = BENCH / ".venv-deface"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import deface, onnxruntime"], capture_output=True).returncode == 0:
        return str(python)
    ort = "onnxruntime-gpu" if gpu else "onnxruntime"
    ort_version = md.version("onnxruntime-gpu" if _installed("onnxruntime-gpu") else "onnxruntime")
    print(f"making {venv} with deface=={DEFACE_VERSION}, onnx, {ort}=={ort_version}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", f"deface=={DEFACE_VERSION}", "onnx", f"{ort}=={ort_version}"],
                   check=True)
    return str(python)


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


# ---- input and detector size --------------------------------------------------------

def sample_video(args) -> Path:
    from facefleet.samples import SampleSpec, make_sample_video

    path = WORK / f"faces_{args.width}x{args.height}_{args.frames}.mp4"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("tmp-" + path.name)
        truth = make_sample_video(tmp, ROOT / "tests" / "data", SampleSpec(width=args.width, height=args.height, frames=args.frames))
        tmp.rename(path)
        print(f"wrote {path}: {sum(map(len, truth))} faces in {args.frames} frames", flush=True)
    return path


def detector_input(args) -> dict:
    """facefleet resizes the longer side to S and pads to 32; deface resizes to --scale, rounded up to 32."""
    from facefleet.pipeline.geometry import detect_geometry

    geom = detect_geometry(args.width, args.height, args.detect_size)
    rw, rh = geom.resized
    deface_tensor = (-(-rw // 32) * 32, -(-rh // 32) * 32)
    return {"deface_scale": f"{rw}x{rh}", "facefleet_resized": [rw, rh], "facefleet_tensor": list(geom.padded),
            "deface_tensor": list(deface_tensor)}


# ---- running and sampling -----------------------------------------------------------

class Sampler(threading.Thread):
    """Samples machine CPU %, GPU util % and memory (NVML) and the ffmpeg children of a process every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.cpu, self.gpu, self.gpu_mem, self.ffmpeg = [], [], [], []
        self.tree_cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds last seen
        self._machine0 = _busy_cpu_s()
        self._nvml = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._util = pynvml.nvmlDeviceGetUtilizationRates
            self._mem = pynvml.nvmlDeviceGetMemoryInfo
        except Exception:
            pass
        psutil.cpu_percent(None)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.cpu.append(psutil.cpu_percent(None))
            if self._nvml:
                self.gpu.append(max(self._util(h).gpu for h in self._nvml))
                self.gpu_mem.append(max(self._mem(h).used for h in self._nvml) / 2**30)  # GiB, whole device
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    with proc.oneshot():
                        times, key = proc.cpu_times(), (proc.pid, proc.create_time())
                        cmd = proc.cmdline()
                except psutil.Error:
                    continue
                self.tree_cpu[key] = times.user + times.system
                if cmd and "ffmpeg" in Path(cmd[0]).name and cmd not in self.ffmpeg:
                    self.ffmpeg.append(cmd)

    def summary(self) -> dict:
        def stats(xs):
            if not xs:
                return None
            p95 = statistics.quantiles(xs, n=20, method="inclusive")[18] if len(xs) > 1 else xs[0]
            return {"mean": round(statistics.fmean(xs), 1), "max": round(max(xs), 1), "p95": round(p95, 1)}

        machine = _busy_cpu_s() - self._machine0
        tool = sum(self.tree_cpu.values())
        return {"cpu_percent": stats(self.cpu), "gpu_percent": stats(self.gpu),
                "gpu_mem_gib_max": round(max(self.gpu_mem), 2) if self.gpu_mem else None, "tool_cpu_s": round(tool, 1),
                "machine_busy_cpu_s": round(machine, 1), "other_cpu_s": round(max(0.0, machine - tool), 1)}


def _busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


def wait_quiet(limit_percent: float = 15.0, patience_s: float = 600.0) -> float:
    """Wait until the machine is idle (other users' jobs spoil timings); return the last busy %."""
    deadline = time.monotonic() + patience_s
    while (busy := psutil.cpu_percent(interval=2.0)) > limit_percent and time.monotonic() < deadline:
        print(f"    machine {busy:.0f}% busy, waiting", flush=True)
        time.sleep(5)
    return busy


def run_timed(cmd: list[str]) -> dict:
    """Run `cmd`, timestamping every progress print; wall time is process start to exit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    chunks = []
    while data := os.read(proc.stdout.fileno(), 65536):
        chunks.append((time.perf_counter() - start, data.decode(errors="replace")))
    proc.wait()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    text = "".join(c for _, c in chunks)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{text[-3000:]}")
    return {"wall_s": round(wall, 3), "chunks": chunks, "text": text, **sampler.summary(), "ffmpeg_cmds": sampler.ffmpeg}


def tqdm_steady_fps(chunks: list[tuple[float, str]]) -> float | None:
    """Frames over the time from tqdm's first print (0/N, before the first frame) to its last (after close)."""
    marks = [(t, int(m.group(1)), int(m.group(2))) for t, c in chunks for m in TQDM.finditer(c)]
    if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
        return None
    (t0, n0, _), (t1, n1, _) = marks[0], marks[-1]
    return round((n1 - n0) / (t1 - t0), 2)


def inspect_output(path: Path) -> dict:
    """Frame count, size and the x264 settings string written into the stream."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"width": stream.codec_context.width, "height": stream.codec_context.height,
                "codec": stream.codec_context.name, "audio": len(container.streams.audio) > 0}
        frames, x264 = 0, None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            frames += 1
            if x264 is None and b"x264 - core" in bytes(packet):
                raw = bytes(packet).split(b"x264 - core", 1)[1].split(b"\x00", 1)[0].decode(errors="replace")
                opts = dict(kv.split("=", 1) for kv in raw.split() if "=" in kv)
                x264 = {k: opts.get(k) for k in ("crf", "rc", "threads", "subme", "ref", "me", "bframes", "trellis", "rc_lookahead")}
    return {**info, "frames": frames, "x264": x264, "bytes": path.stat().st_size}


# ---- the two tools --------------------------------------------------------------------

def facefleet_cmd(args, video: Path, out: Path, extra: str) -> list[str]:
    return [sys.executable, "-m", "facefleet", "run", str(video), "-o", str(out),
            "--detect-size", str(args.detect_size), "--thresh", str(args.thresh),
            "--replacewith", "blur", "--mask-scale", "1.3",
            *shlex.split(args.facefleet_args), *shlex.split(extra)]


def deface_cmd(args, python: str, video: Path, out: Path, scale: str, ep: str | None) -> list[str]:
    main = DEFACE_MAIN_CUDA if ep == "CUDAExecutionProvider" else DEFACE_MAIN
    cmd = [python, "-c", main, str(video), "-o", str(out), "--scale", scale, "--thresh", str(args.thresh),
           "--replacewith", "blur", "--mask-scale", "1.3", "--keep-audio", "--backend", args.deface_backend]
    if ep:
        cmd += ["--execution-provider", ep]
    return cmd + shlex.split(args.deface_args)


def pick_deface_ep(args, probe: dict, gpu: bool) -> str | None:
    if args.deface_backend != "onnxrt" or args.deface_ep == "none":
        return None
    if args.deface_ep != "auto":
        return args.deface_ep
    return "CUDAExecutionProvider" if gpu and "CUDAExecutionProvider" in probe["providers"] else None


def measure(name: str, cmd: list[str], out: Path, frames: int, repeat: int, parse, tries: int | None = None) -> dict:
    """Run `cmd` until `repeat` clean runs (others used under OTHERS_LIMIT of its CPU time) or
    `tries` runs in all (default 4x `repeat`)."""
    runs, spoiled = [], []
    while len(runs) < repeat and len(runs) + len(spoiled) < (tries or 4 * repeat):
        out.unlink(missing_ok=True)
        print(f"[{name} {len(runs) + 1}/{repeat}] {shlex.join(cmd)}", flush=True)
        busy_before = wait_quiet()
        r = run_timed(cmd)
        r.update(parse(r), e2e_fps=round(frames / r["wall_s"], 2), busy_percent_before=busy_before)
        r["clean"] = r["other_cpu_s"] <= OTHERS_LIMIT * r["tool_cpu_s"]
        print(f"    wall {r['wall_s']:.2f} s, end-to-end {r['e2e_fps']:.2f} fps, steady {r.get('steady_fps')} fps, "
              f"CPU s: tool {r['tool_cpu_s']}, others {r['other_cpu_s']}{'' if r['clean'] else ' (spoiled, repeating)'}; "
              f"GPU % {r['gpu_percent']}", flush=True)
        r.pop("chunks")
        r["log_tail"] = r.pop("text")[-1500:]
        (runs if r["clean"] else spoiled).append(r)
    runs = runs or spoiled  # never clean: report them anyway, marked clean=false
    output = inspect_output(out)
    if output["frames"] != frames:
        print(f"    note: {name} wrote {output['frames']} frames for {frames} input frames", flush=True)
    wall = statistics.median(r["wall_s"] for r in runs)
    steadies = [r["steady_fps"] for r in runs if r.get("steady_fps")]
    return {"name": name, "command": shlex.join(cmd), "runs": runs, "spoiled_runs": spoiled, "output": output,
            "wall_s": round(wall, 3), "e2e_fps": round(frames / wall, 2),
            "steady_fps": round(statistics.median(steadies), 2) if steadies else None}


def measure_ceiling(video: Path, gpus: int) -> dict:
    """The machine's decode+encode ceiling with facefleet's default layout and encoder
    settings (bench/encode_ceiling.py), for the 'share of the ceiling' figure."""
    sys.path.insert(0, str(ROOT))
    from facefleet.cluster.pool import plan_pool
    from facefleet.cluster.runtime import ClusterInfo

    plan = plan_pool(ClusterInfo(os.cpu_count() or 1, gpus, 1, True))  # the workers and chunks a default run gets
    workers, chunks = plan.workers, plan.chunks_per_worker
    cmd = [sys.executable, str(BENCH / "encode_ceiling.py"), str(video), "--processes", str(workers), "--chunks", str(chunks)]
    print(f"[ceiling] {shlex.join(cmd)}", flush=True)
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    print(f"    {result['fps']} fps, CPU {result['cpu_percent']} %", flush=True)
    return result | {"command": shlex.join(cmd)}


def parse_facefleet(r: dict) -> dict:
    m = FACEFLEET_SUMMARY.search(r["text"])
    if not m:
        return {"steady_fps": None}
    return {"steady_fps": float(m.group(4)), "reported_s": float(m.group(3)), "faces": int(m.group(2)), "provider": m.group(5)}


def parse_deface(r: dict) -> dict:
    provider = re.search(r"Running on (\S+?)\.", r["text"])
    return {"steady_fps": tqdm_steady_fps(r["chunks"]), "provider": provider.group(1) if provider else "opencv backend (cv2.dnn)"}


# ---- report ---------------------------------------------------------------------------

def markdown(res: dict) -> str:
    m, a = res["machine"], res["args"]
    lines = [
        f"# facefleet vs deface {DEFACE_VERSION}: {a['width']}x{a['height']}, {a['frames']} frames ({res['tag']})",
        "",
        f"{res['date']}; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, GPU: {', '.join(m['gpus']) or 'none'}.",
        f"facefleet {res['versions']['facefleet']}; deface side: {json.dumps(res['versions']['deface_python'])}.",
        f"Detector: CenterFace, facefleet --detect-size {a['detect_size']} ({res['detector']['facefleet_tensor'][0]}x"
        f"{res['detector']['facefleet_tensor'][1]} tensor), deface --scale {res['detector']['deface_scale']} "
        f"({res['detector']['deface_tensor'][0]}x{res['detector']['deface_tensor'][1]} tensor); thresh {a['thresh']}, "
        f"blur, mask scale 1.3, audio kept. deface backend: {a['deface_backend']}, execution provider "
        f"{res['deface_execution_provider'] or 'its default'}. Median of {a['repeat']} clean run(s) each.",
        "",
        "| run | wall s (median; all runs) | end-to-end fps | steady fps | vs deface (wall) | CPU % mean | tool CPU s | others' CPU s "
        "| GPU % mean/max | provider | output | x264 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in [res["deface"], res["facefleet"], *res["variants"]]:
        runs, out = row["runs"], row["output"]
        gpu = runs[0]["gpu_percent"]
        x = out["x264"] or {}
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
        gpu_text = f"{gpu['mean']}/{gpu['max']}" if gpu else "-"
        lines.append(
            f"| {row['name']} | {row['wall_s']:.2f}; {walls} | {row['e2e_fps']:.2f} | "
            f"{row['steady_fps']} | {row.get('ratio_e2e', '-')} | {statistics.median(r['cpu_percent']['mean'] for r in runs)} | "
            f"{statistics.median(r['tool_cpu_s'] for r in runs)} | {max(r['other_cpu_s'] for r in runs)} | "
            f"{gpu_text} | {runs[0].get('provider')} | "
            f"{out['frames']} fr {out['width']}x{out['height']}{' +audio' if out['audio'] else ''}, "
            f"{out.get('bytes', 0) / 1e6:.1f} MB | "
            f"crf {x.get('crf')}, subme {x.get('subme')}, ref {x.get('ref')}, threads {x.get('threads')} |")
    r = res["ratios"]
    lines += ["", f"**facefleet / deface, end-to-end (wall time): {r['e2e']}x**; steady-state: {r['steady']}x.", ""]
    c = res.get("ceiling")
    if c:
        lines += [f"Decode+encode ceiling of this machine (no processing; facefleet's chunk code, {c['processes']} process(es) x "
                  f"{c['chunks_per_process']} chunks, x264 {c['encoder']['preset']} crf {c['encoder']['crf']} "
                  f"{c['encoder']['threads']} threads): **{c['fps']} fps** (CPU {c['cpu_percent']} %); facefleet's steady "
                  f"rate is {round(100 * r['of_ceiling'], 1) if r.get('of_ceiling') else '-'} % of it.", ""]
    lines += ["Commands:", ""]
    lines += [f"- {row['name']}: `{row['command']}`" for row in [res["deface"], res["facefleet"], *res["variants"]]]
    if res["deface"]["runs"][0]["ffmpeg_cmds"]:
        lines += ["", "ffmpeg processes deface started:", ""]
        lines += [f"- `{shlex.join(c)}`" for c in res["deface"]["runs"][0]["ffmpeg_cmds"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    info = machine()
    gpu = bool(info["gpus"])
    tag = args.tag or default_tag(info)
    args.deface_backend = args.deface_backend or ("onnxrt" if gpu else "opencv")
    deface_python = ensure_deface_python(args, gpu)
    probe = json.loads(subprocess.run([deface_python, "-c", DEFACE_PROBE], capture_output=True, text=True, check=True).stdout)
    ep = pick_deface_ep(args, probe, gpu)
    video = sample_video(args)
    det = detector_input(args)
    print(f"detector input: facefleet {det['facefleet_tensor']}, deface --scale {det['deface_scale']} -> {det['deface_tensor']}")

    deface = measure("deface", deface_cmd(args, deface_python, video, WORK / "out_deface.mp4", det["deface_scale"], ep),
                     WORK / "out_deface.mp4", args.frames, args.repeat, parse_deface, args.tries)
    ff = measure("facefleet", facefleet_cmd(args, video, WORK / "out_facefleet.mp4", ""),
                 WORK / "out_facefleet.mp4", args.frames, args.repeat, parse_facefleet, args.tries)
    variants = [measure(f"facefleet {v}", facefleet_cmd(args, video, WORK / "out_variant.mp4", v),
                        WORK / "out_variant.mp4", args.frames, args.repeat, parse_facefleet, args.tries) for v in args.variant]
    for row in [ff, *variants]:
        row["ratio_e2e"] = round(deface["wall_s"] / row["wall_s"], 2)
    ratios = {"e2e": ff["ratio_e2e"],
              "steady": round(ff["steady_fps"] / deface["steady_fps"], 2) if ff["steady_fps"] and deface["steady_fps"] else None}
    ceiling = measure_ceiling(video, len(info["gpus"])) if args.ceiling else None
    if ceiling and ff["steady_fps"]:
        ratios["of_ceiling"] = round(ff["steady_fps"] / ceiling["fps"], 3)
    res = {
        "tag": tag, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": info,
        "versions": {**facefleet_versions(), "deface_python": probe}, "args": vars(args), "input": str(video.relative_to(ROOT)),
        "detector": det, "deface_execution_provider": ep, "deface": deface, "facefleet": ff, "variants": variants,
        "ratios": ratios, "ceiling": ceiling,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"anonymize_vs_deface_{tag}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(f"\ndeface    {deface['e2e_fps']:.2f} fps end-to-end ({deface['wall_s']:.2f} s), steady {deface['steady_fps']} fps")
    print(f"facefleet {ff['e2e_fps']:.2f} fps end-to-end ({ff['wall_s']:.2f} s), steady {ff['steady_fps']} fps (its own summary)")
    for v in variants:
        print(f"  {v['name']}: {v['e2e_fps']:.2f} fps end-to-end, steady {v['steady_fps']}, ratio {v['ratio_e2e']}x")
    print(f"ratio facefleet/deface: {ratios['e2e']}x end-to-end, {ratios['steady']}x steady-state")
    if ceiling:
        print(f"decode+encode ceiling {ceiling['fps']} fps; facefleet steady = {ratios.get('of_ceiling')} of it")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
