"""The NVML reporter on a real NVIDIA GPU: `make gpu-test` (marker `gpu`).

Checked against nvidia-smi where it is installed: the same UUIDs and names, keyed by
UUID. A CUDA onnxruntime session running CenterFace in a loop must show as utilization
of this process's GPU, which NVML finds by this process's PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from facefleet.cluster.nvml import RealNvml, open_backend
from facefleet.cluster.reporter import NvmlReporter, worker_gpu_uuid

pytestmark = pytest.mark.gpu

HOPPER_OR_LATER = ("H100", "H200", "H800", "H20", "GH200", "B100", "B200", "GB200")


def nvidia_smi_gpus() -> list[tuple[int, str, str]] | None:
    """(index, uuid, name) of every GPU as nvidia-smi lists them, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        return None
    rows = [[part.strip() for part in line.split(",")] for line in out.stdout.strip().splitlines()]
    return [(int(i), uuid, name) for i, uuid, name in rows]


def test_auto_backend_is_real_and_keys_gpus_by_uuid():
    backend = open_backend("auto")
    try:
        assert backend.backend == "real"
        devices = backend.devices()
        assert devices and all(d.uuid.startswith("GPU-") for d in devices)
        assert len({d.uuid for d in devices}) == len(devices)
        listed = nvidia_smi_gpus()
        if listed is not None:
            assert [(d.index, d.uuid, d.name) for d in devices] == listed
        backend.sample()  # GPM needs two readings
        time.sleep(0.3)
        samples = backend.sample()
        assert [s.gpu_uuid for s in samples] == [d.uuid for d in devices]
        for s in samples:
            assert s.backend == "real" and not s.simulated
            assert s.name.startswith("NVIDIA")
            assert s.utilization_gpu is not None and 0 <= s.utilization_gpu <= 100
            assert s.memory_total and 0 < s.memory_used <= s.memory_total
            assert s.power_w and s.power_w > 0
            assert s.temperature_c and 0 < s.temperature_c < 120
            assert s.sm_clock_mhz and s.sm_clock_mhz > 0
            assert s.throttle_reasons is not None
            if any(key in s.name for key in HOPPER_OR_LATER):
                # GPM can be switched off (e.g. some virtual machines): then it reads None
                assert s.sm_activity is None or 0 <= s.sm_activity <= 100
        print("unsupported metrics:", backend.unsupported())
    finally:
        backend.close()


def test_utilization_rises_while_a_cuda_session_runs():
    from facefleet.models.manifest import get_model
    from facefleet.models.session import CUDA, create_session

    model = create_session(get_model("centerface"), provider="cuda")
    assert model.provider == CUDA, f"centerface fell back to {model.provider}"
    name = model.session.get_inputs()[0].name
    batch = np.random.default_rng(0).random((8, 3, 640, 640), dtype=np.float32)
    model.run({name: batch})  # the CUDA context exists from here on

    backend = RealNvml()
    uuid = backend.uuid_of_pid(os.getpid())
    assert uuid in {d.uuid for d in backend.devices()}, "NVML does not list this process on any GPU"
    assert worker_gpu_uuid()[0] == uuid  # what a GpuWorker reports

    reporter = NvmlReporter(interval=0.2, backend=backend)
    try:
        time.sleep(1.5)
        idle = reporter.aggregates(window_s=1.2)[uuid]
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                model.run({name: batch})

        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        time.sleep(4.0)
        busy = reporter.aggregates(window_s=3.0)[uuid]
        samples = [s for s in reporter.samples(since=time.time() - 3.0) if s.gpu_uuid == uuid]
        stop.set()
        worker.join()
        cost = reporter.overhead()
    finally:
        reporter.stop()
    print("idle:", idle)
    print("busy:", busy)
    print("overhead:", cost)
    assert busy["backend"] == "real" and busy["samples"] >= 10
    assert busy["util_max"] >= 20 and busy["util_mean"] >= (idle["util_mean"] or 0) + 10
    assert busy["memory_used_max"] > 0 and busy["power_mean"] > 0
    # per-process utilization of this very process, mapped by PID
    assert os.getpid() in busy["processes"]
    assert max((s.processes or {}).get(os.getpid(), 0) for s in samples) > 0
    assert cost["percent_of_one_core"] < 5  # at 0.2 s; the 0.5 s default is under 1 %
