#!/usr/bin/env python3
"""Session levers, measured per model call: precision (fp32 / fp16 converted at load),
cuDNN convolution algorithm search (HEURISTIC / EXHAUSTIVE / DEFAULT) and CUDA graphs.

For each model (the shipped CenterFace at a 1080p frame's detector input, 640x384, and the
restoration-class model of bench/restoration_model.py, random weights, speed only) and each
setting, a session is made through facefleet's `create_session` and timed:

- first call: the first call at the model's batch shape (cuDNN plans its algorithms);
- re-plan: the first call at a second batch shape (what a short batch used to cost);
- steady: median of `--repeat` calls with the input already on the GPU (IO binding),
  outputs left on the GPU, so the figure is the model's time, not the copies;
- peak GPU memory of this process (NVML) after the setting's calls;
- fp16 vs fp32: largest absolute output difference on the same input.

CUDA graphs (`enable_cuda_graph`) need fixed input and output addresses: that setting binds
preallocated GPU buffers and replays; it is measured for the steady figure only.

    PYTHONPATH=/tmp/site:$PWD python3 bench/cuda_options.py --tag h100
    .venv/bin/python bench/cuda_options.py --provider cpu --models centerface --repeat 3   # smoke run

Results: bench/results/cuda_options_TAG.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from enhance_e2e import default_tag, ensure_model, machine, versions  # noqa: E402

ALGOS = ("HEURISTIC", "EXHAUSTIVE", "DEFAULT")
PRECISIONS = ("fp32", "fp16")


def model_cases(names: list[str], detector_batch: int, enhancer_batch: int) -> list[dict]:
    """What to time: the model, its input name, the batch shape and a second shape."""
    from facefleet.models.manifest import get_model

    cases = []
    if "centerface" in names:
        cases.append({"name": "centerface", "spec": get_model("centerface"), "path": None,
                      "shape": (detector_batch, 3, 384, 640), "second": (max(1, detector_batch - 4), 3, 384, 640),
                      "low": 0.0, "high": 255.0})
    if "restoration" in names:
        import restoration_model as rm

        info = ensure_model()
        path = Path(info["path"])
        cases.append({"name": "restoration (random weights)", "spec": rm.bench_spec(path, info["sha256"]), "path": path,
                      "shape": (enhancer_batch, 3, 512, 512), "second": (max(1, enhancer_batch // 2), 3, 512, 512),
                      "low": -1.0, "high": 1.0})
    return cases


def process_gpu_memory() -> int | None:
    """Bytes of GPU memory this process holds (NVML), None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        total = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
        return total
    except Exception:
        return None


def device_of(session) -> tuple[str, int]:
    return ("cuda", 0) if session.on_gpu else ("cpu", 0)


def timed_calls(session, x: np.ndarray, repeat: int) -> tuple[float, list[np.ndarray]]:
    """Median seconds per call with `x` on the session's device, outputs left there."""
    import onnxruntime as ort

    device, index = device_of(session)
    value = ort.OrtValue.ortvalue_from_numpy(x, device, index)
    name = session.spec.input_name
    outputs = [o.name for o in session.session.get_outputs()]
    times = []
    result = None
    for _ in range(repeat):
        binding = session.session.io_binding()
        binding.bind_ortvalue_input(name, value)
        for out in outputs:
            binding.bind_output(out, device, index)
        t0 = time.perf_counter()
        session.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t0)
        result = binding
    return statistics.median(times), [o.numpy() for o in result.get_outputs()]


def first_call(session, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    session.run({session.spec.input_name: x})
    return time.perf_counter() - t0


def graph_calls(case: dict, precision: str, algo: str, provider: str, repeat: int, x: np.ndarray, like: list[np.ndarray]) -> float:
    """Median seconds per replay of a CUDA graph (fixed input/output buffers on the GPU)."""
    import onnxruntime as ort

    from facefleet.models.session import create_session

    session = create_session(case["spec"], provider=provider, path=case["path"], precision=precision,
                             cuda_options={"cudnn_conv_algo_search": algo, "enable_cuda_graph": "1"})
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    outs = [ort.OrtValue.ortvalue_from_shape_and_type(o.shape, o.dtype, "cuda", 0) for o in like]  # shapes of a plain run
    binding = session.session.io_binding()
    binding.bind_ortvalue_input(case["spec"].input_name, x_dev)
    for meta, value in zip(session.session.get_outputs(), outs):
        binding.bind_ortvalue_output(meta.name, value)
    session.session.run_with_iobinding(binding)  # capture
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t0)
    del session
    return statistics.median(times)


def measure_case(case: dict, provider: str, repeat: int, cuda_graphs: bool) -> list[dict]:
    from facefleet.models.session import create_session

    rng = np.random.default_rng(0)
    x = rng.uniform(case["low"], case["high"], case["shape"]).astype(np.float32)
    second = rng.uniform(case["low"], case["high"], case["second"]).astype(np.float32)
    rows = []
    reference: list[np.ndarray] | None = None
    for precision in PRECISIONS:
        for algo in ALGOS:
            gc.collect()
            row = {"model": case["name"], "batch": case["shape"][0], "precision": precision, "algo_search": algo}
            try:
                session = create_session(case["spec"], provider=provider, path=case["path"], precision=precision,
                                         cuda_options={"cudnn_conv_algo_search": algo})
                row["provider"] = session.label
                row["first_call_s"] = round(first_call(session, x), 4)
                row["replan_s"] = round(first_call(session, second), 4)
                first_call(session, x)  # back to the main shape before timing
                median, outputs = timed_calls(session, x, repeat)
                row["steady_ms"] = round(1000 * median, 3)
                row["items_per_s"] = round(case["shape"][0] / median, 1)
                row["gpu_memory_bytes"] = process_gpu_memory()
                if precision == "fp32" and reference is None:
                    reference = outputs
                elif reference is not None:
                    row["max_abs_diff_vs_fp32"] = float(max(np.abs(a.astype(np.float32) - b).max() for a, b in zip(outputs, reference)))
                del session
                if cuda_graphs and provider != "cpu" and algo == "HEURISTIC":
                    graph = graph_calls(case, precision, algo, provider, repeat, x, outputs)
                    row["cuda_graph_steady_ms"] = round(1000 * graph, 3)
                    row["cuda_graph_items_per_s"] = round(case["shape"][0] / graph, 1)
            except Exception as exc:  # a setting this onnxruntime or GPU cannot run: say so, go on
                row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"# Session levers per model call ({result['tag']}, {result['date']})",
        "",
        f"Machine: {result['machine'].get('gpus') or 'no GPU'}, {result['machine']['cpus']} CPUs; "
        f"onnxruntime {result['versions'].get('onnxruntime-gpu') or result['versions'].get('onnxruntime')}. "
        "Input on the device, outputs left there (IO binding); median of "
        f"{result['args']['repeat']} calls. The restoration model has random weights (speed only).",
        "",
        "| model | batch | precision | algo search | provider | first call s | re-plan s | steady ms | items/s | CUDA graph ms | GPU MiB | max diff vs fp32 |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['algo_search']} | error: {r['error']} ||||||||")
            continue
        mem = f"{r['gpu_memory_bytes'] / 2**20:.0f}" if r.get("gpu_memory_bytes") else "-"
        diff = f"{r['max_abs_diff_vs_fp32']:.3g}" if "max_abs_diff_vs_fp32" in r else "-"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['precision']} | {r['algo_search']} | {r['provider']} | {r['first_call_s']:.2f} | "
            f"{r['replan_s']:.2f} | {r['steady_ms']:.2f} | {r['items_per_s']:.0f} | {r.get('cuda_graph_steady_ms', '-')} | {mem} | {diff} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="centerface,restoration")
    p.add_argument("--provider", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--detector-batch", type=int, default=16)
    p.add_argument("--enhancer-batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--tag")
    p.add_argument("--results", type=Path, default=BENCH / "results")
    args = p.parse_args()
    info = machine()
    tag = args.tag or default_tag(info)
    rows = []
    for case in model_cases(args.models.split(","), args.detector_batch, args.enhancer_batch):
        rows += measure_case(case, args.provider, args.repeat, not args.no_cuda_graphs)
    result = {"bench": "cuda_options", "tag": tag, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": info, "versions": versions(), "args": vars(args) | {"results": str(args.results)}, "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"cuda_options_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"cuda_options_{tag}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
