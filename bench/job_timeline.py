#!/usr/bin/env python3
"""Where a finished job's wall time went, from what its store recorded: the time before
its first chunk started, the chunks' span and how many ran at once, and the time after
the last chunk ended (assembling the output), with one line per chunk.

    python bench/job_timeline.py STATE_DIR_OR_JOB_DIR [--json]

STATE_DIR: a run store (`facefleet run --state-dir`, or runs/<job id> in the state dir);
every job in it is shown. JOB_DIR: one job's directory (summary.json, chunks.parquet).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import pyarrow.parquet as pq


def running_at_once(spans: list[tuple[float, float]]) -> float:
    """Mean number of chunks running over the time from the first start to the last end."""
    if not spans:
        return 0.0
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return sum(e - s for s, e in spans) / (end - start) if end > start else float(len(spans))


def timeline(job_dir: Path) -> dict:
    summary = json.loads((job_dir / "summary.json").read_text())
    rows = sorted(pq.read_table(job_dir / "chunks.parquet").to_pylist(), key=lambda r: r["started"])
    job = summary["job"]
    spans = [(r["started"], r["ended"]) for r in rows]
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    frames = sum(r["frames"] for r in rows)
    return {
        "job_id": job["job_id"],
        "frames": frames,
        "job_s": round(job["finished"] - job["started"], 2),
        "fps": round(frames / (job["finished"] - job["started"]), 1),
        "before_first_chunk_s": round(first - job["started"], 2),
        "chunks_s": round(last - first, 2),
        "chunks_fps": round(frames / (last - first), 1) if last > first else None,
        "after_last_chunk_s": round(job["finished"] - last, 2),
        "running_at_once": round(running_at_once(spans), 2),
        "chunks": [
            {
                "chunk": r["chunk"],
                "frames": r["frames"],
                "worker": r["worker_id"],
                "start_s": round(r["started"] - first, 2),
                "seconds": round(r["ended"] - r["started"], 2),
                "fps": round(r["frames"] / (r["ended"] - r["started"]), 1) if r["ended"] > r["started"] else None,
                **{k: round(r[k] or 0.0, 2) for k in ("decode_s", "detect_s", "cpu_post_s", "encode_s", "waiting_s")},
            }
            for r in rows
        ],
    }


def job_dirs(path: Path) -> list[Path]:
    if (path / "summary.json").exists():
        return [path]
    return sorted(p.parent for p in path.glob("jobs/*/summary.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly
    dirs = job_dirs(Path(args.path))
    if not dirs:
        sys.exit(f"{args.path}: no finished job (summary.json) there")
    for d in dirs:
        t = timeline(d)
        if args.json:
            print(json.dumps(t))
            continue
        print(
            f"job {t['job_id']}: {t['frames']} frames in {t['job_s']} s ({t['fps']} fps); before the first chunk "
            f"{t['before_first_chunk_s']} s, chunks {t['chunks_s']} s ({t['chunks_fps']} fps, "
            f"{t['running_at_once']} at once on average), after the last chunk {t['after_last_chunk_s']} s"
        )
        print("chunk frames worker start_s seconds fps decode_s detect_s cpu_post_s encode_s waiting_s")
        for c in t["chunks"]:
            print(" ".join(str(v) for v in c.values()))


if __name__ == "__main__":
    main()
