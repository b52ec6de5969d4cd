"""Each diagnosis, produced for real: simulated jobs on an embedded Ray cluster whose
stage costs (CPU decode and encode, GPU time, per-call overhead, CPU post, batch size),
worker speeds and simulated GPUs (memory in use, throttling) are set so that one
bottleneck shows; the tables are built from what the run produced, as the controller
builds them, and the report must name that bottleneck. Plus the simulated costs
themselves (no Ray) and rules Ray cannot stage here (a straggling node)."""

from __future__ import annotations

import time

import pytest

from facefleet.cluster.chunk import run_chunk
from facefleet.cluster.nvml import GIB, SIM_THROTTLED_MHZ, SimulatedNvml
from facefleet.cluster.pool import PoolPlan, WorkerPool
from facefleet.cluster.reporter import DEFAULT_SIMULATED_LAG_S, REPORTER_PREFIX, NvmlReporter
from facefleet.cluster.runtime import ray_session
from facefleet.jobs.runner import plan_jobs, run_planned, simulated_uri
from facefleet.jobs.spec import ChunkTask, JobSpec
from facefleet.media.encode import EncodeSettings
from facefleet.pipeline.spec import PipelineSpec
from facefleet.report.diagnose import KINDS, diagnose
from facefleet.report.tables import chunk_row, read_job_data, write_job_data

from test_report_tables import synthetic_job

INTERVAL = 0.2  # reporter sample interval in these tests


# --------------------------------------------------------------------------- no Ray


class Processor:  # what run_chunk needs of a processor for a simulated chunk
    batch_size = 1
    providers = {"detect": "CPUExecutionProvider"}
    checks: dict = {}


def sim_task(frames=40, ms=2.0, **params):
    return ChunkTask("j", 0, "simulated", "simulated://", "", PipelineSpec(), EncodeSettings(), frames=frames,
                     simulate_ms=ms, simulate_params=tuple(sorted(params.items())))


def test_simulated_chunk_costs_overlap_like_a_real_chunk():
    busy = []
    result = run_chunk(sim_task(40, 2.0, decode_ms=6.0, encode_ms=1.0, post_ms=1.0, batch=10), Processor(),
                       busy=lambda a, b: busy.append(b - a))
    s = result.seconds
    assert s["decode"] == pytest.approx(0.24) and s["encode"] == pytest.approx(0.04)
    assert s["detect"] == pytest.approx(0.08) and s["anonymize"] == pytest.approx(0.04)
    assert len(busy) == 4 and sum(busy) == pytest.approx(0.08, abs=0.02)  # only the GPU part is busy
    assert 0.24 <= s["total"] < 0.32  # the decode thread sets the pace: 40 x 6 ms


def test_simulated_call_overhead_is_not_gpu_busy_and_slowdown_stretches_everything():
    busy = []
    result = run_chunk(sim_task(20, 1.0, overhead_ms=4.0, batch=1), Processor(), slowdown=2.0,
                       busy=lambda a, b: busy.append(b - a))
    assert len(busy) == 20 and sum(busy) == pytest.approx(0.04, abs=0.02)
    assert result.seconds["detect"] == pytest.approx(20 * (4 + 1) * 2 / 1000)
    assert result.seconds["total"] >= 0.2


def test_simulated_gpu_memory_and_throttling_options():
    sim = SimulatedNvml(gpus=2, window_s=1.0, memory_base={1: 70 * GIB}, throttle={0: "thermal"})
    sim.record_busy(sim.devices()[0].uuid, 0.0, 1.0)
    sim.record_busy(sim.devices()[1].uuid, 0.0, 1.0)
    hot, full = sim.sample(1.0)
    assert hot.throttle_reasons == ("thermal",) and hot.throttled and hot.sm_clock_mhz == SIM_THROTTLED_MHZ
    assert hot.temperature_c >= 85 and not full.throttled and full.memory_used > 70 * GIB
    idle, _ = sim.sample(5.0)
    assert idle.throttle_reasons == ("idle",) and not idle.throttled
    with pytest.raises(ValueError, match="not a limiting"):
        SimulatedNvml(throttle={0: "idle"})


def test_a_slow_node_is_named_instead_of_its_workers(tmp_path):
    synthetic_job(tmp_path, gpus=4, chunks=24, nodes=("node-a", "node-b"), slow_worker=1)
    kinds = {f.kind for f in diagnose(read_job_data(tmp_path))}
    assert "straggler_worker" in kinds and "straggler_node" not in kinds  # one of node-b's two workers
    # both workers of node-b slow: the node is the straggler
    job = tmp_path / "b"
    synthetic_job(job, gpus=2, chunks=12, nodes=("node-a", "node-b"), slow_worker=1)
    findings = diagnose(read_job_data(job))
    assert [f.kind for f in findings if f.kind.startswith("straggler")] == ["straggler_node"]
    assert "host-node-b" in findings[0].headline or any("host-node-b" in f.headline for f in findings)


def test_a_gpu_without_chunks_means_too_few_chunks(tmp_path):
    synthetic_job(tmp_path, gpus=4, chunks=2, chunk_s=3.0, util=95)
    findings = {f.kind: f for f in diagnose(read_job_data(tmp_path))}
    assert "few_chunks_in_flight" in findings, findings
    assert "GPU(s) got none" in findings["few_chunks_in_flight"].headline


# --------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def cluster():
    with ray_session(num_cpus=4, num_gpus=4) as info:
        yield info


def use_reporter(**sim_options):
    """(Re)start this node's reporter with a simulated backend built with `sim_options`
    (memory_base, throttle by GPU index); workers find it by name."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    name = f"{REPORTER_PREFIX}-{node}"
    try:
        old = ray.get_actor(name)
        ray.get(old.stop.remote())
        ray.kill(old, no_restart=True)
        while True:
            try:
                ray.get_actor(name)
                time.sleep(0.05)
            except ValueError:
                break
    except ValueError:
        pass
    backend = SimulatedNvml(gpus=4, node=node, window_s=INTERVAL, lag_s=DEFAULT_SIMULATED_LAG_S, **sim_options)
    actor = ray.remote(num_gpus=0, num_cpus=0)(NvmlReporter).options(name=name).remote(INTERVAL, backend, node=node)
    ray.get(actor.info.remote())
    return actor


def start_pool(slowdowns=()):
    plan = PoolPlan(2, gpus_per_worker=1, cpus_per_worker=1, chunks_per_worker=1, slowdowns=tuple(slowdowns))
    return WorkerPool(plan, PipelineSpec())


@pytest.fixture(scope="module")
def pool(cluster):
    p = start_pool()
    yield p
    p.shutdown()


def gpu_index(pool, uuid):
    return next(int(i.cuda_visible_devices) for i in pool.infos.values() if i.gpu_uuid == uuid)


def run_job(pool, job_dir, reporter, job_id, frames, ms, chunk, **params):
    """Run one simulated job and write its tables as the controller does; return its findings."""
    import ray

    spec = JobSpec(job_id, simulated_uri(frames, ms, **params), f"/tmp/{job_id}", chunk_frames=chunk)
    planned = plan_jobs([spec])
    started = time.time()
    outcome = run_planned(planned, pool, duplicate_tail=False)[0]
    finished = time.time()
    assert outcome.ok, outcome.error
    results = run_planned.last_results
    flush_busy(pool)
    time.sleep(DEFAULT_SIMULATED_LAG_S + 2 * INTERVAL)  # simulated samples describe the window a second ago
    tasks = {t.index: t for t in planned[0].tasks}
    rows = [
        chunk_row(tasks[r.index], r, pool.infos[r.worker_id], 1, r.started + r.seconds["total"])
        for r in results
    ]
    gpus = {i.gpu_uuid for i in pool.infos.values()}
    samples = [s for s in ray.get(reporter.samples.remote(started - 1)) if s.gpu_uuid in gpus]
    job = {"job_id": job_id, "name": job_id, "state": "done", "created": started, "started": started,
           "finished": finished, "inputs": [spec.input_uri]}
    write_job_data(job_dir, job, rows, samples, 2.0)
    return {f.kind: f for f in diagnose(read_job_data(job_dir))}


def flush_busy(pool):
    """Workers send their GPU busy time to the reporter when a new stage call comes 0.4 s
    after the last send, so a job's last 0.4 s stay with them: one tiny chunk per worker
    sends it while its window is still to be sampled."""
    time.sleep(0.45)
    spec = JobSpec("flush", simulated_uri(2, 0.01), "/tmp/flush", chunk_frames=1)
    run_planned(plan_jobs([spec]), pool, duplicate_tail=False)


def test_gpu_bound_job_says_add_gpus(pool, tmp_path):
    reporter = use_reporter()
    findings = run_job(pool, tmp_path, reporter, "gpubound", 480, 8.0, 40)
    f = findings["gpu_bound"]
    assert "GPU-bound" in f.headline and "more GPUs" in f.headline
    assert f.values["utilization_pct"] >= 85 and f.values["speedup"] == pytest.approx(2.0)
    assert not {"cpu_decode_bound", "small_batches", "memory_near_limit", "throttling"} & set(findings)


def test_cpu_decoding_as_the_limit(pool, tmp_path):
    reporter = use_reporter()
    findings = run_job(pool, tmp_path, reporter, "decode", 240, 2.0, 40, decode_ms=8.0)
    f = findings["cpu_decode_bound"]
    assert "decoding on the CPU is the limit" in f.headline
    assert f.values["utilization_pct"] < 40
    assert f.values["decode_ms_per_frame"] == pytest.approx(8.0, rel=0.05)
    assert f.values["processing_ms_per_frame"] == pytest.approx(2.0, rel=0.05)


def test_cpu_encoding_as_the_limit(pool, tmp_path):
    reporter = use_reporter()
    findings = run_job(pool, tmp_path, reporter, "encode", 240, 2.0, 40, encode_ms=8.0)
    assert "encoding on the CPU is the limit" in findings["cpu_encode_bound"].headline
    assert "cpu_decode_bound" not in findings


def test_small_batches(pool, tmp_path):
    reporter = use_reporter()
    findings = run_job(pool, tmp_path, reporter, "batches", 240, 1.0, 40, batch=1, overhead_ms=4.0)
    f = findings["small_batches"]
    assert "batches are too small" in f.headline and "--batch-size" in f.suggestion
    assert f.values["batch"] == 1 and f.values["call_efficiency"] < 0.4


def test_few_chunks_in_flight(pool, tmp_path):
    reporter = use_reporter()
    findings = run_job(pool, tmp_path, reporter, "inflight", 320, 4.0, 40, post_ms=4.0, batch=16)
    f = findings["few_chunks_in_flight"]
    assert "too few chunks are in flight" in f.headline and "--chunks-per-worker" in f.suggestion
    assert f.values["in_flight_per_gpu"] <= 1.0 and f.values["utilization_pct"] < 60


def test_memory_near_the_limit(pool, tmp_path):
    full = pool.infos[0].gpu_uuid
    reporter = use_reporter(memory_base={gpu_index(pool, full): 65 * GIB})
    findings = run_job(pool, tmp_path, reporter, "memory", 240, 5.0, 40, batch=16)
    f = findings["memory_near_limit"]
    assert f.subject == full and "near the limit" in f.headline and "OOM" in f.headline
    assert "--batch-size 8" in f.suggestion and "fp16" in f.suggestion
    assert 0.90 <= f.values["memory_peak_fraction"] < 0.97


def test_thermal_throttling(pool, tmp_path):
    hot = pool.infos[1].gpu_uuid
    reporter = use_reporter(throttle={gpu_index(pool, hot): "thermal"})
    findings = run_job(pool, tmp_path, reporter, "thermal", 240, 5.0, 40)
    f = findings["throttling"]
    assert f.subject == hot and "throttled (thermal)" in f.headline and "cooling" in f.suggestion
    assert f.values["throttled_fraction"] > 0.8 and f.values["sm_clock_mean_mhz"] == SIM_THROTTLED_MHZ


def test_a_straggling_worker(cluster, tmp_path):
    slow_pool = start_pool(slowdowns=(1.0, 3.0))
    try:
        reporter = use_reporter()
        findings = run_job(slow_pool, tmp_path, reporter, "straggler", 360, 5.0, 30)
    finally:
        slow_pool.shutdown()
    f = findings["straggler_worker"]
    assert f.subject == "1" and "Worker 1 straggles" in f.headline
    assert f.values["slowdown"] == pytest.approx(3.0, rel=0.2)


def test_every_kind_has_a_test():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    assert all(f'"{kind}"' in source for kind in KINDS if kind != "gpu_underused")
