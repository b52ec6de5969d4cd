"""Faults in a multi-job run (issue 8), seeded and repeatable.

    .venv/bin/python bench/faults.py [--seed 1] [--jobs 6] [--faults 9] [--workers 2]

Submits `--jobs` small videos (anonymize, 8-frame chunks), one input that is not a video,
one video whose output lands on a "full disk" (ENOSPC injected through
FACEFLEET_FAULT_ENOSPC), a simulated job with a chunk that hangs on its first send (the
controller runs with FACEFLEET_STALL_TIMEOUT_S) and, with two workers or more, a
simulated job whose chunks fail on worker 1 (a GPU that returns errors). Then runs
`facefleet serve --until-idle` in its own process group and, at seeded moments (after a
seeded number of chunks are done, plus a seeded delay), SIGKILLs a worker actor's
process (Ray restarts it), the NVML reporter actor's process (Ray restarts it) or the
whole controller with its embedded Ray (started again on the same state dir, it resumes).

Checks: every job done with output bytes equal to a fault-free `facefleet run` of the
same inputs, or failed with a reason (and nothing at its output path); the store's
integrity_check is clean; no temporary file or work directory is left; lost = 0.
Writes bench/results/faults.md (and .json); exits 1 if anything was lost or hung.

"Kill a node" is not done here: the controller starts an embedded one-node Ray, and its
node is killed with the controller (which this does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from facefleet.jobs.runner import simulated_uri  # noqa: E402
from facefleet.jobs.store import Inbox, JobStore  # noqa: E402
from facefleet.jobs.submit import build_request  # noqa: E402
from facefleet.media.files import FAULT_ENOSPC_ENV, TMP_MARK  # noqa: E402
from facefleet.samples import SampleSpec, make_sample_video  # noqa: E402

FACEFLEET = [sys.executable, "-m", "facefleet"]
CHUNK_FRAMES = 8
KINDS = ("worker killed", "reporter killed", "controller killed")
PROCESS_TITLES = {"worker killed": b"ray::GpuWorker", "reporter killed": b"ray::NvmlReporter"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_processes(sid: int, title: bytes = b"") -> list[int]:
    """PIDs in session `sid` (the controller, started as a session leader, and its Ray:
    Ray's actor processes get process groups of their own) whose title starts with `title`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != sid:
                continue
            if (entry / "cmdline").read_bytes().startswith(title):
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return sorted(pids)


def kill_controller(proc: subprocess.Popen) -> None:
    """SIGKILL the controller and every process of its session (its Ray), by PID."""
    for pid in [proc.pid, *session_processes(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def done_chunks(state: Path) -> int:
    if not (state / "facefleet.db").exists():
        return 0
    try:
        with JobStore(state, readonly=True) as store:
            return sum(1 for job in store.jobs() for c in store.chunks(job.job_id) if c.state == "done")
    except Exception:  # being created or migrated by a controller starting up
        return 0


def leftovers(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if TMP_MARK in path.name or path.name.startswith(".facefleet-") or path.suffix == ".tmp":
                found.append(str(path))
            elif path.parent.name == "work" and path.parent.parent == root:
                found.append(str(path))  # a job's work dir left in the state dir
    return sorted(found)


def make_inputs(root: Path, jobs: int, frames: int) -> dict[str, Path]:
    data = ROOT / "tests" / "data"
    videos = root / "videos"
    videos.mkdir(parents=True)
    inputs = {}
    for i in range(jobs):
        path = videos / f"clip{i}.mp4"
        make_sample_video(path, data, SampleSpec(width=320, height=240, frames=frames + 8 * (i % 3), gop=8, seed=i))
        inputs[f"clip{i}"] = path
    bad = videos / "notavideo.mp4"
    bad.write_text("this is not a video\n")
    inputs["notavideo"] = bad
    full = videos / "diskfull.mp4"
    full.write_bytes(inputs["clip0"].read_bytes())
    inputs["diskfull"] = full
    return inputs


def reference(root: Path, inputs: list[Path], workers: int, timeout_s: float) -> dict[str, str]:
    """Output checksums of a fault-free one-shot run of the same videos."""
    out = root / "reference"
    ran = subprocess.run(
        [*FACEFLEET, "run", *map(str, inputs), "-o", str(out), "--chunk-frames", str(CHUNK_FRAMES), "--workers", str(workers), "-q"],
        capture_output=True, text=True, timeout=timeout_s, env=os.environ | {"RAY_ADDRESS": "local"},
    )
    if ran.returncode != 0:
        raise SystemExit(f"the fault-free run failed:\n{ran.stderr}")
    return {p.name: sha256(p) for p in out.glob("*.mp4")}


def fault_plan(rng: random.Random, faults: int, total_chunks: int) -> list[tuple[str, int, float]]:
    """(kind, inject once this many chunks are done, then after this many seconds)."""
    kinds = []
    while len(kinds) < faults:
        cycle = list(KINDS)
        rng.shuffle(cycle)
        kinds += cycle
    kinds = kinds[:faults]
    last = max(1, int(total_chunks * 0.8))
    moments = sorted(rng.randint(1, last) for _ in kinds)
    return [(kind, at, round(rng.uniform(0.0, 0.5), 2)) for kind, at in zip(kinds, moments)]


def fault_run(
    root: Path, seed: int = 1, jobs: int = 6, faults: int = 9, frames: int = 48, workers: int = 2,
    stall_timeout_s: float = 5.0, timeout_s: float = 900.0,
) -> dict:
    t_start = time.monotonic()
    root = Path(root)
    rng = random.Random(seed)
    inputs = make_inputs(root, jobs, frames)
    videos = [inputs[f"clip{i}"] for i in range(jobs)]
    ref = reference(root, videos, workers, timeout_s)

    state, out = root / "state", root / "out"
    kinds: dict[str, str] = {}  # job id -> kind
    options = {"chunk_frames": CHUNK_FRAMES}
    requests = [(build_request([str(p)], str(out), options, output_root=""), "video") for p in videos]
    requests.append((build_request([str(inputs["notavideo"])], str(out), options, output_root=""), "bad input"))
    requests.append((build_request([str(inputs["diskfull"])], str(out), options, output_root=""), "disk full (output)"))
    requests.append((build_request([simulated_uri(40, 5.0, hang=1, hang_tries=1)], str(out / "sim"), {"chunk_frames": 10}, output_root=""), "stalling chunk (simulated)"))
    if workers >= 2:
        requests.append((build_request([simulated_uri(80, 2.0, bad_worker=1)], str(out / "sim"), {"chunk_frames": 10}, output_root=""), "GPU errors (simulated)"))
    for request, kind in requests:
        Inbox(state).put("submit", request.payload())
        kinds[request.job_id] = kind
    total_chunks = sum(-(-(frames + 8 * (i % 3)) // CHUNK_FRAMES) for i in range(jobs))

    env = os.environ | {
        "RAY_ADDRESS": "local",  # always an embedded Ray of its own
        "FACEFLEET_STALL_TIMEOUT_S": str(stall_timeout_s),
        FAULT_ENOSPC_ENV: f"{out}/diskfull.mp4",
    }
    lives: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = open(root / f"controller-{len(lives) + 1}.log", "wb")
        proc = subprocess.Popen(
            [*FACEFLEET, "serve", "--state-dir", str(state), "--gpu-backend", "simulated", "--workers", str(workers), "--until-idle"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        lives.append(proc)
        return proc

    deadline = time.monotonic() + timeout_s
    injected: Counter[str] = Counter()
    log_lines: list[str] = []
    plan = fault_plan(rng, faults, total_chunks)
    controller = start()
    worker_kills_this_life = 0
    hung = False
    for kind, at, delay in plan:
        while done_chunks(state) < at and controller.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if controller.poll() is not None or time.monotonic() >= deadline:
            break  # the jobs ended before this fault's moment
        time.sleep(delay)
        if kind == "worker killed" and worker_kills_this_life >= workers:
            kind = "reporter killed"  # keep Ray's restart budget (2 per worker) for stalls
        if kind == "controller killed":
            kill_controller(controller)
            controller = start()
            worker_kills_this_life = 0
        else:
            pids: list[int] = []
            while not pids and controller.poll() is None and time.monotonic() < deadline:
                pids = session_processes(controller.pid, PROCESS_TITLES[kind])
                if not pids:
                    time.sleep(0.1)
            if not pids:
                break
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            worker_kills_this_life += kind == "worker killed"
        injected[kind] += 1
        log_lines.append(f"{time.monotonic() - t_start:7.1f} s  {kind} (after {at} chunks done + {delay} s)")
    try:
        controller.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        hung = True
        kill_controller(controller)
    for proc in lives:
        if proc.poll() is None:
            kill_controller(proc)

    jobs_out = []
    with JobStore(state, readonly=True) as store:
        integrity = store.integrity_check()
        for job in store.jobs():
            kind = kinds.get(job.job_id, "?")
            [row] = store.inputs(job.job_id)
            output = Path(row.output_uri)
            identical = None
            if job.state == "done":
                if kind == "video":
                    identical = output.is_file() and ref.get(output.name) == sha256(output)
                    outcome = "done" if identical else "lost"  # a done job with wrong bytes counts as lost
                else:
                    outcome = "done"
            elif job.state == "failed" and job.error:
                outcome = "lost" if output.exists() else "failed with reason"  # nothing half-written may be left
            else:
                outcome = "lost"
            attempts = store.attempts(job.job_id)
            jobs_out.append({
                "job_id": job.job_id, "kind": kind, "input": Path(row.input_uri).name if "://" not in row.input_uri else row.input_uri,
                "state": job.state, "outcome": outcome, "identical": identical, "error": job.error,
                "attempts": len(attempts), "stalled": sum(1 for a in attempts if (a.error or "").startswith("stalled")),
                "gpu_errors": sum(1 for a in attempts if "simulated GPU fault" in (a.error or "")),
                "worker_out": sum(1 for e in store.events(job.job_id) if e.kind == "worker-out"),
            })
    # faults that come from the inputs: counted as they happened (a controller kill can
    # cut a hang short before its stall timeout: the chunk's attempt is then "lost")
    injected["chunk stalled, its worker restarted (simulated hang)"] = sum(j["stalled"] for j in jobs_out)
    injected["disk full (output)"] = sum(1 for j in jobs_out if j["kind"] == "disk full (output)")
    injected["chunk failed on a GPU returning errors (simulated)"] = sum(j["gpu_errors"] for j in jobs_out)
    injected["worker taken out of rotation (reported)"] = max((j["worker_out"] for j in jobs_out), default=0)
    outcomes = Counter(j["outcome"] for j in jobs_out)
    return {
        "seed": seed, "jobs_asked": jobs, "faults_asked": faults, "workers": workers, "frames": frames,
        "stall_timeout_s": stall_timeout_s, "plan": plan, "log": log_lines,
        "injected": dict(injected), "controller_lives": len(lives), "jobs": jobs_out,
        "done": outcomes["done"], "failed": outcomes["failed with reason"], "lost": outcomes["lost"] + hung,
        "hung": hung, "integrity": integrity, "leftovers": leftovers(out, state),
        "seconds": round(time.monotonic() - t_start, 1),
    }


def markdown(report: dict, command: str) -> str:
    kinds = ["video", "bad input", "disk full (output)", "stalling chunk (simulated)", "GPU errors (simulated)"]
    lines = [
        "# Faults in a multi-job run",
        "",
        f"Produced by `{command}` (2 CPU cores, no GPU; {report['workers']} CPU worker(s) with simulated GPU metrics, "
        f"embedded Ray): {report['seconds']} s, {report['controller_lives']} controller lives, stall timeout "
        f"{report['stall_timeout_s']} s, hung: {'yes' if report['hung'] else 'no'}, store integrity check: "
        f"{'clean' if not report['integrity'] else '; '.join(report['integrity'])}, temporary files left: {len(report['leftovers'])}.",
        "",
        "| fault | injected |",
        "|---|---:|",
    ]
    for kind, count in report["injected"].items():
        lines.append(f"| {kind} | {count} |")
    lines += ["", "| jobs (kind) | jobs | done (output identical to the fault-free run) | failed with reason | lost |", "|---|---:|---:|---:|---:|"]
    for kind in kinds:
        mine = [j for j in report["jobs"] if j["kind"] == kind]
        if mine:
            count = Counter(j["outcome"] for j in mine)
            lines.append(f"| {kind} | {len(mine)} | {count['done']} | {count['failed with reason']} | {count['lost']} |")
    lines.append(f"| **all** | **{len(report['jobs'])}** | **{report['done']}** | **{report['failed']}** | **{report['lost']}** |")
    lines += ["", "Faults as injected (seconds since the bench started):", "", "```", *report["log"], "```", "", "Jobs:", "",
              "| kind | input | state | attempts | reason |", "|---|---|---|---:|---|"]
    for j in report["jobs"]:
        reason = (j["error"] or "").replace("|", "\\|")
        lines.append(f"| {j['kind']} | {j['input']} | {j['state']} | {j['attempts']} | {reason} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=6, help="video jobs (plus a bad input, a full disk and simulated ones)")
    parser.add_argument("--faults", type=int, default=9, help="kills of a worker, the reporter or the controller")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--stall-timeout-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "faults")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "faults.md")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    report = fault_run(args.work, args.seed, args.jobs, args.faults, args.frames, args.workers, args.stall_timeout_s, args.timeout_s)
    command = f"python bench/faults.py --seed {args.seed} --jobs {args.jobs} --faults {args.faults} --workers {args.workers}"
    args.out.write_text(markdown(report, command))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    print(markdown(report, command))
    sys.exit(1 if report["lost"] or report["hung"] or report["integrity"] or report["leftovers"] else 0)


if __name__ == "__main__":
    main()
