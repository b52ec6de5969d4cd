"""bench/enhance_e2e.py judges a run end to end and takes its steady state from the GPU's
busy window, not from the progress bar's first frame done (which, for a GPU-bound run,
starts after every chunk in flight has had frames enhanced)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def e2e(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import enhance_e2e as module

    return module


def samples(busy_from: float, busy_to: float, end: float, blip: float | None = None) -> list[dict]:
    """NVML samples every 0.2 s: idle, busy (100 %) from busy_from to busy_to, idle after;
    `blip`: one busy sample then (a worker's warm-up call)."""
    out = []
    for i in range(1, int(end / 0.2) + 1):
        t = round(i * 0.2, 1)
        busy = busy_from <= t <= busy_to or (blip is not None and abs(t - blip) < 0.01)
        out.append({"t": t, "cpu": 50.0, "gpu": [100 if busy else 1], "mem_gib": [10.0]})
    return out


def run_row(**kw) -> dict:
    # a 600-frame, 1800-face run: GPU busy from 14.0 s, first frame done at 19.0 s, last at 24.0 s
    row = {"name": "facefleet (defaults)", "frames": 600, "faces": 1800, "summary_s": 12.0, "summary_faces_per_s": 150.0,
           "progress_bar": {"source": "progress bar", "t0": 19.0, "t1": 24.0, "frames": 599, "fps": 119.8,
                            "faces_per_s": 359.4},
           "samples": samples(14.0, 24.0, 26.0, blip=5.0)}
    return row | kw


def test_steady_state_is_the_gpus_busy_window_not_the_progress_bars(e2e):
    row = run_row()
    e2e.steady_state(row, interval=0.2, trim=2.0)
    assert row["steady"]["t0"] == 14.0 and row["steady"]["t1"] == 24.0  # the warm-up blip at 5 s is not the start
    assert row["steady"]["fps"] == 60.0 and row["steady"]["faces_per_s"] == 180.0
    assert row["util_steady"]["gpu_util"]["mean"] == 100.0 and row["util_steady"]["window_s"] == [16.0, 22.0]


def test_without_gpu_samples_the_progress_bar_window_stays(e2e):
    row = run_row(samples=[])
    e2e.steady_state(row, interval=0.2, trim=2.0)
    assert row["steady"] == row["progress_bar"]
    assert "gpu_util" not in row["util_steady"]


def test_the_ratio_target_is_judged_end_to_end(e2e):
    row = run_row()
    e2e.steady_state(row, interval=0.2, trim=2.0)
    e2e.verdict(row, best=200.0)
    assert row["ratio_to_standalone"] == 0.75 and not row["target_ratio_met"]  # 150 / 200 end to end
    assert row["ratio_steady_to_standalone"] == 0.9  # 180 / 200 in the GPU's busy window
    assert row["target_util_met"]
    row["summary_faces_per_s"] = 171.0
    e2e.verdict(row, best=200.0)
    assert row["target_ratio_met"]


def test_rescore_rewrites_an_older_results_file(e2e, tmp_path):
    old = run_row()
    old["steady"] = old.pop("progress_bar")  # files before the busy window had only this one
    old |= {"provider": "CUDA", "wall_s": 26.0, "util_steady": {}, "ratio_to_standalone": 1.8, "target_ratio_met": True,
            "target_util_met": True, "command": "python -m facefleet run ...", "nvml_note": None}
    res = json.loads((ROOT / "bench" / "results" / "enhance_e2e_h100.json").read_text())  # a real file's shape
    res["standalone"]["best"]["faces_per_s"] = 200.0
    res["runs"] = [old]
    path = tmp_path / "enhance_e2e_t.json"
    path.write_text(json.dumps(res))
    e2e.rescore(path)
    got = json.loads(path.read_text())["runs"][0]
    assert got["progress_bar"]["faces_per_s"] == 359.4 and got["steady"]["faces_per_s"] == 180.0
    assert got["ratio_to_standalone"] == 0.75 and not got["target_ratio_met"]
    assert "recomputed" in path.with_suffix(".md").read_text()
