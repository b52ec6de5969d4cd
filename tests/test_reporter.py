"""The NVML reporter without a GPU: simulated backend math, the ring buffer, aggregates,
the reporter's own overhead, backend choice, RealNvml's code paths against a stand-in
`pynvml` module, and one reporter per node on an embedded Ray with fake GPUs."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

from facefleet.cluster.nvml import (
    SIM_CONTEXT_BYTES,
    SIM_MEMORY_TOTAL,
    SIM_NAME,
    NvmlUnavailable,
    RealNvml,
    SimulatedNvml,
    covered,
    open_backend,
    simulated_uuid,
    throttle_names,
)
from facefleet.cluster.reporter import NvmlReporter, gpu_uuid_for_pid, worker_gpu_uuid
from facefleet.errors import ClusterError

# --------------------------------------------------------------------------- simulated math


def test_covered_is_the_union_clipped_to_the_window():
    assert covered([], 0, 1) == 0
    assert covered([(0.0, 0.25), (0.5, 0.75)], 0, 1) == pytest.approx(0.5)
    assert covered([(0.0, 0.6), (0.4, 0.8)], 0, 1) == pytest.approx(0.8)  # overlap counted once
    assert covered([(-5.0, 0.5), (0.9, 7.0)], 0, 1) == pytest.approx(0.6)  # clipped at both ends
    assert covered([(0.2, 0.3), (0.0, 1.0)], 0, 1) == pytest.approx(1.0)


def test_simulated_utilization_is_the_busy_fraction_of_the_window():
    sim = SimulatedNvml(gpus=2, window_s=1.0)
    gpu0, gpu1 = (d.uuid for d in sim.devices())
    assert (gpu0, gpu1) == ("SIM-GPU-0000", "SIM-GPU-0001")
    sim.record_busy(gpu0, 10.0, 10.25)
    sim.record_busy(gpu0, 10.5, 10.75)
    a, b = sim.sample(now=11.0)
    assert a.gpu_uuid == gpu0 and a.backend == "simulated" and a.simulated and a.name == SIM_NAME
    assert a.utilization_gpu == 50.0
    assert a.utilization_memory == 20.0  # 0.4 x kernel time
    assert a.power_w == 70.0 + 0.5 * 630.0
    assert a.temperature_c == 50.0
    assert a.sm_clock_mhz == 1980.0
    assert a.memory_used == int(0.5 * 0.10 * SIM_MEMORY_TOTAL) and a.memory_total == SIM_MEMORY_TOTAL
    assert a.throttle_reasons == () and not a.throttled
    assert a.sm_activity is None  # GPM is not simulated
    # the idle GPU
    assert (b.utilization_gpu, b.power_w, b.sm_clock_mhz, b.throttle_reasons) == (0.0, 70.0, 345.0, ("idle",))
    # a later window no longer sees those intervals
    assert sim.sample(now=12.0)[0].utilization_gpu == 0.0


def test_simulated_per_process_utilization_and_memory():
    sim = SimulatedNvml(gpus=1, window_s=1.0)
    gpu = sim.devices()[0].uuid
    sim.record_busy(gpu, 10.0, 10.6, pid=101)
    sim.record_busy(gpu, 10.4, 10.8, pid=202)  # two workers share the GPU; union is 0.8 s
    s = sim.sample(now=11.0)[0]
    assert s.utilization_gpu == 80.0
    assert s.processes == {101: 60.0, 202: 40.0}
    assert s.process_memory == {101: SIM_CONTEXT_BYTES, 202: SIM_CONTEXT_BYTES}
    assert s.memory_used == 2 * SIM_CONTEXT_BYTES + int(0.8 * 0.10 * SIM_MEMORY_TOTAL)
    assert sim.uuid_of_pid(101) == gpu and sim.uuid_of_pid(999) is None


def test_simulated_open_interval_counts_until_closed():
    sim = SimulatedNvml(gpus=1, window_s=1.0)
    gpu = sim.devices()[0].uuid
    sim.record_busy(gpu, 10.5, None, pid=7)  # a stage call started, still running
    assert sim.sample(now=11.0)[0].utilization_gpu == 50.0
    sim.record_busy(gpu, 10.5, 10.7, pid=7)  # it ended
    assert sim.sample(now=11.0)[0].utilization_gpu == pytest.approx(20.0)
    assert sim.sample(now=12.0)[0].utilization_gpu == 0.0


def test_simulated_lag_samples_a_settled_window():
    sim = SimulatedNvml(gpus=1, window_s=1.0, lag_s=1.0)
    gpu = sim.devices()[0].uuid
    sim.record_busy(gpu, 10.0, 10.25)  # arrives late, after 11.0
    s = sim.sample(now=12.0)  # the window [10, 11], not [11, 12]
    assert (s[0].time, s[0].utilization_gpu) == (11.0, 25.0)


def test_simulated_busy_callable_fractions_and_intervals():
    feed = {1: 0.25, "SIM-GPU-0000": [(9.5, 10.0)]}
    sim = SimulatedNvml(gpus=2, window_s=1.0, busy=lambda: feed)
    a, b = sim.sample(now=10.0)
    assert (a.utilization_gpu, b.utilization_gpu) == (50.0, 25.0)


def test_simulated_clock_pruning_and_unknown_gpu():
    now = [100.0]
    sim = SimulatedNvml(gpus=1, window_s=0.5, clock=lambda: now[0], keep_s=10)
    gpu = sim.devices()[0].uuid
    sim.record_busy(gpu, 99.75, 100.0)
    assert sim.sample()[0].utilization_gpu == 50.0 and sim.sample()[0].time == 100.0
    now[0] = 200.0
    sim.sample()
    assert sim._closed[gpu] == []  # old intervals are dropped
    with pytest.raises(ValueError, match="not a simulated GPU"):
        sim.record_busy("GPU-real", 1, 2)


def test_simulated_uuids_are_deterministic_and_unique_per_node():
    assert simulated_uuid(0) == "SIM-GPU-0000"
    assert simulated_uuid(3, "node-a") == simulated_uuid(3, "node-a") != simulated_uuid(3, "node-b")
    assert simulated_uuid(3, "node-a").startswith("SIM-GPU-0003-")
    sim = SimulatedNvml(gpus=2, node="node-a")
    assert [d.uuid for d in sim.devices()] == [simulated_uuid(0, "node-a"), simulated_uuid(1, "node-a")]


def test_throttle_reason_bits_become_names():
    assert throttle_names(0) == ()
    assert throttle_names(0x001 | 0x004 | 0x040) == ("idle", "power_cap", "hw_thermal")
    assert throttle_names(0x008 | 0x020 | 0x080) == ("hw_slowdown", "thermal", "power_brake")


# --------------------------------------------------------------------------- reporter


def manual_reporter(gpus=1, interval=1.0, history_s=600.0, **kwargs) -> NvmlReporter:
    """A reporter whose sampling is driven by the test (no thread), on simulated GPUs."""
    sim = SimulatedNvml(gpus=gpus, window_s=interval, node="n1")
    return NvmlReporter(interval=interval, backend=sim, node="n1", history_s=history_s, start=False, **kwargs)


def test_ring_buffer_keeps_only_the_history():
    reporter = manual_reporter(gpus=2, interval=0.5, history_s=2.0)  # 4 ticks
    for t in range(10):
        reporter.sample_once(now=float(t))
    samples = reporter.samples()
    assert len(samples) == 4 * 2
    assert sorted({s.time for s in samples}) == [6.0, 7.0, 8.0, 9.0]
    assert [s.time for s in reporter.samples(since=7.0)] == [8.0, 8.0, 9.0, 9.0]
    assert {s.time for s in reporter.latest()} == {9.0}


def test_aggregates_over_a_window_are_labelled_simulated():
    reporter = manual_reporter(gpus=2, interval=1.0)
    gpu0, gpu1 = (d.uuid for d in reporter.backend.devices())
    # busy fraction per 1 s tick ending at t=1..4: 0, 0.5, 1.0, 0.5
    reporter.record_busy(gpu0, 1.5, 3.0, pid=11)
    reporter.record_busy(gpu0, 3.0, 3.5, pid=11)
    for t in (1.0, 2.0, 3.0, 4.0):
        reporter.sample_once(now=t)
    agg = reporter.aggregates(window_s=3.5, now=4.0)
    assert set(agg) == {gpu0, gpu1}  # keyed by UUID, idle GPUs too
    a = agg[gpu0]
    assert a["backend"] == "simulated" and a["samples"] == 4 and a["node"] == "n1"
    assert a["util_mean"] == pytest.approx(50.0) and a["util_max"] == 100.0
    assert a["power_mean"] == pytest.approx(70.0 + 0.5 * 630.0)
    assert a["temperature_max"] == 70.0
    assert a["memory_used_max"] == SIM_CONTEXT_BYTES + int(0.10 * SIM_MEMORY_TOTAL)
    assert a["memory_total"] == SIM_MEMORY_TOTAL
    assert a["processes"] == {11: pytest.approx(50.0)}
    assert a["throttled"] is False and a["throttle_reasons"] == ["idle"]  # idle is not throttling
    assert a["sm_activity_mean"] is None
    # a shorter window sees only the last two ticks
    assert reporter.aggregates(window_s=1.5, now=4.0)[gpu0]["util_mean"] == pytest.approx(75.0)
    b = agg[gpu1]
    assert (b["util_max"], b["backend"], b["samples"]) == (0.0, "simulated", 4)
    empty = reporter.aggregates(window_s=1.0, now=100.0)[gpu0]
    assert empty["samples"] == 0 and empty["util_mean"] is None and empty["backend"] == "simulated"


def test_reporter_overhead_is_under_one_percent_of_a_core_at_half_a_second():
    reporter = NvmlReporter(interval=0.5, backend="simulated", simulated_gpus=8)
    gpu = reporter.backend.devices()[0].uuid
    try:
        t0 = time.time()
        for i in range(30):  # a busy GPU: intervals to merge at every sample
            reporter.record_busy(gpu, t0 + i * 0.1, t0 + i * 0.1 + 0.05, pid=1)
        time.sleep(3.0)
        cost = reporter.overhead()
    finally:
        reporter.stop()
    assert cost["samples"] >= 6 and cost["errors"] == 0
    assert cost["wall_seconds"] >= 3.0
    assert cost["percent_of_one_core"] < 1.0, cost
    assert 0 < cost["cpu_seconds"] <= cost["process_cpu_seconds"] + 1e-3
    assert reporter.aggregates(window_s=5)[gpu]["util_max"] > 0


def test_broken_backend_does_not_stop_sampling():
    class Broken(SimulatedNvml):
        def sample(self, now=None):
            raise RuntimeError("driver went away")

    reporter = NvmlReporter(interval=1.0, backend=Broken(gpus=1), start=False)
    assert reporter.sample_once() == []
    assert reporter.overhead()["errors"] == 1 and "driver went away" in reporter.last_error()


def test_backend_choice_without_a_gpu():
    backend = open_backend("auto", simulated_gpus=3)  # no NVML library on this machine
    assert backend.backend == "simulated" and len(backend.devices()) == 3
    with pytest.raises(NvmlUnavailable, match="real GPU backend was asked for.*simulated"):
        open_backend("real")
    with pytest.raises(ClusterError, match="unknown GPU backend"):
        open_backend("cuda")
    assert open_backend("simulated", simulated_gpus=0).devices() == []


def test_invalid_interval_is_refused():
    with pytest.raises(ClusterError, match="sample-interval"):
        NvmlReporter(interval=0, backend="simulated", start=False)


# --------------------------------------------------------------------------- RealNvml, stand-in pynvml


class FakeNvml(SimpleNamespace):
    """The handful of pynvml functions RealNvml calls, for two known GPUs.

    GPU 0 (NVML index 0) is a Hopper-class GPU with GPM; GPU 1 answers NotSupported for
    encoder utilization and GPM, and NotFound for process utilization (no new samples).
    """

    NVML_SUCCESS = 0
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_SM_UTIL = 2

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_NotFound(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    def __init__(self, devices=2, init_fails=False):
        super().__init__()
        self.count = devices
        self.init_fails = init_fails
        self.calls: dict[str, int] = {}
        self.last_seen: list[int] = []
        self.gpm_pairs: list[tuple] = []
        self.freed = 0
        self.shutdown = 0

    def _called(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlInit(self):
        if self.init_fails:
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown += 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle):
        return ["GPU-aaaa-0000", b"GPU-bbbb-1111"][handle[1]]  # older pynvml returns bytes

    def nvmlDeviceGetName(self, handle):
        return ["NVIDIA H100 80GB HBM3", "NVIDIA A10"][handle[1]]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 * 2**30, used=(10 + handle[1]) * 2**30, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=[93, 5][handle[1]], memory=[41, 1][handle[1]])

    def nvmlDeviceGetPowerUsage(self, handle):
        return [612500, 60000][handle[1]]  # milliwatts

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return [71, 33][handle[1]]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock == self.NVML_CLOCK_SM
        return [1980, 210][handle[1]]

    def nvmlDeviceGetEncoderUtilization(self, handle):
        self._called(f"encoder{handle[1]}")
        if handle[1] == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return [0, 167000]

    def nvmlDeviceGetDecoderUtilization(self, handle):
        return [[12, 167000], [0, 167000]][handle[1]]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return [0x004 | 0x020, 0x001][handle[1]]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if handle[1] == 0:
            return [SimpleNamespace(pid=111, usedGpuMemory=2**30), SimpleNamespace(pid=222, usedGpuMemory=None)]
        return [SimpleNamespace(pid=333, usedGpuMemory=5 * 2**20)]

    def nvmlDeviceGetProcessUtilization(self, handle, last_seen):
        if handle[1] == 1:
            raise self.NVMLError_NotFound("Not Found")
        self.last_seen.append(last_seen)
        return [
            SimpleNamespace(pid=111, timeStamp=last_seen + 10, smUtil=60, memUtil=0, encUtil=0, decUtil=0),
            SimpleNamespace(pid=111, timeStamp=last_seen + 20, smUtil=80, memUtil=0, encUtil=0, decUtil=0),
        ]

    def nvmlGpmQueryDeviceSupport(self, handle):
        if handle[1] == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(version=1, isSupportedDevice=1)

    def nvmlGpmSampleAlloc(self):
        return SimpleNamespace(taken=0)

    def nvmlGpmSampleGet(self, handle, sample):
        sample.taken += 1
        return sample

    def nvmlGpmSampleFree(self, sample):
        self.freed += 1

    def c_nvmlGpmMetricsGet_t(self):
        metric = SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0)
        return SimpleNamespace(version=0, numMetrics=0, sample1=None, sample2=None, metrics=[metric])

    def nvmlGpmMetricsGet(self, request):
        assert request.version == 1 and request.numMetrics == 1
        assert request.metrics[0].metricId == self.NVML_GPM_METRIC_SM_UTIL
        assert request.sample1 is not request.sample2
        self.gpm_pairs.append((request.sample1, request.sample2))
        request.metrics[0].value = 37.5
        return request


@pytest.fixture
def fake_pynvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_real_backend_maps_nvml_readings(fake_pynvml):
    backend = open_backend("auto", node="n1")  # NVML "works": the real backend, not simulated
    assert isinstance(backend, RealNvml) and backend.backend == "real"
    assert [(d.uuid, d.index, d.name) for d in backend.devices()] == [
        ("GPU-aaaa-0000", 0, "NVIDIA H100 80GB HBM3"),
        ("GPU-bbbb-1111", 1, "NVIDIA A10"),
    ]
    a, b = backend.sample()
    assert a.gpu_uuid == "GPU-aaaa-0000" and a.backend == "real" and not a.simulated and a.node == "n1"
    assert (a.utilization_gpu, a.utilization_memory) == (93.0, 41.0)
    assert (a.memory_used, a.memory_total) == (10 * 2**30, 80 * 2**30)
    assert (a.power_w, a.temperature_c, a.sm_clock_mhz) == (612.5, 71.0, 1980.0)
    assert (a.encoder, a.decoder) == (0.0, 12.0)
    assert a.throttle_reasons == ("power_cap", "thermal") and a.throttled
    assert a.sm_activity == 37.5
    # per-process: the mean of NVML's samples; a process with a context and no sample is 0
    assert a.processes == {111: 70.0, 222: 0.0}
    assert a.process_memory == {111: 2**30}
    # GPU 1: encoder not supported -> None (not an exception), GPM unsupported -> None
    assert b.gpu_uuid == "GPU-bbbb-1111"
    assert b.encoder is None and b.sm_activity is None and b.decoder == 0.0
    assert b.throttle_reasons == ("idle",) and not b.throttled
    assert b.processes == {333: 0.0} and b.process_memory == {333: 5 * 2**20}
    assert backend.unsupported() == {"GPU-bbbb-1111": ["encoder", "gpm"]}


def test_real_backend_remembers_timestamps_and_unsupported_metrics(fake_pynvml):
    backend = RealNvml(process_interval_s=0)
    backend.sample()
    backend.sample()
    # process utilization asks only for samples newer than the newest seen
    assert fake_pynvml.last_seen == [0, 20]
    # a NotSupported metric is asked once, not at every sample
    assert fake_pynvml.calls == {"encoder0": 2, "encoder1": 1}
    # GPM compares consecutive samples: (initial, first), then (first, second)
    first, second = fake_pynvml.gpm_pairs
    assert first[1] is second[0]
    backend.close()
    backend.close()
    assert fake_pynvml.freed == 2 and fake_pynvml.shutdown == 1


def test_real_backend_reads_processes_at_their_own_interval(fake_pynvml):
    backend = RealNvml(process_interval_s=60)
    first, second = backend.sample(), backend.sample()
    assert first[0].processes == {111: 70.0, 222: 0.0}
    assert second[0].processes is None and second[0].process_memory is None  # not read: not "none"
    assert fake_pynvml.last_seen == [0]
    assert second[0].utilization_gpu == 93.0  # the other metrics are read every time


def test_real_backend_finds_the_gpu_of_a_pid(fake_pynvml):
    backend = RealNvml()
    assert backend.uuid_of_pid(222) == "GPU-aaaa-0000"
    assert backend.uuid_of_pid(333) == "GPU-bbbb-1111"
    assert backend.uuid_of_pid(999) is None
    assert gpu_uuid_for_pid(backend, 333) == "GPU-bbbb-1111"


def test_worker_gpu_uuid_with_nvml(fake_pynvml):
    assert worker_gpu_uuid(pid=111, environ={"CUDA_VISIBLE_DEVICES": "0"}) == ("GPU-aaaa-0000", "real")
    # NVML does not list the PID (own PID namespace): CUDA's order is not NVML's ...
    assert worker_gpu_uuid(pid=5, environ={"CUDA_VISIBLE_DEVICES": "1"}) == (None, "real")
    # ... unless CUDA was told to use PCI bus order, or the UUID is given
    env = {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert worker_gpu_uuid(pid=5, environ=env) == ("GPU-bbbb-1111", "real")
    assert worker_gpu_uuid(pid=5, environ={"CUDA_VISIBLE_DEVICES": "GPU-bbbb-1111"}) == ("GPU-bbbb-1111", "real")
    fake_pynvml.count = 1  # one GPU: it is that one
    assert worker_gpu_uuid(pid=5, environ={}) == ("GPU-aaaa-0000", "real")
    # ... but not for a CPU worker, from which Ray hides every GPU
    assert worker_gpu_uuid(pid=5, environ={"CUDA_VISIBLE_DEVICES": ""}) == (None, "real")


def test_worker_gpu_uuid_without_nvml():
    # no NVML here: the simulated GPU Ray assigned, on the reporter's node
    assert worker_gpu_uuid(node="n1", environ={"CUDA_VISIBLE_DEVICES": "1"}) == (simulated_uuid(1, "n1"), "simulated")
    assert worker_gpu_uuid(node="n1", environ={"CUDA_VISIBLE_DEVICES": ""}) == (None, "simulated")
    sim = SimulatedNvml(gpus=2, node="n1")
    sim.assign(42, sim.devices()[0].uuid)
    assert worker_gpu_uuid(pid=42, backend=sim, environ={}) == (sim.devices()[0].uuid, "simulated")


def test_backend_choice_with_a_stand_in_nvml():
    broken = FakeNvml(init_fails=True)
    assert open_backend("auto", nvml=broken, simulated_gpus=2).backend == "simulated"
    with pytest.raises(NvmlUnavailable, match="Library Not Found"):
        open_backend("real", nvml=broken)
    empty = FakeNvml(devices=0)
    assert open_backend("auto", nvml=empty).backend == "simulated" and empty.shutdown == 1
    with pytest.raises(NvmlUnavailable, match="sees no GPU"):
        open_backend("real", nvml=FakeNvml(devices=0))


def test_reporter_over_the_real_backend(fake_pynvml):
    reporter = NvmlReporter(interval=0.5, backend="real", node="n1", start=False)
    for _ in range(3):
        reporter.sample_once()
    agg = reporter.aggregates(window_s=60)
    assert set(agg) == {"GPU-aaaa-0000", "GPU-bbbb-1111"}
    a = agg["GPU-aaaa-0000"]
    assert a["backend"] == "real" and a["samples"] == 3 and a["name"] == "NVIDIA H100 80GB HBM3"
    assert (a["util_mean"], a["util_max"], a["power_mean"], a["temperature_max"]) == (93.0, 93.0, 612.5, 71.0)
    assert a["throttled"] is True and a["throttle_reasons"] == ["power_cap", "thermal"]
    assert a["sm_activity_mean"] == 37.5 and a["processes"] == {111: 70.0, 222: 0.0}
    assert agg["GPU-bbbb-1111"]["encoder_mean"] is None
    assert reporter.record_busy("GPU-aaaa-0000", 0, 1) is False  # real numbers are measured
    assert reporter.uuid_of_pid(333) == "GPU-bbbb-1111"
    assert reporter.info()["backend"] == "real" and reporter.info()["simulated"] is False
    reporter.stop()
    assert fake_pynvml.shutdown == 1


# --------------------------------------------------------------------------- on Ray


# num_cpus, num_gpus: test_chunk_attempts.py, test_cluster.py and test_monitor.py run on the same
# embedded Ray (conftest.py)
SHARED_RAY = (2, 2)


@pytest.fixture(scope="module")
def ray_cluster(shared_ray):
    return shared_ray(*SHARED_RAY)


def test_one_reporter_per_node_on_ray(ray_cluster):
    import ray

    from facefleet.cluster.reporter import start_reporters, stop_reporters

    reporters = start_reporters(interval=0.2, backend_kind="auto")
    try:
        node_id = ray.get_runtime_context().get_node_id()
        assert list(reporters) == [node_id]
        reporter = reporters[node_id]
        info = ray.get(reporter.info.remote())
        assert info["ray_node_id"] == node_id == info["node"]  # placed on its node
        assert info["backend"] == "simulated" and info["simulated"] is True
        assert len(info["devices"]) == 2  # the node's two fake GPUs
        assert ray.available_resources().get("CPU") == 2  # it takes no CPU or GPU slot
        assert ray.available_resources().get("GPU") == 2
        # a worker pinned to fake GPU 1 names the same UUID as the reporter
        uuid, kind = worker_gpu_uuid(node=node_id, environ={"CUDA_VISIBLE_DEVICES": "1"})
        assert kind == "simulated" and uuid == info["devices"][1]["uuid"]
        assert info["simulated_lag_s"] == 1.0  # simulated samples describe settled windows
        now = time.time()
        assert ray.get(reporter.record_busy.remote(uuid, now - 0.5, now + 30.0, 4242)) is True
        time.sleep(1.2)
        agg = ray.get(reporter.aggregates.remote(2.0))
        assert {a["backend"] for a in agg.values()} == {"simulated"}
        assert agg[uuid]["samples"] >= 5 and agg[uuid]["util_max"] == 100.0
        assert 0 < agg[uuid]["processes"][4242] <= 100.0
        other = info["devices"][0]["uuid"]
        assert agg[other]["util_max"] == 0.0
        samples = ray.get(reporter.samples.remote(now))
        assert samples and all(s.backend == "simulated" for s in samples)
        assert ray.get(reporter.uuid_of_pid.remote(4242)) == uuid
        assert ray.get(reporter.overhead.remote())["percent_of_one_core"] < 5
    finally:
        stop_reporters(reporters)


def test_forcing_the_real_backend_on_ray_without_a_gpu_fails_clearly(ray_cluster):
    from facefleet.cluster.reporter import start_reporters

    with pytest.raises(ClusterError, match="real GPU backend was asked for"):
        start_reporters(interval=0.5, backend_kind="real", timeout_s=30)
