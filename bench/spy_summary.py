#!/usr/bin/env python3
"""Sum up a py-spy raw profile (`py-spy record -f raw --threads [--subprocesses] [--gil]`):
seconds per process, per thread name and per innermost function, so that a profile of a
whole `facefleet run` can be read as text (e.g. what holds a worker's interpreter lock).

    python bench/spy_summary.py PROFILE.txt [--rate 50] [--top 25] [--seconds WALL]

Seconds are samples / rate. With `--seconds` (the wall time profiled) each line also says
what share of that time it was: in a `--gil` profile, a process near 100 % had its
interpreter lock held all the time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_RECORD = re.compile(r"(.*?) (\d+)\n", re.S)
_THREAD = re.compile(r"^thread \(\w+\)(?::\s*(.*))?$")
_PROCESS = re.compile(r'^process (\d+):"(.*)"$', re.S)


def parse(text: str) -> list[tuple[str, str, list[str], int]]:
    """(process, thread name, frames outermost first, samples) per record."""
    records = []
    for stack, count in _RECORD.findall(text if text.endswith("\n") else text + "\n"):
        parts = stack.split(";")
        process, thread, frames = "", "", []
        for part in parts:
            if (m := _PROCESS.match(part)) is not None:
                process = f"{m.group(1)} {' '.join(m.group(2).split())[:60]}"
            elif (m := _THREAD.match(part)) is not None:
                thread = m.group(1) or "?"
            else:
                frames.append(part)
        records.append((process, thread, frames, int(count)))
    return records


def _name(thread: str) -> str:
    """A thread's name without the numbers that tell threads of one kind apart."""
    return re.sub(r"[-_ ]?\d+", "", thread.split(" (")[0]) or thread


def summarize(records, rate: float, top: int, wall: float | None) -> str:
    by_process: Counter = Counter()
    by_thread: Counter = Counter()
    by_leaf: Counter = Counter()
    for process, thread, frames, count in records:
        by_process[process] += count
        by_thread[(process, _name(thread))] += count
        leaf = frames[-1] if frames else "(no Python frame)"
        by_leaf[(process, _name(thread), leaf)] += count

    def line(key, samples) -> str:
        seconds = samples / rate
        share = f" {100 * seconds / wall:6.1f} %" if wall else ""
        return f"{seconds:8.2f} s{share}  {' | '.join(k for k in key if k)}"

    out = ["per process:"]
    out += [line((p,), n) for p, n in by_process.most_common()]
    out += ["", "per thread kind:"]
    out += [line(k, n) for k, n in by_thread.most_common(top)]
    out += ["", "per innermost function:"]
    out += [line(k, n) for k, n in by_leaf.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--rate", type=float, default=50.0, help="samples per second py-spy took (-r)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=None, help="wall seconds profiled, for shares")
    args = parser.parse_args()
    print(summarize(parse(Path(args.profile).read_text(errors="replace")), args.rate, args.top, args.seconds))


if __name__ == "__main__":
    main()
