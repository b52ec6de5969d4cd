"""The Prometheus exporter: scraped over HTTP on loopback and parsed as exposition text."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from dataclasses import replace

import psutil
import pytest
from gpu_samples import H100, h100_sample
from prometheus_client.parser import text_string_to_metric_families

from facefleet.cluster.nvml import GIB, GpuSample, SimulatedNvml
from facefleet.errors import FacefleetError
from facefleet.report.metrics import EXPORTED_NAMES, GPU_LABELS, METRICS, Metrics

REAL_UUID = "GPU-6f1b2c3d-0000-1111-2222-333344445555"


def real_sample(when: float, utilization: float = 57.0, throttle: tuple[str, ...] = ("power_cap",)) -> GpuSample:
    return h100_sample(
        when, REAL_UUID, utilization_gpu=utilization, utilization_memory=20.0, memory_used=10 * GIB, power_w=350.5,
        temperature_c=65.0, decoder=12.0, throttle_reasons=throttle, sm_activity=44.0,
    )


def simulated_samples(when: float) -> list[GpuSample]:
    sim = SimulatedNvml(gpus=2, node="node-b")
    sim.record_busy(sim.devices()[0].uuid, when - 0.5, when)  # GPU 0 busy half the 1 s window
    return sim.sample(when)


def scrape(port: int) -> dict[str, list]:
    """{sample name: [Sample, ...]} from one scrape."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def types(port: int) -> dict[str, str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def one(samples: dict[str, list], name: str, **labels: str):
    found = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


@pytest.fixture
def metrics():
    m = Metrics()
    port = m.serve(0)
    assert port > 0 and m.port == port
    yield m
    m.stop()


def test_gpu_gauges_carry_node_uuid_index_name_and_backend(metrics):
    now = time.time()
    metrics.update_gpus([real_sample(now)] + simulated_samples(now))
    got = scrape(metrics.port)
    real = one(got, "facefleet_gpu_utilization_ratio", gpu_uuid=REAL_UUID)
    assert real.labels == {
        "node": "head",
        "gpu_uuid": REAL_UUID,
        "gpu_index": "0",
        "gpu_name": H100,
        "backend": "real",
    }
    assert real.value == pytest.approx(0.57)
    assert one(got, "facefleet_gpu_memory_used_bytes", gpu_uuid=REAL_UUID).value == 10 * GIB
    assert one(got, "facefleet_gpu_memory_total_bytes", gpu_uuid=REAL_UUID).value == 80 * GIB
    assert one(got, "facefleet_gpu_power_watts", gpu_uuid=REAL_UUID).value == 350.5
    assert one(got, "facefleet_gpu_temperature_celsius", gpu_uuid=REAL_UUID).value == 65.0
    assert one(got, "facefleet_gpu_sm_clock_hertz", gpu_uuid=REAL_UUID).value == 1.98e9
    assert one(got, "facefleet_gpu_sm_activity_ratio", gpu_uuid=REAL_UUID).value == pytest.approx(0.44)
    assert one(got, "facefleet_gpu_throttled", gpu_uuid=REAL_UUID).value == 1.0
    assert one(got, "facefleet_gpu_last_sample_timestamp_seconds", gpu_uuid=REAL_UUID).value == pytest.approx(now)
    assert not [s for s in got.get("facefleet_gpu_encoder_utilization_ratio", []) if s.labels["backend"] == "real"]

    simulated = [s for s in got["facefleet_gpu_utilization_ratio"] if s.labels["backend"] == "simulated"]
    assert sorted((s.labels["gpu_index"], s.value) for s in simulated) == [("0", 0.5), ("1", 0.0)]
    assert all(s.labels["gpu_uuid"].startswith("SIM-GPU-") and s.labels["node"] == "node-b" for s in simulated)
    assert all(s.labels["gpu_name"] == "simulated GPU" for s in simulated)
    for name in ("facefleet_gpu_utilization_ratio", "facefleet_gpu_power_watts", "facefleet_gpu_temperature_celsius"):
        assert len(got[name]) == 3 and all(set(s.labels) == set(GPU_LABELS) for s in got[name])


def test_the_newest_sample_of_a_gpu_wins_and_stale_gpus_go():
    clock = [1000.0]
    m = Metrics(gpu_stale_s=60.0, clock=lambda: clock[0])
    m.serve(0)
    try:
        m.update_gpus([real_sample(1000.0, utilization=80.0)])
        m.update_gpus([real_sample(990.0, utilization=10.0)])  # late and older: ignored
        assert one(scrape(m.port), "facefleet_gpu_utilization_ratio").value == pytest.approx(0.8)
        clock[0] = 1061.0  # no sample for more than 60 s: the GPU is gone
        assert "facefleet_gpu_utilization_ratio" not in scrape(m.port)
    finally:
        m.stop()


def test_jobs_queue_scaling_and_workers(metrics):
    metrics.update_job("j1", "clip.mp4", 120, 300, 31.5, {"done": 2, "running": 1, "queued": 3}, "running")
    metrics.update_job("j2", "talk.mov", 0, 900, 0.0, {"queued": 9}, "queued")
    metrics.update_job("j1", "clip.mp4", 150, 300, 30.0, {"done": 3, "running": 1, "queued": 2}, "running")
    metrics.set_queue_depth(jobs=2, chunks=12)
    metrics.scaling_request(4)
    metrics.scaling_request(0)
    for _ in range(3):
        metrics.worker_chunk_done(0, "node-a")
    metrics.worker_chunk_done(1, "node-b")
    got = scrape(metrics.port)
    kinds = types(metrics.port)

    done = one(got, "facefleet_job_frames_done_total", job_id="j1")
    assert done.labels == {"job_id": "j1", "job_name": "clip.mp4"} and done.value == 150
    assert kinds["facefleet_job_frames_done"] == "counter"
    assert one(got, "facefleet_job_input_frames", job_id="j1").value == 300
    assert one(got, "facefleet_job_frames_per_second", job_id="j1").value == 30.0
    chunks = {s.labels["state"]: s.value for s in got["facefleet_job_chunks"] if s.labels["job_id"] == "j1"}
    assert chunks == {"done": 3, "running": 1, "queued": 2}
    assert one(got, "facefleet_job_state", job_id="j2").labels["state"] == "queued"
    assert one(got, "facefleet_queue_jobs").value == 2
    assert one(got, "facefleet_queue_chunks").value == 12
    assert one(got, "facefleet_scaling_requests_total").value == 2
    assert kinds["facefleet_scaling_requests"] == "counter"
    assert one(got, "facefleet_scaling_requested_gpus").value == 0
    assert one(got, "facefleet_worker_chunks_done_total", worker="0", node="node-a").value == 3
    assert one(got, "facefleet_worker_chunks_done_total", worker="1", node="node-b").value == 1

    metrics.forget_job("j1")
    after = scrape(metrics.port)
    job_series = [s for name, rows in after.items() if name.startswith("facefleet_job_") for s in rows]
    assert job_series and {s.labels["job_id"] for s in job_series} == {"j2"}


def test_every_exported_name_is_listed_and_follows_the_conventions(metrics):
    now = time.time()
    real = real_sample(now)
    metrics.update_gpus([replace(real, encoder=5.0)])
    metrics.update_job("j1", "clip.mp4", 1, 2, 1.0, {"done": 1}, "running")
    metrics.worker_chunk_done(0, "n")
    got = scrape(metrics.port)
    assert set(got) == set(EXPORTED_NAMES)  # everything listed is exported, and only that
    assert len(EXPORTED_NAMES) == len(METRICS)
    for definition in METRICS:
        assert re.fullmatch(r"facefleet_[a-z0-9_]+", definition.name)
        assert definition.name.endswith("_total") == (definition.kind == "counter"), definition.name
        assert not re.search(r"_(percent|mib|gib|mhz|ms)(_|$)", definition.name), "base units only"


def listeners(port: int) -> list:
    return [c for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def other_addresses() -> list[str]:
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def test_the_server_listens_on_loopback_only_and_stop_closes_it():
    m = Metrics()
    port = m.serve(0)
    try:
        assert [c.laddr.ip for c in listeners(port)] == ["127.0.0.1"]
        for address in other_addresses():  # not reachable from the machine's other addresses
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
        with pytest.raises(FacefleetError, match="already listens"):
            m.serve(0)
    finally:
        m.stop()
    assert listeners(port) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    m.stop()  # a second stop is harmless


def test_a_busy_port_is_refused_with_a_hint():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(FacefleetError, match="--metrics-port"):
            Metrics().serve(busy)


def test_private_registry_leaves_the_global_one_alone():
    from prometheus_client import REGISTRY

    first, second = Metrics(), Metrics()  # two exporters in one process do not clash
    first.set_queue_depth(1, 1)
    second.set_queue_depth(5, 50)
    assert first.registry.get_sample_value("facefleet_queue_chunks") == 1
    assert second.registry.get_sample_value("facefleet_queue_chunks") == 50
    assert REGISTRY.get_sample_value("facefleet_queue_chunks") is None
