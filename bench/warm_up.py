#!/usr/bin/env python3
"""Where a GPU worker's start goes, in fresh processes: importing onnxruntime, making the
default pipeline's sessions (build_processor), the warm-up call (the first frame through
the stages, as GpuWorker does), and a second such call. Variants: CUDA module loading
eager instead of lazy, a cuDNN workspace option, and two processes warming up at once
(what two workers sharing a GPU do).

    python bench/warm_up.py [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, os, sys, time
t0 = time.perf_counter()
import onnxruntime
getattr(onnxruntime, "preload_dlls", lambda: None)()
t1 = time.perf_counter()
from facefleet.models import session
extra = json.loads(os.environ.get("WARM_UP_CUDA_OPTIONS", "{}"))
session.CUDA_OPTIONS = {**session.CUDA_OPTIONS, **extra}
from facefleet.pipeline.processor import build_processor
from facefleet.pipeline.spec import PipelineSpec
t2 = time.perf_counter()
processor = build_processor(PipelineSpec())
t3 = time.perf_counter()
processor.warm_up()
t4 = time.perf_counter()
processor.warm_up()
t5 = time.perf_counter()
print(json.dumps({"import_ort": round(t1 - t0, 2), "import_facefleet": round(t2 - t1, 2), "sessions": round(t3 - t2, 2),
                  "warm_up": round(t4 - t3, 2), "second_call": round(t5 - t4, 3), "providers": processor.providers}))
"""

VARIANTS = [
    ("default", {}, {}),
    ("CUDA_MODULE_LOADING=EAGER", {"CUDA_MODULE_LOADING": "EAGER"}, {}),
    ("cudnn_conv_use_max_workspace=0", {}, {"cudnn_conv_use_max_workspace": "0"}),
    ("cudnn_conv_algo_search=DEFAULT", {}, {"cudnn_conv_algo_search": "DEFAULT"}),
    ("default, again", {}, {}),
]


def child(env_extra: dict, options: dict) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "WARM_UP_CUDA_OPTIONS": json.dumps(options)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=300)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"exit {proc.returncode}"}


def main() -> None:
    rows = []
    for name, env_extra, options in VARIANTS:
        t = time.perf_counter()
        rows.append({"variant": name, **result(child(env_extra, options)), "process_s": round(time.perf_counter() - t, 2)})
    t = time.perf_counter()
    pair = [child({}, {}), child({}, {})]
    for i, proc in enumerate(pair):
        rows.append({"variant": f"two at once, #{i + 1}", **result(proc), "process_s": round(time.perf_counter() - t, 2)})
    if "--json" in sys.argv:
        print(json.dumps(rows))
        return
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
