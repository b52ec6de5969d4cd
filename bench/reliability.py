"""Hostile inputs through one `facefleet run` (issue 8): the table of inputs tried by
kind, jobs done vs failed with a reason, and anything lost; Markdown to
bench/results/reliability_inputs.md.

    .venv/bin/python bench/reliability.py [--detect-size 160] [--no-huge]

The corpus is tests/hostile.py's (the one tests/test_hostile_inputs.py runs). An input
counts as
  done      an `ok` line, and an output whose frames and timestamps are the input's
  failed    a `FAILED <input>: <reason>` line and nothing at its output path
  lost      anything else: no line, both, an ok without a correct output, a failure that
            left a file at the output path, or a run that hung or crashed
and as "as expected" when that is what the corpus says it must give (a damaged input
the decoder may conceal may give either). Temporary files left anywhere count as lost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from hostile import Entry, build_corpus  # noqa: E402

TMP_MARKS = (".facefleet-", "facefleet-tmp")


def summary_lines(entry: Entry, stdout: str) -> tuple[list[str], list[str]]:
    path = re.escape(str(entry.path)).replace("\\\t", r"\s+")
    ok = [stdout[m.end():].split("\n", 1)[0] for m in re.finditer(rf"^ok  {path} -> ", stdout, re.M)]
    failed = [stdout[m.end():].split("\n", 1)[0] for m in re.finditer(rf"^FAILED {path}: ", stdout, re.M)]
    return ok, failed


def output_correct(entry: Entry, output: Path) -> str | None:
    """None when the output holds the input's frames at the input's times, else why not."""
    import av

    from facefleet.media.probe import probe_video

    if not output.is_file():
        return "no output file"
    if entry.image:
        import cv2
        import numpy as np

        return None if cv2.imdecode(np.fromfile(output, np.uint8), cv2.IMREAD_UNCHANGED) is not None else "unreadable output"
    info = probe_video(str(entry.path))
    want = [p * info.time_base for p in info.frame_pts]
    with av.open(str(output)) as c:
        stream = c.streams.video[0]
        got = [f.pts * stream.time_base for f in c.decode(stream)]
    if len(got) != len(want):
        return f"{len(got)} frames out, {len(want)} in"
    if want and max(abs(a - b) for a, b in zip(got, want)) > Fraction(1, 1000):
        return "timestamps differ"
    return None


def classify(entry: Entry, stdout: str, out_dir: Path) -> tuple[str, str]:
    ok, failed = summary_lines(entry, stdout)
    output = out_dir / entry.path.name
    if len(ok) + len(failed) != 1:
        return "lost", f"{len(ok)} ok and {len(failed)} FAILED lines"
    if failed:
        if output.exists():
            return "lost", "failed but left a file at its output path"
        return "failed", failed[0]
    why = output_correct(entry, output)
    return ("lost", why) if why else ("done", ok[0])


def run(detect_size: int, huge: bool, timeout_s: float) -> tuple[list[tuple[Entry, str, str]], dict]:
    with tempfile.TemporaryDirectory(prefix="facefleet-reliability ") as tmp:
        root = Path(tmp)
        corpus = build_corpus(root / "in put", huge=huge)
        out_dir = root / "out dir"
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONIOENCODING": "utf-8"}
        cmd = [sys.executable, "-m", "facefleet", "run", *[str(e.path) for e in corpus], "-o", str(out_dir), "-q",
               "--detect-size", str(detect_size)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, encoding="utf-8", timeout=timeout_s)
            stdout, code, hung = proc.stdout, proc.returncode, False
            traceback = "Traceback" in proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            stdout, code, hung, traceback = (exc.stdout or b"").decode("utf-8", "replace"), None, True, False
        seconds = time.perf_counter() - started
        rows = [(e, *classify(e, stdout, out_dir)) for e in corpus]
        leftovers = [str(p) for p in root.rglob("*") if any(m in p.name for m in TMP_MARKS)]
        run_facts = {"seconds": round(seconds, 1), "exit_code": code, "hung": hung, "traceback": traceback,
                     "leftovers": leftovers, "inputs": len(corpus)}
        return rows, run_facts


def as_expected(entry: Entry, state: str) -> bool:
    expect = "fail" if entry.path.suffix == ".ts" else entry.expect  # .ts: no .ts output muxer
    return {"ok": state == "done", "fail": state == "failed", "either": state in ("done", "failed")}[expect]


def markdown(rows, facts: dict, fuzz: dict | None, command: str) -> str:
    by_kind: dict[str, list] = defaultdict(list)
    for entry, state, _ in rows:
        by_kind[entry.kind].append((entry, state))
    lines = [
        "# Hostile inputs: done, failed with a reason, lost",
        "",
        f"Produced by `{command}` (corpus: tests/hostile.py), one `facefleet run` of all "
        f"{facts['inputs']} inputs on the embedded Ray with CPU workers: {facts['seconds']} s, exit code "
        f"{facts['exit_code']}, hung: {'yes' if facts['hung'] else 'no'}, traceback printed: "
        f"{'yes' if facts['traceback'] else 'no'}, temporary files left: {len(facts['leftovers'])}.",
        "",
        "| inputs (kind) | tried | done | failed with reason | lost | as expected |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0, 0, 0]
    for kind, items in by_kind.items():
        counts = [len(items), sum(s == "done" for _, s in items), sum(s == "failed" for _, s in items),
                  sum(s == "lost" for _, s in items), sum(as_expected(e, s) for e, s in items)]
        totals = [a + b for a, b in zip(totals, counts)]
        lines.append(f"| {kind} | " + " | ".join(str(c) for c in counts) + " |")
    lines.append("| **all** | " + " | ".join(f"**{c}**" for c in totals) + " |")
    if fuzz:
        lines += [
            "",
            f"Fuzzing (`bench/fuzz_inputs.py --iterations {fuzz['iterations']} --seed {fuzz['seed']}`: mutations of a "
            "small valid mp4 through probe, plan and every chunk's decode, without Ray):",
            "",
            "| mutation | tried | ok | clean one-line error | crash | hang |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind, c in fuzz["by_mutation"].items():
            lines.append(f"| {kind} | {sum(c.values())} | {c['ok']} | {c['error']} | {c['crash']} | {c['hang']} |")
        lines.append(f"| **all** | **{fuzz['tried']}** | **{fuzz['ok']}** | **{fuzz['clean_errors']}** | "
                     f"**{fuzz['crashes']}** | **{fuzz['hangs']}** |")
    lines += ["", "## Every input", "", "| kind | input | expected | outcome | line / why |", "|---|---|---|---|---|"]
    for entry, state, why in rows:
        name = entry.name.encode("unicode_escape").decode("ascii") if not entry.name.isprintable() else entry.name
        text = why.replace("|", "\\|")
        text = re.sub(r"/\S*facefleet-reliability [^/]*/", "…/", text)[:160]
        mark = "" if as_expected(entry, state) else " (unexpected)"
        lines.append(f"| {entry.kind} | `{name}` | {entry.expect} | {state}{mark} | {text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detect-size", type=int, default=160)
    parser.add_argument("--no-huge", action="store_true", help="leave out the 7680x4320 input")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "reliability_inputs.md")
    parser.add_argument("--fuzz", type=Path, default=HERE / "results" / "fuzz_inputs.json")
    args = parser.parse_args()
    rows, facts = run(args.detect_size, not args.no_huge, args.timeout_s)
    fuzz = json.loads(args.fuzz.read_text()) if args.fuzz.is_file() else None
    command = "python bench/reliability.py" + (f" --detect-size {args.detect_size}" if args.detect_size != 160 else "")
    args.out.write_text(markdown(rows, facts, fuzz, command))
    lost = sum(state == "lost" for _, state, _ in rows) + len(facts["leftovers"]) + facts["hung"]
    print(args.out.read_text().split("## Every input")[0])
    sys.exit(1 if lost or facts["traceback"] else 0)


if __name__ == "__main__":
    main()
