"""bench/run.py: collating the scenario scripts' JSON into one table, and running scenarios
in their own processes (failures, time-outs and skips listed, the others still run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def bench_run():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_run", None)


# Shaped like the real files (bench/results/*_h100.json), with made-up numbers.

def facefleet_run(wall, e2e, steady, gpu_mean, gpu_p95=None, mem=None, cpu=40.0):
    gpu = {"mean": gpu_mean, "max": 30}
    if gpu_p95 is not None:
        gpu["p95"] = gpu_p95
    run = {"wall_s": wall, "cpu_percent": {"mean": cpu, "max": 80.0}, "gpu_percent": gpu, "tool_cpu_s": 100.0,
           "machine_busy_cpu_s": 101.0, "other_cpu_s": 1.0, "ffmpeg_cmds": [], "steady_fps": steady, "reported_s": 10.0,
           "faces": 1234, "provider": "CUDA", "e2e_fps": e2e, "busy_percent_before": 0.0, "clean": True, "log_tail": ""}
    if mem is not None:
        run["gpu_mem_gib_max"] = mem
    return run


ANONYMIZE = {
    "tag": "t", "date": "2026-11-20T10:00:00+00:00",
    "machine": {"host": "vm", "cpus": 16, "cpu_model": "x", "memory_gib": 125.9, "gpus": ["NVIDIA H100 80GB HBM3"],
                "python": "3.12.3"},
    "versions": {"facefleet": "0.1.0", "deface_python": {"deface": "1.5.0", "providers": ["CUDAExecutionProvider"]}},
    "args": {"width": 1920, "height": 1080, "frames": 900},
    "input": "bench/work/faces_1920x1080_900.mp4",
    "deface_execution_provider": "CUDAExecutionProvider",
    "deface": {"name": "deface", "command": "deface ...", "runs": [facefleet_run(60.0, 15.0, 16.0, 2.0)],
               "spoiled_runs": [], "output": {"frames": 900}, "wall_s": 60.0, "e2e_fps": 15.0, "steady_fps": 16.0},
    # two runs: the summary takes the median of per-run figures
    "facefleet": {"name": "facefleet", "command": "python -m facefleet run ...",
                  "runs": [facefleet_run(20.0, 45.0, 100.0, 6.0, gpu_p95=20.0, mem=3.5, cpu=30.0),
                           facefleet_run(22.0, 41.0, 96.0, 8.0, gpu_p95=24.0, mem=4.5, cpu=34.0)],
                  "spoiled_runs": [], "output": {"frames": 900}, "wall_s": 21.0, "e2e_fps": 42.86, "steady_fps": 98.0,
                  "ratio_e2e": 2.86},
    "variants": [],
    "ratios": {"e2e": 2.86, "steady": 6.13, "of_ceiling": 0.92},
    "ceiling": {"processes": 1, "chunks_per_process": 4, "fps": 106.5, "cpu_percent": 70.0},
}

ENHANCE = {
    "tag": "t", "date": "2026-11-20T11:00:00+00:00",
    "targets": {"ratio_to_standalone": 0.85, "gpu_util_mean_percent": 95.0},
    "machine": {"host": "vm", "cpus": 16, "gpus": ["NVIDIA H100 80GB HBM3"], "nvidia_driver": "580.1"},
    "input": "bench/work/enhance_faces_1920x1080_600f_4k.mp4",
    "model": {"gflops_per_face": 396.4},
    "standalone": {"runs": [{"batch": 8, "provider": "CUDAExecutionProvider", "median_s": 0.04, "faces_per_s": 200.0}],
                   "best": {"batch": 8, "faces_per_s": 200.0, "provider": "CUDAExecutionProvider"}},
    "runs": [
        {"name": "facefleet (defaults)", "frames": 600, "faces": 2000, "provider": "CUDA", "wall_s": 20.0,
         "summary_faces_per_s": 180.0, "ratio_steady_to_standalone": 0.95,
         "steady": {"source": "progress bar", "t0": 10.0, "t1": 19.0, "frames": 590, "fps": 55.0, "faces_per_s": 180.0},
         "util_steady": {"window_s": [12.0, 17.0], "samples": 25,
                         "gpu_util": {"mean": 96.5, "p5": 80.0, "p50": 97.0, "p95": 100.0, "min": 70, "max": 100},
                         "gpu_mem_gib_max": 30.0, "cpu_percent_mean": 50.5, "trimmed_s": 2.0},
         "util_whole_run": {"window_s": [0.0, 20.0], "samples": 100, "gpu_util": {"mean": 40.0, "p95": 100.0},
                            "gpu_mem_gib_max": 31.25, "cpu_percent_mean": 30.0},
         "ratio_to_standalone": 0.9, "target_ratio_met": True, "target_util_met": True},
        {"name": "facefleet --gpu-share 0.5", "frames": 600, "faces": 2000, "provider": "CUDA", "summary_faces_per_s": 166.0,
         "steady": {"fps": 50.0, "faces_per_s": 166.0},
         "util_steady": {"gpu_util": {"mean": 90.0, "p95": 99.0}, "cpu_percent_mean": 55.0},
         "util_whole_run": {"gpu_mem_gib_max": 40.0}, "ratio_to_standalone": 0.83},
    ],
}

PREPROCESS = {
    "bench": "detect_preprocess", "date": "2026-11-20 12:00:00", "commit": "abc1234", "provider": "CUDAExecutionProvider",
    "frame": [1920, 1080], "batch": 16,
    "paths": {"host": {"detect": {"wall_ms_per_frame": 4.0, "process_cpu_ms_per_frame": 5.0},
                       "to_device_bytes_per_frame": 2949120},
              "graph": {"detect": {"wall_ms_per_frame": 3.2, "process_cpu_ms_per_frame": 3.0},
                        "to_device_bytes_per_frame": 6220800},
              "split": {"detect": {"wall_ms_per_frame": 2.5, "process_cpu_ms_per_frame": 2.0},
                        "to_device_bytes_per_frame": 691200}},
    "graph_vs_host": {"wall_ms_per_frame": 0.8, "process_cpu_ms_per_frame": 0.6},
    "split_vs_host": {"wall_ms_per_frame": 0.625, "process_cpu_ms_per_frame": 0.4},
}

META = {"date": "2026-11-20T13:00:00+00:00", "quick": False, "command": "python3 bench/run.py --tag t",
        "machine": {"host": "gpu-box", "cpus": 16, "cpu_model": "Xeon", "memory_gib": 125.9,
                    "gpus": ["NVIDIA H100 80GB HBM3"], "nvidia_driver": "580.159.04", "python": "3.12.3"},
        "versions": {"facefleet": "0.1.0", "onnxruntime-gpu": "1.31.1", "ray": "2.60.0", "av": "19.0.2", "numpy": "2.5.2"},
        "git": {"commit": "0123456789abcdef", "dirty": False}, "timeout_s": 900.0}


def test_lookup_paths_medians_and_missing(bench_run):
    doc = {"a": {"runs": [{"x": 1.0}, {"x": 5.0}, {"x": 2.0}, {}], "b": [10, 20]}}
    assert bench_run.lookup(doc, "a.runs.*.x") == 2.0  # median of the runs that have it
    assert bench_run.lookup(doc, "a.runs.1.x") == 5.0
    assert bench_run.lookup(doc, "a.b.-1") == 20
    assert bench_run.lookup(doc, "a.runs.7.x") is None
    assert bench_run.lookup(doc, "a.runs.*.y") is None
    assert bench_run.lookup(doc, "a.missing.deeper") is None
    assert bench_run.lookup(doc, ("a.b.0", lambda v: v * 2)) == 20
    assert bench_run.lookup(doc, ("nothing", lambda v: v * 2)) is None


def test_collate_ok_failed_and_skipped(bench_run, tmp_path):
    (tmp_path / "anonymize_vs_deface_t.json").write_text(json.dumps(ANONYMIZE))
    (tmp_path / "enhance_e2e_t.json").write_text(json.dumps(ENHANCE))
    (tmp_path / "detect_preprocess_t.json").write_text(json.dumps(PREPROCESS))
    outcomes = {
        "anonymize": {"status": "ok", "command": "python bench/anonymize_vs_deface.py --tag t", "elapsed_s": 120.0},
        "enhance": {"status": "ok", "command": "python bench/enhance_e2e.py --tag t", "elapsed_s": 90.0},
        "raydata": {"status": "failed", "reason": "exit status 1: cannot install pandas | for Ray Data",
                    "command": "python bench/facefleet_vs_ray_data.py --tag t", "elapsed_s": 3.0, "log_tail": "..."},
        "preprocess": {"status": "skipped", "reason": "no GPU (NVML sees none)"},
    }
    summary = bench_run.collate(bench_run.SCENARIOS, outcomes, tmp_path, "t", META)
    rows = {r["scenario"]: r for r in summary["scenarios"]}
    assert [r["scenario"] for r in summary["scenarios"]] == ["anonymize", "enhance", "raydata", "preprocess"]
    assert summary["machine"]["nvidia_driver"] == "580.159.04" and summary["git"]["commit"] == "0123456789abcdef"

    a = rows["anonymize"]
    assert (a["status"], a["value"], a["peer"], a["ratio"]) == ("ok", 42.86, 15.0, 2.86)
    assert (a["gpu_util_mean"], a["gpu_util_p95"], a["gpu_mem_gib"], a["cpu_percent"]) == (7.0, 22.0, 4.0, 32.0)
    assert [(t["value"], t["met"]) for t in a["targets"]] == [(2.86, False), (0.92, True)]
    assert a["extras"]["decode+encode ceiling fps"] == 106.5 and a["extras"]["deface version"] == "1.5.0"

    e = rows["enhance"]
    assert (e["value"], e["peer"], e["ratio"]) == (180.0, 200.0, 0.9)
    assert (e["gpu_util_mean"], e["gpu_util_p95"], e["cpu_percent"], e["gpu_mem_gib"]) == (96.5, 100.0, 50.5, 31.25)
    assert [t["met"] for t in e["targets"]] == [True, True]
    assert e["extras"]["first variant / model alone"] == 0.83

    assert rows["raydata"]["status"] == "failed" and "cannot install pandas" in rows["raydata"]["reason"]
    assert rows["preprocess"]["status"] == "skipped"

    md = bench_run.markdown(summary)
    lines = md.splitlines()
    assert lines[0] == "# facefleet benchmarks (t)"
    assert "NVIDIA H100 80GB HBM3 (driver 580.159.04)" in md and "Commit 0123456789abcdef;" in md
    assert "ray 2.60.0" in md and "python 3.12.3" in md
    table = [ln for ln in lines if ln.startswith("| ")]
    assert len(table) == 5  # header + 4 scenarios
    anon = next(ln for ln in table if ln.startswith("| anonymize"))
    cells = [c.strip() for c in anon.strip("|").split(" | ")]
    assert cells == ["anonymize vs deface 1.5.0", "42.86 fps end-to-end", "deface: 15.0", "2.86x",
                     "facefleet / deface >= 10x: **NOT met** (2.86); steady >= 90% of the decode+encode ceiling: met (0.92)",
                     "CUDA", "7.0 / 22.0", "32.0", "4.0", "ok"]
    enh = next(ln for ln in table if ln.startswith("| enhance"))
    assert "180.0 faces/s end to end" in enh and "96.5 / 100.0" in enh and "| 31.25 |" in enh
    rd = next(ln for ln in table if "Ray Data" in ln)
    assert rd.endswith("| failed: exit status 1: cannot install pandas \\| for Ray Data |")  # a | stays in its cell
    assert len(rd.replace("\\|", "").split("|")) == len(table[0].split("|"))
    pre = next(ln for ln in table if ln.startswith("| detector preprocessing"))
    assert pre.endswith("| skipped: no GPU (NVML sees none) |")
    assert "- facefleet steady / ceiling: 0.92" in md


def test_collate_old_file_without_p95_says_not_measured(bench_run, tmp_path):
    old = json.loads(json.dumps(ANONYMIZE))
    for run in old["facefleet"]["runs"]:
        del run["gpu_percent"]["p95"], run["gpu_mem_gib_max"]
    del old["ceiling"], old["ratios"]["of_ceiling"]
    (tmp_path / "anonymize_vs_deface_t.json").write_text(json.dumps(old))
    (tmp_path / "detect_preprocess_t.json").write_text(json.dumps(PREPROCESS))
    outcomes = {"anonymize": {"status": "ok"}, "preprocess": {"status": "ok"}}
    summary = bench_run.collate(bench_run.SCENARIOS, outcomes, tmp_path, "t", META)
    a, p = summary["scenarios"]
    assert a["gpu_util_mean"] == 7.0 and a["gpu_util_p95"] is None and a["gpu_mem_gib"] is None
    assert a["targets"][1]["met"] is None
    assert (p["value"], p["peer"], p["ratio"]) == (400.0, 250.0, 1.6)  # frames/s from ms per frame; host/split time
    assert p["gpu_util_mean"] is None and p["targets"] == []
    md = bench_run.markdown(summary)
    anon = next(ln for ln in md.splitlines() if ln.startswith("| anonymize"))
    assert "| 7.0 / not measured |" in anon and "| not measured | ok |" in anon
    assert "decode+encode ceiling: not measured" in anon
    pre = next(ln for ln in md.splitlines() if ln.startswith("| detector"))
    assert "400.0 frames/s" in pre and "| none set |" in pre and pre.count("not measured") == 3


def test_collate_unreadable_results_is_a_failure(bench_run, tmp_path):
    (tmp_path / "enhance_e2e_t.json").write_text("{not json")
    summary = bench_run.collate(bench_run.SCENARIOS, {"enhance": {"status": "ok"}}, tmp_path, "t", META)
    assert summary["scenarios"][0]["status"] == "failed" and "enhance_e2e_t.json" in summary["scenarios"][0]["reason"]


@pytest.mark.parametrize("pattern", ["anonymize_vs_deface_h100.json", "enhance_e2e_h100.json",
                                     "ray_data_vs_facefleet_h100.json", "detect_preprocess_h100.json"])
def test_keys_match_the_real_results_files(bench_run, pattern):
    """The key tables read the files the scripts really wrote (the H100 run)."""
    sc = next(s for s in bench_run.SCENARIOS if s.result.format(tag="h100") == pattern)
    doc = json.loads((RESULTS / pattern).read_text())
    for column in ("value", "peer", "ratio", "provider", "date"):
        assert bench_run.lookup(doc, sc.keys[column]) is not None, column
    for t in sc.targets:
        assert isinstance(bench_run.lookup(doc, t.key), float), t.label
    if sc.name == "enhance":  # the one that recorded p95 and memory before bench/run.py existed
        first = doc["runs"][0]  # whatever the latest run measured, read where the script wrote it
        assert bench_run.lookup(doc, sc.keys["gpu_util_p95"]) == first["util_steady"]["gpu_util"]["p95"]
        assert bench_run.lookup(doc, sc.keys["gpu_mem_gib"]) == first["util_whole_run"]["gpu_mem_gib_max"] > 0


def test_scenario_arguments(bench_run):
    by_name = {s.name: s for s in bench_run.SCENARIOS}
    args = bench_run.parse_args(["--quick", "--frames", "60", "--deface-python", "/x/python",
                                 "--anonymize-args=--repeat 2 --frames 30"])
    argv = bench_run.scenario_argv(by_name["anonymize"], args, "q")
    assert argv == ["--width=1280", "--height=720", "--frames=60", "--deface-python", "/x/python", "--tag", "q",
                    "--repeat", "2", "--frames", "30"]
    assert bench_run.scenario_argv(by_name["preprocess"], args, "q")[:2] == ["--width=1280", "--height=720"]
    assert "--frames=60" not in bench_run.scenario_argv(by_name["preprocess"], args, "q")
    assert "--variant=" in bench_run.scenario_argv(by_name["enhance"], args, "q")  # no variants in a quick run
    full = bench_run.parse_args([])
    assert bench_run.scenario_argv(by_name["enhance"], full, "h") == ["--tag", "h"]  # the script's own sizes
    assert bench_run.scenario_argv(by_name["raydata"], full, "h")[:3] == ["--width=1920", "--height=1080", "--frames=900"]
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--only", "anonymize,nope"])


def test_preprocess_skipped_without_gpu_unless_quick(bench_run):
    sc = next(s for s in bench_run.SCENARIOS if s.name == "preprocess")
    assert "no GPU" in sc.skip(bench_run.parse_args([]), {"gpus": []})
    assert sc.skip(bench_run.parse_args(["--quick"]), {"gpus": []}) is None
    assert sc.skip(bench_run.parse_args([]), {"gpus": ["NVIDIA H100 80GB HBM3"]}) is None


FAKE = """
import json, os, subprocess, sys, time
kind, tag = sys.argv[1], sys.argv[sys.argv.index("--tag") + 1]
out = os.path.join(os.environ["FACEFLEET_BENCH_RESULTS"], f"fake_{kind}_{tag}.json")
if kind == "good":
    print("working", flush=True)
    json.dump({"date": "now", "fps": 12.5, "peer_fps": 5.0}, open(out, "w"))
elif kind == "crash":
    sys.exit("something broke: no such model")
elif kind == "silent":
    pass  # exits 0 without writing its results
elif kind == "hang":  # a child in a session of its own (like a facefleet run with its Ray), then wait for ever
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    open(os.path.join(os.environ["FACEFLEET_BENCH_RESULTS"], "hang.pid"), "w").write(str(child.pid))
    time.sleep(120)
"""


def fake_scenarios(bench_run, script: Path, kinds):
    def make(kind):
        return bench_run.Scenario(
            name=kind, title=f"fake {kind}", script=script, result=f"fake_{kind}_{{tag}}.json", unit="fps", peer="peer",
            ratio="fake", keys={"value": "fps", "peer": "peer_fps", "date": "date"},
            targets=(bench_run.Target("fps >= 10", "fps", 10.0),),
            skip=(lambda args, info: "not on this machine") if kind == "absent" else (lambda args, info: None),
            extra_args=lambda args, kind=kind: [kind])
    return tuple(make(k) for k in kinds)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody reaped is dead too
    except FileNotFoundError:
        return True


def test_failures_timeouts_and_skips_are_listed_and_the_others_run(bench_run, tmp_path, capsys):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    results = tmp_path / "results"
    results.mkdir()
    stale = results / "fake_silent_x.json"  # from an earlier run: not this run's result
    stale.write_text(json.dumps({"fps": 99.0}))
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    scenarios = fake_scenarios(bench_run, script, ["hang", "crash", "silent", "absent", "good"])
    t0 = time.monotonic()
    rc = bench_run.main(["--tag", "x", "--timeout", "3", "--results-dir", str(results)], scenarios=scenarios)
    assert time.monotonic() - t0 < 60
    assert rc == 1
    summary = json.loads((results / "bench_x.json").read_text())
    rows = {r["scenario"]: r for r in summary["scenarios"]}
    assert rows["hang"]["status"] == "timed out" and "3 s" in rows["hang"]["reason"]
    pid = int((results / "hang.pid").read_text())
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(pid), "the hung scenario's child (own session) was left running"
    assert rows["crash"]["status"] == "failed" and rows["crash"]["reason"] == "exit status 1: something broke: no such model"
    assert rows["silent"]["status"] == "failed" and "fake_silent_x.json was not written" in rows["silent"]["reason"]
    assert (rows["absent"]["status"], rows["absent"]["reason"]) == ("skipped", "not on this machine")
    good = rows["good"]
    assert (good["status"], good["value"], good["peer"], good["targets"][0]["met"]) == ("ok", 12.5, 5.0, True)
    assert "working" in capsys.readouterr().out  # the scenario's output is relayed
    md = (results / "bench_x.md").read_text()
    assert "| fake crash | - | - | - | - | - | - | - | - | failed: exit status 1: something broke: no such model |" in md
    assert "| fake absent |" in md and "skipped: not on this machine" in md
    assert "| fake good | 12.5 fps | peer: 5.0 | not measured | fps >= 10: met (12.5) |" in md

    # skipped and ok only: exit status 0
    assert bench_run.main(["--tag", "y", "--results-dir", str(results), "--only", "absent,good"], scenarios=scenarios) == 0


def test_run_py_preprocess_quick(tmp_path):
    """The real thing, in a subprocess: the detector benchmark at small sizes on whatever is here."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", "preprocess", "--quick", "--tag",
                           "test", "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert (tmp_path / "detect_preprocess_test.json").exists()  # the script wrote into --results-dir
    summary = json.loads((tmp_path / "bench_test.json").read_text())
    assert summary["quick"] is True and summary["tag"] == "test"
    assert summary["versions"]["facefleet"] and summary["machine"]["python"] and summary["git"]["commit"]
    (row,) = summary["scenarios"]
    assert row["scenario"] == "preprocess" and row["status"] == "ok"
    assert row["value"] > 0 and row["peer"] > 0 and row["ratio"] > 0 and row["provider"].endswith("ExecutionProvider")
    md = (tmp_path / "bench_test.md").read_text()
    assert "QUICK smoke run" in md and "| detector preprocessing as run by default on a GPU (split) vs on the host |" in md


def test_anonymize_sampler_records_gpu_p95_and_peak_memory(bench_run, monkeypatch):
    """anonymize_vs_deface's sampler (both anonymize and raydata use it) with a stand-in NVML."""
    import itertools
    import types

    import anonymize_vs_deface as avd  # on sys.path through bench/run.py

    utils = itertools.cycle([10, 90, 90, 10])
    used = itertools.cycle([1 * 2**30, int(2.5 * 2**30)])
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=next(utils)),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=next(used)))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = avd.Sampler(os.getpid())
    sampler.start()
    time.sleep(1.5)
    sampler.stop.set()
    sampler.join()
    summary = sampler.summary()
    assert len(sampler.gpu) >= 4
    assert summary["gpu_percent"]["p95"] == 90.0 and summary["gpu_percent"]["max"] == 90
    assert 10 < summary["gpu_percent"]["mean"] < 90
    assert summary["gpu_mem_gib_max"] == 2.5
    assert "p95" in summary["cpu_percent"]
