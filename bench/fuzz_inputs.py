"""Fuzzing, long form (issue 8): mutations of a small valid mp4 through probe, plan and
every chunk's decode, counted by outcome; writes bench/results/fuzz_inputs.json.

    .venv/bin/python bench/fuzz_inputs.py --iterations 5000 --seed 1

Iterations run in a child process that reports each result as one line; a child that
says nothing for --hang-s seconds is killed and its iteration counted as a hang, a child
that dies (a crash inside FFmpeg) counts as a crash; either way the run goes on from the
next iteration. Mutation i of seed S is always the same bytes (tests/hostile.py: mutate).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def child(seed: int, start: int, stop: int) -> None:
    import numpy as np
    from hostile import fuzz_one, mutate, small_mp4

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp)
        base = small_mp4(root / "base.mp4", frames=12).read_bytes()
        for i in range(start, stop):
            kind, data = mutate(base, np.random.default_rng([seed, i]))
            path = root / f"mutant {i}.mp4"
            path.write_bytes(data)
            print(json.dumps({"i": i, "kind": kind, "start": True}), flush=True)
            state, message = fuzz_one(path, root)
            path.unlink()
            print(json.dumps({"i": i, "kind": kind, "state": state, "message": message}), flush=True)


def run(iterations: int, seed: int, hang_s: float) -> dict:
    by_kind: dict[str, Counter] = {}
    examples: dict[str, str] = {}
    crashes: list[dict] = []
    started = time.perf_counter()
    i = 0
    while i < iterations:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", "--seed", str(seed), "--start", str(i), "--stop", str(iterations)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current = None
        while True:
            if not sel.select(timeout=hang_s):  # silent too long: a hang
                proc.kill()
                proc.wait()
                if current is not None:
                    by_kind.setdefault(current["kind"], Counter())["hang"] += 1
                    crashes.append({**current, "state": "hang"})
                    i = current["i"] + 1
                break
            line = proc.stdout.readline()
            if not line:  # the child ended: done, or died inside an iteration
                proc.wait()
                if current is not None:
                    by_kind.setdefault(current["kind"], Counter())["crash"] += 1
                    crashes.append({**current, "state": f"process died ({proc.returncode})"})
                    i = current["i"] + 1
                else:
                    i = iterations
                break
            record = json.loads(line)
            if record.get("start"):
                current = record
                continue
            current = None
            i = record["i"] + 1
            by_kind.setdefault(record["kind"], Counter())[record["state"]] += 1
            if record["state"] == "crash":
                crashes.append(record)
            elif record["state"] == "error":
                examples.setdefault(record["message"].split(": ", 1)[-1][:60], record["message"])
        sel.close()
    total = Counter()
    for counts in by_kind.values():
        total.update(counts)
    return {
        "seed": seed,
        "iterations": iterations,
        "tried": sum(total.values()),
        "ok": total["ok"],
        "clean_errors": total["error"],
        "crashes": total["crash"],
        "hangs": total["hang"],
        "by_mutation": {k: {s: c.get(s, 0) for s in ("ok", "error", "crash", "hang")} for k, c in sorted(by_kind.items())},
        "crash_details": crashes[:50],
        "error_examples": sorted(examples.values())[:40],
        "seconds": round(time.perf_counter() - started, 1),
        "hang_limit_s": hang_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-s", type=float, default=30.0, help="an iteration silent this long is a hang")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fuzz_inputs.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.seed, args.start, args.stop)
        return
    result = run(args.iterations, args.seed, args.hang_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"tried {result['tried']} mutants in {result['seconds']} s: {result['ok']} ok, "
        f"{result['clean_errors']} clean one-line errors, {result['crashes']} crashes, {result['hangs']} hangs -> {args.out}"
    )
    sys.exit(1 if result["crashes"] or result["hangs"] else 0)


if __name__ == "__main__":
    main()
