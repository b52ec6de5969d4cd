"""bench/faults.py with a node kill (issue 8), short form: the bench starts its own Ray
cluster of two nodes on 127.0.0.1 (a head and one more, a fake GPU each), the controller
(`facefleet serve --address ... --until-idle`) joins it and runs 3 video jobs, a bad input
and an output on a full disk, and at a seeded moment every process of the second node is
SIGKILLed; the head's node finishes the jobs. About 30 s on 2 cores (the cluster's start,
the controller's start, the jobs after the node's loss); the fault-free reference is computed in
this process meanwhile, or was already by test_faults.py (tests/faultref.py).

Only the node is killed here: with a controller kill in the same run (the bench's full
mix), a controller that starts while the cluster still counts the dead node's GPU, or
whose node dies while its pool starts, waits in WorkerPool.__init__ for a worker that
cannot start (bench/results/faults.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.timeout(240)
def test_a_node_killed_in_the_fault_bench(tmp_path, monkeypatch):
    from faultref import reference_meanwhile
    from faults import NODE_KILLED, fault_run

    # the fault-free run's bytes: in this process, meanwhile, and once for this and
    # test_faults.py's run of the same videos (tests/faultref.py)
    with reference_meanwhile(monkeypatch):
        report = fault_run(tmp_path, seed=2, jobs=3, faults=1, frames=32, workers=2, nodes=2, stall_timeout_s=5.0,
                           timeout_s=180.0, stuck_s=60.0, simulated=False)
    assert report["injected"].get(NODE_KILLED) == 1, report
    assert any(NODE_KILLED in line for line in report["log"]), report["log"]
    assert report["lost"] == 0 and not report["hung"], report
    assert report["integrity"] == [] and report["leftovers"] == [], report
    by_kind = {}
    for job in report["jobs"]:
        by_kind.setdefault(job["kind"], []).append(job)
    assert all(j["outcome"] == "done" and j["identical"] for j in by_kind["video"]), by_kind["video"]
    assert [j["outcome"] for j in by_kind["bad input"] + by_kind["disk full (output)"]] == ["failed with reason"] * 2
    assert report["lives"][-1]["exit"] == 0 and not report["lives"][-1]["traceback"], report["lives"]
    assert "127.0.0.1" in report["lives"][0]["first_line"] and " 2 node" in report["lives"][0]["first_line"], report["lives"]
    # both workers (one per node) had chunks; after the kill only the head's GPU finished any. By
    # GPU, not by worker: once a new worker (id 2, started by the elastic pool after the kill)
    # finished chunks after it too (a simulated GPU's UUID names its node)
    moved = {key: report[key] for key in ("attempts_by_worker", "workers_done_after_last_fault", "gpus_by_worker",
                                          "gpus_done_after_last_fault", "log")}
    assert {0, 1} <= set(report["attempts_by_worker"]), moved
    assert len({gpu for w in (0, 1) for gpu in report["gpus_by_worker"][w]}) == 2, moved
    assert len(report["gpus_done_after_last_fault"]) == 1, moved
    # the bench leaves nothing of its Ray behind: no temp dir, no process that names it
    temp = report["ray_temp"]
    assert temp and not Path(temp).exists()
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and temp.encode() in (entry / "cmdline").read_bytes():
                left.append(entry.name)
        except OSError:
            continue
    assert left == [], left
