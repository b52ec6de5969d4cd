#!/usr/bin/env python3
"""Runs the issue-7 benchmark scenarios and collates them into one table.

Scenarios (each is its own bench script, run in its own process group with this interpreter
and environment, so that a hang or a crash in one leaves the others running):

- anonymize:  facefleet vs deface 1.5.0 at 1080p, with the machine's decode+encode ceiling
              measured in the same run (bench/anonymize_vs_deface.py);
- enhance:    enhance with the restoration-class model vs the model alone at its best batch
              (bench/enhance_e2e.py; random weights, speed only);
- raydata:    facefleet vs a Ray Data map_batches baseline (bench/facefleet_vs_ray_data.py);
- preprocess: the detector with its preprocessing split (resize on the host, the rest in
              the GPU graph, the default on CUDA), all in the GPU graph, and on the host
              (bench/detect_preprocess.py; skipped without a GPU unless --quick).

Each script writes its own RESULTS/<name>_TAG.json and .md; this one reads those JSON files
and writes RESULTS/bench_TAG.json and bench_TAG.md: one row per scenario (facefleet's
figure, the peer's, the ratio, the targets and whether they are met, GPU utilization mean
and p95, CPU %, peak GPU memory, "not measured" where a script does not record it) with the
machine, versions, git commit and date (UTC). A scenario that fails or times out is listed
with the reason and the exit status is 1; a skipped one (deface not installed, no GPU for
preprocess) is listed with the reason and does not change the exit status.

    .venv/bin/python bench/run.py --quick --tag cpu2-quick        # smoke run: 720p, 120 frames
    PYTHONPATH=/tmp/site:$PWD python3 bench/run.py --tag h100      # GPU machine
    .venv/bin/python bench/run.py --only enhance,raydata --enhance-args="--variant=''"
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import enhance_e2e  # noqa: E402  (machine(), versions(), default_tag(), its targets, psutil)
import facefleet_vs_ray_data  # noqa: E402  (its target)

RESULTS = BENCH / "results"
RESULTS_ENV = "FACEFLEET_BENCH_RESULTS"  # where the scenario scripts write (their RESULTS)
TAIL_CHARS = 3000
# Targets of issue 7 that the anonymize script does not carry itself (README "Performance").
DEFACE_TARGET = 10.0
CEILING_TARGET = 0.9

# A key says where a figure is in a scenario's JSON: a dotted path ("runs.0.steady.fps";
# "*" takes the median over a list), or (path, function of the value).
Key = Union[str, tuple[str, Callable[[float], float]]]


def per_second(ms: float) -> float | None:
    return round(1000.0 / ms, 2) if ms else None


def inverse(x: float) -> float | None:
    return round(1.0 / x, 2) if x else None


@dataclass(frozen=True)
class Target:
    label: str
    key: Key
    at_least: float


@dataclass(frozen=True)
class Scenario:
    name: str  # for --only
    title: str
    script: Path
    result: str  # the JSON the script writes, "{tag}" filled in
    unit: str
    peer: str
    ratio: str  # what the ratio is
    keys: dict[str, Key]  # summary column -> key; a column left out is "not measured"
    targets: tuple[Target, ...] = ()
    extras: dict[str, Key] = field(default_factory=dict)  # secondary figures, listed under the table
    util_note: str = ""
    full: dict[str, str] = field(default_factory=dict)  # size options for a real run
    quick: dict[str, str] = field(default_factory=dict)  # size options for --quick
    size_options: tuple[str, ...] = ("--width", "--height", "--frames")  # what --width/--height/--frames reach
    skip: Callable[[argparse.Namespace, dict], str | None] = lambda args, info: None
    extra_args: Callable[[argparse.Namespace], list[str]] = lambda args: []


# ---- the scenarios: where each script keeps its figures ---------------------------------

def deface_python(args) -> str | None:
    """--deface-python, else this interpreter when it imports deface, else "" when
    bench/.venv-deface exists (the script checks and uses it), else None (skip)."""
    if args.deface_python:
        return args.deface_python
    if importlib.util.find_spec("deface") is not None:
        return sys.executable
    return "" if (BENCH / ".venv-deface" / "bin" / "python").exists() else None


def skip_anonymize(args, info: dict) -> str | None:
    if deface_python(args) is None:
        return ("deface 1.5.0 not found: this interpreter does not import it and bench/.venv-deface does not exist "
                "(pass --deface-python, or run bench/anonymize_vs_deface.py once to make the venv)")
    return None


def anonymize_args(args) -> list[str]:
    python = deface_python(args)
    return ["--deface-python", python] if python else []


def skip_preprocess(args, info: dict) -> str | None:
    if not info["gpus"] and not args.quick:
        return "no GPU (NVML sees none): the GPU path would run on the CPU provider; --quick runs it anyway as a smoke test"
    return None


def measured(row: str) -> dict[str, Key]:
    """Provider and utilization of a command timed by anonymize_vs_deface.measure (its Sampler;
    the median over the command's runs)."""
    return {"provider": f"{row}.runs.0.provider", "gpu_util_mean": f"{row}.runs.*.gpu_percent.mean",
            "gpu_util_p95": f"{row}.runs.*.gpu_percent.p95", "cpu_percent": f"{row}.runs.*.cpu_percent.mean",
            "gpu_mem_gib": f"{row}.runs.*.gpu_mem_gib_max"}


MEASURED_NOTE = "NVML and CPU % sampled every 0.2 s over the whole facefleet command (Ray start-up included)"

SCENARIOS = (
    Scenario(
        name="anonymize", title="anonymize vs deface 1.5.0", script=BENCH / "anonymize_vs_deface.py",
        result="anonymize_vs_deface_{tag}.json", unit="fps end-to-end", peer="deface",
        ratio="facefleet / deface, wall time of the whole command",
        keys={"value": "facefleet.e2e_fps", "peer": "deface.e2e_fps", "ratio": "ratios.e2e",
              **measured("facefleet"), "video": "input", "date": "date"},
        targets=(Target(f"facefleet / deface >= {DEFACE_TARGET:g}x", "ratios.e2e", DEFACE_TARGET),
                 Target(f"steady >= {CEILING_TARGET:.0%} of the decode+encode ceiling", "ratios.of_ceiling",
                        CEILING_TARGET)),
        extras={"facefleet steady fps": "facefleet.steady_fps", "deface steady fps": "deface.steady_fps",
                "ratio, steady": "ratios.steady", "decode+encode ceiling fps": "ceiling.fps",
                "facefleet steady / ceiling": "ratios.of_ceiling", "ceiling CPU %": "ceiling.cpu_percent",
                "faces found by facefleet": "facefleet.runs.0.faces", "deface version": "versions.deface_python.deface",
                "deface execution provider": "deface_execution_provider",
                "deface GPU util % mean": "deface.runs.*.gpu_percent.mean"},
        util_note=MEASURED_NOTE,
        full={"--width": "1920", "--height": "1080", "--frames": "900"},
        quick={"--width": "1280", "--height": "720", "--frames": "120"},
        skip=skip_anonymize, extra_args=anonymize_args),
    Scenario(
        name="enhance", title="enhance (restoration-class model, random weights) vs the model alone",
        script=BENCH / "enhance_e2e.py", result="enhance_e2e_{tag}.json", unit="faces/s end to end (the job's time)",
        peer="the model alone, best batch", ratio="facefleet end to end / the model alone",
        keys={"value": "runs.0.summary_faces_per_s", "peer": "standalone.best.faces_per_s",
              "ratio": "runs.0.ratio_to_standalone", "provider": "runs.0.provider",
              "gpu_util_mean": "runs.0.util_steady.gpu_util.mean", "gpu_util_p95": "runs.0.util_steady.gpu_util.p95",
              "cpu_percent": "runs.0.util_steady.cpu_percent_mean", "gpu_mem_gib": "runs.0.util_whole_run.gpu_mem_gib_max",
              "video": "input", "date": "date"},
        targets=(Target(f"facefleet / model alone >= {enhance_e2e.TARGET_RATIO}", "runs.0.ratio_to_standalone",
                        enhance_e2e.TARGET_RATIO),
                 Target(f"GPU util mean >= {enhance_e2e.TARGET_UTIL:g} %", "runs.0.util_steady.gpu_util.mean",
                        enhance_e2e.TARGET_UTIL)),
        extras={"best standalone batch": "standalone.best.batch",
                "faces/s steady (the GPU's busy window)": "runs.0.steady.faces_per_s",
                "steady / model alone": "runs.0.ratio_steady_to_standalone", "steady fps": "runs.0.steady.fps",
                "faces": "runs.0.faces", "first variant": "runs.1.name",
                "first variant faces/s end to end": "runs.1.summary_faces_per_s",
                "first variant / model alone": "runs.1.ratio_to_standalone",
                "first variant GPU util % mean": "runs.1.util_steady.gpu_util.mean",
                "model GFLOPs per face": "model.gflops_per_face"},
        util_note="NVML and CPU % every 0.2 s in the steady window (the GPU's busy window, 2 s trimmed at each end); "
        "peak memory over the whole run",
        quick={"--width": "640", "--height": "360", "--frames": "8", "--faces": "1", "--batches": "1", "--repeat": "1",
               "--variant": ""}),
    Scenario(
        name="raydata", title="facefleet vs a Ray Data map_batches baseline", script=BENCH / "facefleet_vs_ray_data.py",
        result="ray_data_vs_facefleet_{tag}.json", unit="fps steady", peer="Ray Data baseline",
        ratio="facefleet / Ray Data, steady rates",
        keys={"value": "facefleet.steady_fps", "peer": "ray_data.steady_fps", "ratio": "ratios.steady",
              **measured("facefleet"), "video": "video.path", "date": "date"},
        targets=(Target(f"facefleet / Ray Data >= {facefleet_vs_ray_data.TARGET}x", "ratios.steady",
                        facefleet_vs_ray_data.TARGET),),
        extras={"ratio, whole command": "ratios.e2e", "facefleet fps whole command": "facefleet.e2e_fps",
                "Ray Data fps whole command": "ray_data.e2e_fps", "facefleet output frames": "facefleet.frames_check",
                "Ray Data output frames": "ray_data.frames_check",
                "Ray Data GPU util % mean": "ray_data.runs.*.gpu_percent.mean"},
        util_note=MEASURED_NOTE,
        full={"--width": "1920", "--height": "1080", "--frames": "900"},
        quick={"--width": "1280", "--height": "720", "--frames": "120"}),
    Scenario(
        name="preprocess", title="detector preprocessing as run by default on a GPU (split) vs on the host",
        script=BENCH / "detect_preprocess.py", result="detect_preprocess_{tag}.json", unit="frames/s (detector calls)",
        peer="host preprocessing", ratio="split / host detector frames per second",
        keys={"value": ("paths.split.detect.wall_ms_per_frame", per_second),
              "peer": ("paths.host.detect.wall_ms_per_frame", per_second),
              "ratio": ("split_vs_host.wall_ms_per_frame", inverse), "provider": "provider", "date": "date"},
        extras={"process CPU ms per frame, split": "paths.split.detect.process_cpu_ms_per_frame",
                "process CPU ms per frame, graph": "paths.graph.detect.process_cpu_ms_per_frame",
                "process CPU ms per frame, host": "paths.host.detect.process_cpu_ms_per_frame",
                "wall ms per frame, graph (resized on the GPU too)": "paths.graph.detect.wall_ms_per_frame",
                "bytes to the device per frame, split": "paths.split.to_device_bytes_per_frame",
                "bytes to the device per frame, graph": "paths.graph.to_device_bytes_per_frame",
                "bytes to the device per frame, host": "paths.host.to_device_bytes_per_frame",
                "batch": "batch", "frame": "frame"},
        util_note="no utilization sampling: the script times detector calls (wall and CPU ms per frame)",
        quick={"--width": "1280", "--height": "720", "--batch": "4", "--calls": "3", "--warmup": "1"},
        size_options=("--width", "--height"), skip=skip_preprocess),
)


# ---- command line -------------------------------------------------------------------

def parse_args(argv=None, scenarios=SCENARIOS) -> argparse.Namespace:
    names = [s.name for s in scenarios]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(names), help=f"comma-separated scenarios (default all: {','.join(names)})")
    p.add_argument("--tag", help="results file suffix (default: cpuN, or the GPU model, e.g. h100)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (720p, 120 frames; enhance 360p, 8 frames): a smoke run, not the benchmark")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds each scenario may take before its process group is killed and it is reported as timed out")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where the scenarios and the summary write (default bench/results)")
    p.add_argument("--width", help="video/frame width for every scenario that takes one")
    p.add_argument("--height", help="video/frame height for every scenario that takes one")
    p.add_argument("--frames", help="video frames for anonymize, enhance and raydata")
    p.add_argument("--deface-python", help="interpreter that imports deface 1.5.0 (default: this one if it does, "
                                           "else bench/.venv-deface)")
    for name in names:
        p.add_argument(f"--{name}-args", default="", help=f"more arguments for the {name} script, one string (last wins)")
    args = p.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    return args


def scenario_argv(sc: Scenario, args, tag: str) -> list[str]:
    sizes = dict(sc.quick if args.quick else sc.full)
    for option in sc.size_options:
        value = getattr(args, option.lstrip("-"))
        if value is not None:
            sizes[option] = value
    argv = [f"{option}={value}" for option, value in sizes.items()]
    return [*argv, *sc.extra_args(args), "--tag", tag, *shlex.split(getattr(args, f"{sc.name}_args"))]


# ---- running one scenario ------------------------------------------------------------

def _echo(data: bytes) -> None:
    out = getattr(sys.stdout, "buffer", None)
    if out is not None:
        out.write(data)
    else:
        sys.stdout.write(data.decode(errors="replace"))
    sys.stdout.flush()


def kill_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """TERM then KILL the process group and every descendant (Ray, and runs that the scripts
    start in sessions of their own, are not all in the group)."""
    psutil = enhance_e2e.psutil
    procs = []
    if psutil:
        try:
            procs = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for child in procs:
            try:
                child.send_signal(sig)
            except psutil.Error:
                pass
        try:
            proc.wait(grace_s if sig == signal.SIGTERM else None)
        except subprocess.TimeoutExpired:
            pass
        if psutil:
            _, procs = psutil.wait_procs(procs, timeout=grace_s if sig == signal.SIGTERM else 1.0)
        if proc.poll() is not None and not procs:
            return


def run_scenario(sc: Scenario, argv: list[str], env: dict, timeout: float, results: Path, tag: str) -> dict:
    cmd = [sys.executable, str(sc.script), *argv]
    print(f"\n=== {sc.name}: {shlex.join(cmd)}", flush=True)
    began, start = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    tail = bytearray()

    def relay():
        while data := os.read(proc.stdout.fileno(), 65536):
            _echo(data)
            tail.extend(data)
            del tail[:-TAIL_CHARS]

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_tree(proc)
    except BaseException:  # Ctrl-C: take the scenario's processes down with us
        kill_tree(proc)
        raise
    reader.join(10)
    elapsed = round(time.perf_counter() - start, 1)
    log = enhance_e2e.ANSI.sub("", tail.decode(errors="replace")).replace("\r", "\n")
    out = {"command": shlex.join(cmd), "elapsed_s": elapsed}
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    path = results / sc.result.format(tag=tag)
    if timed_out:
        return out | {"status": "timed out", "reason": f"ran past --timeout {timeout:g} s; its processes were killed",
                      "log_tail": log[-TAIL_CHARS:]}
    if proc.returncode != 0:
        return out | {"status": "failed", "reason": f"exit status {proc.returncode}: {lines[-1] if lines else 'no output'}",
                      "log_tail": log[-TAIL_CHARS:]}
    if not path.exists() or path.stat().st_mtime < began - 1:
        return out | {"status": "failed", "reason": f"exit status 0 but {path.name} was not written",
                      "log_tail": log[-TAIL_CHARS:]}
    return out | {"status": "ok"}


# ---- collation ----------------------------------------------------------------------

def lookup(doc, key: Key):
    """The figure at `key` in a scenario's JSON, or None where the script did not record it."""
    path, fn = (key, None) if isinstance(key, str) else key
    value = _walk(doc, path.split("."))
    return fn(value) if fn is not None and value is not None else value


def _walk(node, parts: list[str]):
    for i, part in enumerate(parts):
        if part == "*":  # the median over a list (runs of a repeated command)
            values = [v for item in (node if isinstance(node, list) else []) if (v := _walk(item, parts[i + 1:])) is not None]
            return round(statistics.median(values), 2) if values else None
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def scenario_row(sc: Scenario, outcome: dict, results: Path, tag: str) -> dict:
    path = results / sc.result.format(tag=tag)
    row = {"scenario": sc.name, "title": sc.title, "script": os.path.relpath(sc.script, ROOT), "unit": sc.unit,
           "peer_name": sc.peer, "ratio_means": sc.ratio, "util_note": sc.util_note, **outcome}
    if outcome["status"] != "ok":
        return row
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return row | {"status": "failed", "reason": f"cannot read {path.name}: {exc}"}
    row["results_file"] = path.name
    for column in ("value", "peer", "ratio", "provider", "gpu_util_mean", "gpu_util_p95", "cpu_percent", "gpu_mem_gib",
                   "video", "date"):
        row[column] = lookup(doc, sc.keys[column]) if column in sc.keys else None
    row["targets"] = []
    for t in sc.targets:
        value = lookup(doc, t.key)
        row["targets"].append({"label": t.label, "value": value, "at_least": t.at_least,
                               "met": None if value is None else value >= t.at_least})
    row["extras"] = {label: lookup(doc, key) for label, key in sc.extras.items()}
    return row


def git_state() -> dict:
    def git(*cmd):
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def collate(scenarios, outcomes: dict[str, dict], results: Path, tag: str, meta: dict) -> dict:
    rows = [scenario_row(sc, outcomes[sc.name], results, tag) for sc in scenarios if sc.name in outcomes]
    return {"tag": tag, **meta, "scenarios": rows}


def cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def fmt(value, suffix: str = "") -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        value = round(value, 2)
    return f"{value}{suffix}"


def target_text(t: dict) -> str:
    if t["met"] is None:
        return f"{t['label']}: not measured"
    return f"{t['label']}: {'met' if t['met'] else '**NOT met**'} ({fmt(t['value'])})"


def markdown(summary: dict) -> str:
    m, v, g = summary["machine"], summary["versions"], summary["git"]
    gpus = ", ".join(m["gpus"]) or "none"
    if m.get("nvidia_driver"):
        gpus += f" (driver {m['nvidia_driver']})"
    lines = [
        f"# facefleet benchmarks ({summary['tag']})" + (" — QUICK smoke run, not the benchmark" if summary["quick"] else ""),
        "",
        f"{summary['date']} (UTC); {m['host']}: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB; GPU: {gpus}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f", python {m['python']}.",
        f"Commit {g['commit'] or 'unknown'}" + (" (with uncommitted changes)" if g["dirty"] else "")
        + f"; `{summary['command']}`.",
        "",
        "| scenario | facefleet | peer | ratio | targets | provider | GPU util % mean / p95 | CPU % mean | peak GPU memory GiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["scenarios"]:
        if r["status"] != "ok":
            lines.append(f"| {r['title']} | - | - | - | - | - | - | - | - | {r['status']}: {cell(r['reason'])} |")
            continue
        targets = "; ".join(target_text(t) for t in r["targets"]) or "none set"
        gpu = "not measured" if r["gpu_util_mean"] is None and r["gpu_util_p95"] is None else \
            f"{fmt(r['gpu_util_mean'])} / {fmt(r['gpu_util_p95'])}"
        lines.append(f"| {r['title']} | {fmt(r['value'], ' ' + r['unit'])} | {r['peer_name']}: {fmt(r['peer'])} | "
                     f"{fmt(r['ratio'], 'x')} | {targets} | {fmt(r['provider'])} | {gpu} | {fmt(r['cpu_percent'])} | "
                     f"{fmt(r['gpu_mem_gib'])} | ok |")
    lines += ["", "## Per scenario", ""]
    for r in summary["scenarios"]:
        lines.append(f"### {r['scenario']}: {r['title']} (`{r['script']}`)")
        lines.append("")
        if r["status"] != "ok":
            lines.append(f"**{r['status']}**: {r['reason']}")
        else:
            lines.append(f"Ratio: {r['ratio_means']}. Utilization: {r['util_note']}. "
                         f"Results: `{r['results_file']}` ({r['date']}" + (f"; input `{r['video']}`" if r["video"] else "") + ").")
            lines.append("")
            lines += [f"- {label}: {fmt(value)}" for label, value in r["extras"].items()]
        if r.get("command"):
            lines += ["", f"Command ({r['elapsed_s']} s): `{r['command']}`"]
        lines.append("")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------

def main(argv=None, scenarios=SCENARIOS) -> int:
    args = parse_args(argv, scenarios)
    info = enhance_e2e.machine()
    tag = args.tag or enhance_e2e.default_tag(info)
    results = args.results_dir.resolve()
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{RESULTS_ENV: str(results)})
    outcomes = {}
    for sc in scenarios:
        if sc.name not in args.only:
            continue
        reason = sc.skip(args, info)
        if reason:
            print(f"\n=== {sc.name}: skipped: {reason}", flush=True)
            outcomes[sc.name] = {"status": "skipped", "reason": reason}
            continue
        outcomes[sc.name] = run_scenario(sc, scenario_argv(sc, args, tag), env, args.timeout, results, tag)
        print(f"=== {sc.name}: {outcomes[sc.name]['status']} ({outcomes[sc.name]['elapsed_s']} s)"
              + (f": {outcomes[sc.name]['reason']}" if "reason" in outcomes[sc.name] else ""), flush=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
            "command": shlex.join([Path(sys.executable).name, "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
            "machine": info, "versions": enhance_e2e.versions(), "git": git_state(), "timeout_s": args.timeout}
    summary = collate(scenarios, outcomes, results, tag, meta)
    stem = results / f"bench_{tag}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(summary)
    stem.with_suffix(".md").write_text(text)
    print("\n" + text + f"\nwrote {stem}.json and .md", flush=True)
    return 1 if any(r["status"] in ("failed", "timed out") for r in summary["scenarios"]) else 0


if __name__ == "__main__":
    sys.exit(main())
