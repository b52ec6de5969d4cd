#!/usr/bin/env python3
"""The fixed cost of a `facefleet run` apart from the frames: imports, starting the embedded
Ray, starting the workers (model load, CUDA start, warm-up), and Ray's shutdown.

    python bench/startup_overhead.py [--gpu-share 1.0]
"""

import argparse
import json
import sys
import time
from pathlib import Path

t_start = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefleet.cluster.pool import WorkerPool, plan_pool  # noqa: E402
from facefleet.cluster.runtime import ray_session  # noqa: E402
from facefleet.pipeline.spec import PipelineSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gpu-share", type=float, default=1.0)
    args = p.parse_args()
    t_imported = time.perf_counter()
    with ray_session() as cluster:
        t_ray = time.perf_counter()
        pool = WorkerPool(plan_pool(cluster, gpu_share=args.gpu_share), PipelineSpec())
        t_pool = time.perf_counter()
        pool.shutdown()
        t_killed = time.perf_counter()
    t_end = time.perf_counter()
    print(json.dumps({
        "imports_s": round(t_imported - t_start, 2),
        "ray_start_s": round(t_ray - t_imported, 2),
        "workers_start_s": round(t_pool - t_ray, 2),
        "workers": len(pool.infos),
        "providers": sorted({p for i in pool.infos.values() for p in i.providers.values()}),
        "workers_stop_s": round(t_killed - t_pool, 2),
        "ray_shutdown_s": round(t_end - t_killed, 2),
    }))


if __name__ == "__main__":
    main()
