#!/usr/bin/env python3
"""Monitoring's end-to-end cost: the same `facefleet run` with GPU sampling on and off.

Issue 6 asks that monitoring add under 1 % to a job's wall time at the default sampling
interval. bench/reporter_overhead.py measures the NVML reporter's own CPU; this script
measures what a user waits for. One generated video (facefleet.samples, 640x360, 300
frames by default) is anonymized by `facefleet run` in a subprocess, alternately with
monitoring on (NVML reporter actors sampling every --sample-interval, the dispatcher
reading them) and off (`--no-monitor`: no reporters, no GPU samples). Runs go in pairs,
in the order on/off, off/on, on/off, ... so that a slow drift of the machine weighs on
both sides alike; a pair in which other processes used more than 10 % of facefleet's CPU
time is thrown away and run again (shared machines). One unmeasured run warms the caches.

Monitoring's own cost is also read from each monitored run's job summary (summary.json
in the run's job store, `job.monitoring`): the reporter processes' CPU seconds (sampling
thread, and the whole actor process with Ray's threads), the dispatcher's seconds reading
the reporters and the controller's seconds fetching and logging samples. Their sum, over
the job's wall time times the machine's cores, is the share of the machine monitoring
took; over the job's wall time alone, the worst case (as if none of it overlapped the
job's own work). That is what can show a cost under 1 % where the on/off times cannot
(this VM's run-to-run spread is several %).

Reported: median wall time (process start to exit) on and off; the paired differences
(on - off, each pair run back to back) in % of the pair's off time, their median, range,
and a 95 % confidence interval of their mean (Student t); and the same for the job time
facefleet prints (which leaves out Ray's start and stop). Where the interval includes 0,
the difference is below what this machine's noise can resolve and the .md says so.

    .venv/bin/python bench/monitoring_overhead.py [--repeat 5] [--width 640 --height 360 --frames 300] [--tag cpu2]

Writes bench/results/monitoring_overhead_TAG.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import shlex
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from anonymize_vs_deface import (  # noqa: E402
    FACEFLEET_SUMMARY,
    OTHERS_LIMIT,
    default_tag,
    facefleet_versions,
    machine,
    run_timed,
    sample_video,
    wait_quiet,
)

from facefleet.cluster.reporter import DEFAULT_INTERVAL_S  # noqa: E402

ROOT = BENCH.parent
WORK = BENCH / "work"
RESULTS = BENCH / "results"
GOAL_PERCENT = 1.0
# two-sided 95 % Student t quantiles by degrees of freedom (a normal 1.96 beyond 30)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
       25: 2.060, 30: 2.042}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5, help="pairs (one run on, one off each)")
    p.add_argument("--sample-interval", type=float, default=DEFAULT_INTERVAL_S,
                   help="the monitored runs' --sample-interval (default: facefleet's default)")
    p.add_argument("--facefleet-args", default="", help="extra arguments for every run, one string: --facefleet-args='--workers 2'")
    p.add_argument("--others-limit", type=float, default=OTHERS_LIMIT,
                   help="a pair is run again when other processes used more than this share of facefleet's CPU time")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for the machine to be idle")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the unmeasured first run")
    p.add_argument("--render", action="store_true", help="only write the .md again from the TAG's .json")
    p.add_argument("--tag", help="results file suffix (default: cpuN, or the GPU model, e.g. h100)")
    return p.parse_args(argv)


KEPT = re.compile(r"run kept as job (\S+) in (.+?) \(report:")


def command(args, video: Path, monitor: bool) -> list[str]:
    mode = "on" if monitor else "off"
    out = WORK / f"out_monitoring_{mode}.mp4"
    state = WORK / f"monitoring_state_{mode}"  # each run is a job there; its summary says what monitoring cost
    cmd = [sys.executable, "-m", "facefleet", "run", str(video), "-o", str(out), "-q", "--state-dir", str(state)]
    cmd += ["--sample-interval", str(args.sample_interval)] if monitor else ["--no-monitor"]
    return cmd + shlex.split(args.facefleet_args)


def one_run(args, video: Path, monitor: bool) -> dict:
    cmd = command(args, video, monitor)
    busy = wait_quiet(patience_s=args.quiet_wait)
    r = run_timed(cmd)
    m = FACEFLEET_SUMMARY.search(r["text"])
    if not m or int(m.group(1)) != args.frames:
        sys.exit(f"no summary line for {args.frames} frames:\n{r['text'][-2000:]}")
    off_line = "GPU monitoring off" in r["text"]
    if off_line == monitor:
        sys.exit(f"monitoring {'on' if monitor else 'off'} asked, the run said otherwise:\n{r['text'][-2000:]}")
    kept = KEPT.search(r["text"])
    if not kept:
        sys.exit(f"no 'run kept as job' line:\n{r['text'][-2000:]}")
    summary = json.loads((Path(kept.group(2)) / "jobs" / kept.group(1) / "summary.json").read_text())
    return {
        "monitor": monitor, "command": shlex.join(cmd), "wall_s": r["wall_s"],
        "job_window_s": summary["window"]["seconds"], "monitoring": summary["job"].get("monitoring"),
        "job_s": round(args.frames / float(m.group(4)), 3) if float(m.group(4)) > 0 else float(m.group(3)),
        # the summary's fps has more digits than its seconds: the job time from frames / fps
        "job_s_printed": float(m.group(3)), "faces": int(m.group(2)), "tool_cpu_s": r["tool_cpu_s"], "other_cpu_s": r["other_cpu_s"],
        "cpu_percent": r["cpu_percent"], "busy_percent_before": busy,
        "clean": r["other_cpu_s"] <= args.others_limit * r["tool_cpu_s"],
    }


def paired(pairs: list[dict], key: str) -> dict:
    """on - off per pair, in seconds and in % of the pair's off time, with a 95 % t interval of the mean %."""
    diffs = [p["on"][key] - p["off"][key] for p in pairs]
    percents = [100 * d / p["off"][key] for d, p in zip(diffs, pairs)]
    n = len(percents)
    mean = statistics.fmean(percents)
    sd = statistics.stdev(percents) if n > 1 else float("nan")
    half = T95.get(n - 1, T95[max(k for k in T95 if k <= n - 1)] if n - 1 <= 30 else 1.96) * sd / math.sqrt(n) if n > 1 else float("nan")
    on = statistics.median(p["on"][key] for p in pairs)
    off = statistics.median(p["off"][key] for p in pairs)
    return {
        "median_on_s": round(on, 3), "median_off_s": round(off, 3),
        "median_difference_percent": round(100 * (on - off) / off, 2),
        "paired_diff_s": [round(d, 3) for d in diffs], "paired_diff_percent": [round(x, 2) for x in percents],
        "paired_median_percent": round(statistics.median(percents), 2),
        "paired_mean_percent": round(mean, 2), "paired_sd_percent": round(sd, 2),
        "ci95_percent": [round(mean - half, 2), round(mean + half, 2)],
        "on_slower_in": sum(d > 0 for d in diffs), "pairs": n,
    }


def own_cost(pairs: list[dict], cpus: int) -> dict:
    """Monitoring's own seconds in the monitored runs, as % of the machine (job wall x cores)
    and, the worst case, of the job's wall time."""
    rows = []
    for p in pairs:
        run = p["on"]
        m = run.get("monitoring") or {}
        seconds = m.get("reporter_process_cpu_s", 0.0) + m.get("dispatcher_s", 0.0) + m.get("sample_log_s", 0.0)
        rows.append({
            "seconds": round(seconds, 4), "samples": m.get("samples"), "reporter_cpu_s": m.get("reporter_cpu_s"),
            "reporter_process_cpu_s": m.get("reporter_process_cpu_s"), "dispatcher_s": m.get("dispatcher_s"),
            "sample_log_s": m.get("sample_log_s"), "job_window_s": run["job_window_s"],
            "machine_percent": round(100 * seconds / (run["job_window_s"] * cpus), 3),
            "worst_case_percent": round(100 * seconds / run["job_window_s"], 3),
        })
    return {
        "runs": rows, "cpus": cpus,
        "max_machine_percent": max(r["machine_percent"] for r in rows),
        "max_worst_case_percent": max(r["worst_case_percent"] for r in rows),
    }


def verdict(s: dict) -> str:
    low, high = s["ci95_percent"]
    if math.isnan(low):
        return "one pair only: no noise estimate"
    if low <= 0 <= high:
        head = (f"below the noise: the 95 % interval of the paired difference, {low:+.2f} % to {high:+.2f} %, "
                "includes 0, so no difference between on and off was measured")
    else:
        head = f"{'slower' if low > 0 else 'faster'} with monitoring: 95 % interval {low:+.2f} % to {high:+.2f} %"
    if high < GOAL_PERCENT:
        tail = f"; its upper end is under the {GOAL_PERCENT:g} % goal"
    else:
        tail = f"; the noise is too large here to show that the cost is under {GOAL_PERCENT:g} %"
    return head + tail


def markdown(res: dict) -> str:
    a = res["args"]
    w, j = res["wall"], res["job"]
    lines = [
        f"# Monitoring overhead: `facefleet run` with GPU sampling on and off ({res['tag']})",
        "",
        f"{res['date']}; {res['machine']['cpus']} CPUs ({res['machine']['cpu_model']}), "
        f"{res['machine']['memory_gib']} GiB, GPU: {', '.join(res['machine']['gpus']) or 'none'}. "
        f"facefleet {res['versions'].get('facefleet')}, ray {res['versions'].get('ray')}.",
        f"Input: generated {a['width']}x{a['height']}, {a['frames']} frames with faces (facefleet.samples). "
        f"On: `--sample-interval {a['sample_interval']:g}` (the default); off: `--no-monitor`. "
        f"{len(res['pairs'])} pairs run back to back, order alternating; "
        f"{len(res['spoiled_pairs'])} pair(s) thrown away because other processes used over "
        f"{100 * a['others_limit']:.0f} % of facefleet's CPU time. GPU backend: {res['gpu_backend']}.",
        "Job time = frames / the fps on facefleet's summary line (the job's time in the runner, output assembly included; Ray's start and stop left out).",
        "",
        "| measure | median on (s) | median off (s) | on vs off (medians) | paired diff: median | mean, 95 % interval | range | on slower in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("wall time (process start to exit)", w), ("job time (summary line, no Ray start/stop)", j)]
    if res.get("wall_clean"):
        rows += [("wall time, clean pairs only", res["wall_clean"]), ("job time, clean pairs only", res["job_clean"])]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['median_on_s']:.2f} | {s['median_off_s']:.2f} | {s['median_difference_percent']:+.2f} % "
            f"| {s['paired_median_percent']:+.2f} % | {s['paired_mean_percent']:+.2f} % "
            f"[{s['ci95_percent'][0]:+.2f}, {s['ci95_percent'][1]:+.2f}] "
            f"| {min(s['paired_diff_percent']):+.2f} to {max(s['paired_diff_percent']):+.2f} % "
            f"| {s['on_slower_in']} of {s['pairs']} |"
        )
    own = res.get("own")
    if own:
        m, worst = own["max_machine_percent"], own["max_worst_case_percent"]
        lines += [
            "",
            "Monitoring's own cost in each monitored run (from the job's summary.json: reporter actor process CPU, "
            "dispatcher reading the reporters, controller fetching and logging samples):",
            "",
            "| run | samples | reporter sampling thread CPU s | reporter process CPU s | dispatcher s | sample log s | job s | % of the machine (job s x cores) | worst case: % of job s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(own["runs"], 1):
            lines.append(
                f"| {i} | {r['samples']} | {r['reporter_cpu_s']:.4f} | {r['reporter_process_cpu_s']:.4f} | {r['dispatcher_s']:.4f} "
                f"| {r['sample_log_s']:.4f} | {r['job_window_s']:.2f} | {r['machine_percent']:.3f} % | {r['worst_case_percent']:.3f} % |"
            )
        loop = max(r["dispatcher_s"] or 0.0 for r in own["runs"])
        lines += [
            "",
            f"**Own cost: monitoring used at most {m:.3f} % of the machine's CPU time over the job "
            f"({'under' if m < GOAL_PERCENT else 'not under'} the {GOAL_PERCENT:g} % goal by this measure).** "
            f"If all of it had run in series with the job's work, it would be {worst:.3f} % of the job's wall time; "
            "it does not: the reporters are processes of their own and the sample log a thread of its own; only the "
            f"dispatcher's part (at most {loop:.4f} s per job) runs in the controller's loop.",
        ]
    lines += [
        "",
        f"**Wall time: {verdict(w)}.**",
        "",
        f"Job time: {verdict(j)}.",
        "",
        "Runs (s, in the order run):",
        "",
        "| pair | first | on: wall / job | off: wall / job | others' CPU s (on, off) |",
        "|---|---|---|---|---|",
    ]
    for i, p in enumerate(res["pairs"], 1):
        lines.append(f"| {i} | {p['first']} | {p['on']['wall_s']:.2f} / {p['on']['job_s']:.2f} "
                     f"| {p['off']['wall_s']:.2f} / {p['off']['job_s']:.2f} | {p['on']['other_cpu_s']}, {p['off']['other_cpu_s']} |")
    lines += ["", "Commands:", "", f"- on: `{res['commands']['on']}`", f"- off: `{res['commands']['off']}`", ""]
    if res.get("notes"):
        lines += ["Notes:", "", *[f"- {n}" for n in res["notes"]], ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    info = machine()
    tag = args.tag or default_tag(info)
    if args.render:
        res = json.loads((RESULTS / f"monitoring_overhead_{tag}.json").read_text())
        (RESULTS / f"monitoring_overhead_{tag}.md").write_text(markdown(res))
        return
    video = sample_video(args)
    if args.warmup:
        print("[warm-up] " + shlex.join(command(args, video, True)), flush=True)
        one_run(args, video, True)
    pairs, spoiled = [], []
    while len(pairs) < args.repeat and len(pairs) + len(spoiled) < 2 * args.repeat:
        first_on = (len(pairs) + len(spoiled)) % 2 == 0
        pair = {"order": len(pairs) + len(spoiled), "first": "on" if first_on else "off"}
        for monitor in ((True, False) if first_on else (False, True)):
            r = one_run(args, video, monitor)
            pair["on" if monitor else "off"] = r
            print(f"[pair {len(pairs) + 1}/{args.repeat}] monitoring {'on ' if monitor else 'off'}: wall {r['wall_s']:.2f} s, "
                  f"job {r['job_s']:.2f} s; CPU s: facefleet {r['tool_cpu_s']}, others {r['other_cpu_s']}"
                  f"{'' if r['clean'] else ' (spoiled)'}", flush=True)
        (pairs if pair["on"]["clean"] and pair["off"]["clean"] else spoiled).append(pair)
    mixed = len(pairs) < args.repeat
    if mixed:  # never quiet enough: report every pair, spoiled ones included, and say so
        pairs, spoiled = sorted(pairs + spoiled, key=lambda p: p["order"]), []
    gpus = info["gpus"]
    res = {
        "tag": tag, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info, "versions": facefleet_versions(), "args": vars(args),
        "gpu_backend": "real (NVML)" if gpus else "simulated (no GPU here: the reporter runs with no devices to sample)",
        "commands": {"on": shlex.join(command(args, video, True)), "off": shlex.join(command(args, video, False))},
        "pairs": pairs, "spoiled_pairs": spoiled,
        "wall": paired(pairs, "wall_s"), "job": paired(pairs, "job_s"), "own": own_cost(pairs, info["cpus"]),
        "notes": [],
    }
    if not gpus:
        res["notes"].append(
            "No GPU on this machine: the monitored runs start the reporter actor and the dispatcher polls it, but "
            "there are no devices to sample (CPU workers get no simulated GPU), so this measures the monitoring "
            "machinery's fixed cost (an extra actor at start-up, the aggregate calls), not NVML sampling under load; "
            "run it on a GPU machine for that (bench/reporter_overhead_*.json has the sampler's own CPU cost).")
    clean = [p for p in pairs if p["on"]["clean"] and p["off"]["clean"]]
    if mixed and len(clean) >= 2:
        res["wall_clean"], res["job_clean"] = paired(clean, "wall_s"), paired(clean, "job_s")
    if mixed:
        res["notes"].append(
            f"The machine was shared and busy: too few pairs were clean (others' CPU under {100 * args.others_limit:.0f} % "
            "of facefleet's), so every pair run is reported, spoiled ones included; other processes' CPU time per "
            "run is in the table. The interval above is wide for that reason.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"monitoring_overhead_{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"monitoring_overhead_{tag}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
