"""The report's files: chunk and sample rows, the three job files and their schemas, the
summary's figures, and the cluster's rolling sample log. No Ray: rows are built from the
same dataclasses workers and reporters produce. `synthetic_job` is shared with the
diagnosis and HTML tests."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facefleet.cluster.nvml import GpuSample, simulated_uuid
from facefleet.jobs.spec import ChunkResult, ChunkTask, WorkerInfo
from facefleet.pipeline.spec import PipelineSpec
from facefleet.media.encode import EncodeSettings
from facefleet.report.tables import (
    CHUNK_COLUMNS,
    CHUNKS_SCHEMA,
    SAMPLE_COLUMNS,
    SAMPLES_SCHEMA,
    SampleLog,
    chunk_row,
    read_job_data,
    sample_rows,
    write_job_data,
)

GiB = 2**30
T0 = 1_750_000_000.0
DOCS = Path(__file__).parent.parent / "docs" / "reports.md"


def task(index=0, frames=50, kind="video", params=(), job_id="job"):
    return ChunkTask(job_id, index, kind, "in.mp4", "", PipelineSpec(), EncodeSettings(), start=index * frames,
                     frames=frames, simulate_params=params)


def worker(worker_id=0, gpu=0, node="node-a"):
    return WorkerInfo(worker_id, 1000 + worker_id, f"host-{node}", node, str(gpu), {"detect": "CUDAExecutionProvider"},
                      simulated_uuid(gpu, node), "simulated")


def sample(t, gpu=0, node="node-a", util=50.0, memory=10 * GiB, reasons=(), clock=1980.0):
    return GpuSample(t, node, simulated_uuid(gpu, node), gpu, "simulated GPU", util, util * 0.4, memory, 80 * GiB,
                     100 + 6 * util, 30 + 0.4 * util, clock, 0.0, 0.0, tuple(reasons), None, backend="simulated")


def synthetic_job(
    job_dir: Path,
    *,
    gpus: int = 2,
    chunks: int = 12,
    frames: int = 50,
    chunk_s: float = 1.0,
    stage_ms: dict | None = None,
    util: float = 90.0,
    memory_frac: float = 0.3,
    throttle_gpu: int | None = None,
    slow_worker: int | None = None,
    nodes: tuple[str, ...] = ("node-a",),
    batch: int = 16,
    interval: float = 0.5,
    t0: float = T0,
    price: float | None = 2.5,
    job_id: str = "job",
) -> dict:
    """A finished job written with write_job_data: one worker per GPU (GPUs spread over
    `nodes`), chunks back to back, GPUs at `util` % while a chunk runs and idle between;
    `slow_worker` takes three times as long per chunk, `throttle_gpu` throttles for heat
    while busy. Returns the summary."""
    stage_ms = stage_ms or {"decode": 2.0, "detect": 16.0, "encode": 2.0}
    gpu_node = [(g, nodes[g % len(nodes)]) for g in range(gpus)]
    free = [t0 + 0.5] * gpus
    rows, spans = [], []
    for i in range(chunks):
        w = min(range(gpus), key=lambda k: free[k])
        took = chunk_s * (3 if w == slow_worker else 1)
        start = free[w]
        seconds = {k: v * frames / 1000 * took / chunk_s for k, v in stage_ms.items()} | {"total": took}
        result = ChunkResult("job", i, "", frames, 2 * frames, seconds, w, {"detect": "CUDAExecutionProvider"},
                             started=start, batch_size=batch)
        rows.append(chunk_row(task(i, frames, job_id=job_id), result, worker(w, *gpu_node[w]), 1, start + took + 0.02))
        spans.append((w, start, start + took))
        free[w] = start + took + 0.05
    end = max(free) + 0.5
    samples = []
    t = t0
    while t <= end:
        for g, node in gpu_node:
            busy = any(w == g and a <= t <= b for w, a, b in spans)
            hot = busy and g == throttle_gpu
            samples.append(sample(t, g, node, util if busy else 0.0, int((memory_frac if busy else 0.02) * 80 * GiB),
                                  ("thermal",) if hot else (() if busy else ("idle",)), 1200.0 if hot else 1980.0))
        t += interval
    job = {"job_id": job_id, "name": "synthetic", "state": "done", "created": t0, "started": t0, "finished": end,
           "inputs": ["in.mp4"]}
    return write_job_data(job_dir, job, rows, samples, price)


# --------------------------------------------------------------------------- rows


def test_chunk_row_groups_stages_and_derives_waiting_and_return():
    seconds = {"decode": 1.0, "detect": 2.0, "landmarks": 0.5, "anonymize": 0.7, "encode": 1.5, "total": 4.0}
    result = ChunkResult("job", 3, "", 50, 7, seconds, 1, {"detect": "CUDA", "landmarks": "CUDA"}, started=T0,
                         batch_size=16, oom_retries=1)
    row = chunk_row(task(3), result, worker(1), attempts=2, ended=T0 + 4.25)
    assert row["decode_s"] == 1.0 and row["detect_s"] == 2.0 and row["gpu_other_s"] == 0.5
    assert row["cpu_post_s"] == 0.7 and row["encode_s"] == 1.5
    assert row["waiting_s"] == pytest.approx(4.0 - 2.0 - 0.5 - 0.7)
    assert row["finished"] == T0 + 4.0 and row["return_s"] == pytest.approx(0.25)
    assert row["stage_seconds"]["landmarks"] == 0.5 and "total" not in row["stage_seconds"]
    assert (row["gpu_uuid"], row["node_id"], row["pid"], row["attempts"], row["oom_retries"]) == (
        simulated_uuid(0, "node-a"), "node-a", 1001, 2, 1)
    assert row["batch_size"] == 16 and not row["simulated"]
    unknown = chunk_row(task(0), result, None, 1, T0 + 5)
    assert unknown["gpu_uuid"] is None and unknown["node"] is None


def test_simulated_chunk_rows_carry_the_simulated_batch():
    result = ChunkResult("job", 0, "", 50, 0, {"total": 1.0}, 0, {}, started=T0, batch_size=1)
    assert chunk_row(task(kind="simulated", params=(("batch", 4.0),)), result, worker(), 1, T0 + 1)["batch_size"] == 4
    assert chunk_row(task(kind="simulated"), result, worker(), 1, T0 + 1)["simulated"]


def test_sample_rows_keep_the_readings_and_flag_limiting_reasons():
    rows = sample_rows([sample(T0, util=80, reasons=("thermal",)), sample(T0, gpu=1, reasons=("idle",))])
    assert rows[0]["utilization_gpu"] == 80 and rows[0]["memory_total"] == 80 * GiB
    assert rows[0]["throttle_reasons"] == "thermal" and rows[0]["throttled"]
    assert rows[1]["throttle_reasons"] == "idle" and not rows[1]["throttled"]
    assert rows[0]["backend"] == "simulated" and rows[0]["gpu_name"] == "simulated GPU"
    assert set(rows[0]) == set(SAMPLES_SCHEMA.names)


# --------------------------------------------------------------------------- job files


def test_job_files_have_the_documented_schemas(tmp_path):
    synthetic_job(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.parquet", "gpu_samples.parquet", "summary.json"]
    assert pq.read_schema(tmp_path / "gpu_samples.parquet").remove_metadata().equals(SAMPLES_SCHEMA.remove_metadata())
    assert pq.read_schema(tmp_path / "chunks.parquet").remove_metadata().equals(CHUNKS_SCHEMA.remove_metadata())
    docs = DOCS.read_text()
    for name, *_ in SAMPLE_COLUMNS + CHUNK_COLUMNS:
        assert re.search(rf"^\| `{name}` \|", docs, re.M), f"column {name} is not documented"
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in summary["totals"]:
        assert f"`{key}`" in docs, f"summary total {key} is not documented"


def test_summary_figures(tmp_path):
    summary = synthetic_job(tmp_path, gpus=2, chunks=8, chunk_s=1.0, frames=50, util=80.0, price=3.0)
    totals = summary["totals"]
    wall = summary["window"]["seconds"]
    assert totals["chunks"] == 8 and totals["frames"] == 400 and totals["faces"] == 800
    assert totals["fps"] == pytest.approx(400 / wall)
    assert totals["gpus"] == 2 and totals["gpu_hours"] == pytest.approx(2 * wall / 3600)
    assert totals["cost"] == pytest.approx(3.0 * totals["gpu_hours"])
    assert summary["backend"] == "simulated"
    for gpu in summary["gpus"]:
        assert gpu["chunks"] == 4 and gpu["frames"] == 200
        # busy 4 x 1 s at 80 % of about 5.2 s: the mean, the p95 and the idle time follow
        assert 45 < gpu["utilization_mean"] < 75, gpu
        assert gpu["utilization_p95"] == 80.0
        assert gpu["idle_s"] == pytest.approx(wall - gpu["busy_s"] / 0.8, abs=1.1)
        assert gpu["memory_peak"] == int(0.3 * 80 * GiB) and gpu["memory_peak_fraction"] == pytest.approx(0.3)
    assert totals["idle_gpu_seconds"] == pytest.approx(sum(g["idle_s"] for g in summary["gpus"]))
    assert summary["stages_ms_per_frame"]["detect_s"] == pytest.approx(16.0)
    assert summary["workers"][0]["chunk_fps"] == pytest.approx(50.0)


def test_no_price_no_cost_and_samples_outside_the_job_are_left_out(tmp_path):
    chunk = chunk_row(task(), ChunkResult("job", 0, "", 10, 0, {"total": 1.0}, 0, {}, started=T0 + 1), worker(), 1,
                      T0 + 2)
    samples = [sample(T0 + t) for t in (-60, -4, 0, 1, 2, 3, 60)]
    job = {"job_id": "job", "started": T0, "finished": T0 + 3}
    summary = write_job_data(tmp_path, job, [chunk], samples, None)
    assert summary["totals"]["cost"] is None
    data = read_job_data(tmp_path)
    assert sorted(data.samples.column("time").to_pylist()) == [T0 + t for t in (-4, 0, 1, 2, 3)]
    assert data.chunks.num_rows == 1 and data.job["finished"] == T0 + 3
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_an_older_file_with_fewer_columns_reads_with_nulls(tmp_path):
    synthetic_job(tmp_path, chunks=2)
    table = pq.read_table(tmp_path / "chunks.parquet").drop_columns(["oom_retries", "stage_seconds"])
    pq.write_table(table, tmp_path / "chunks.parquet")
    chunks = read_job_data(tmp_path).chunks
    assert chunks.schema.equals(CHUNKS_SCHEMA) and chunks.column("oom_retries").null_count == 2


# --------------------------------------------------------------------------- sample log


def test_sample_log_appends_reads_a_window_and_drops_resent_samples(tmp_path):
    log = SampleLog(tmp_path)
    assert log.append([sample(T0 + t, g) for t in range(10) for g in (0, 1)]) == 20
    assert log.append([sample(T0 + t, g) for t in range(5, 15) for g in (0, 1)]) == 10  # 5..9 again: not stored
    table = log.read(T0 + 3, T0 + 12)
    assert table.schema.equals(SAMPLES_SCHEMA) and table.num_rows == 20
    assert table.column("time").to_pylist() == sorted(table.column("time").to_pylist())
    # a second log (a restarted controller) resends: reading still gives each sample once
    SampleLog(tmp_path).append([sample(T0 + 14, 0)])
    assert SampleLog(tmp_path).read().num_rows == 30


def test_sample_log_merges_parts_into_hours_and_keeps_its_bounds(tmp_path):
    log = SampleLog(tmp_path, max_parts=4, keep_s=3 * 3600)
    now = time.time() // 3600 * 3600  # retention counts from the present
    first = now - 10 * 3600
    for hour in range(10):  # ten hours, a part every 20 minutes
        for minute in (0, 20, 40):
            log.append([sample(first + hour * 3600 + minute * 60 + s, 0) for s in range(0, 60, 2)])
    log.compact(now=now)
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert all(n.startswith("hour-") for n in names) and 3 <= len(names) <= 4, names
    assert log.read(now - 3 * 3600, now).num_rows == 3 * 3 * 30
    # the size bound drops the oldest hours, never the newest
    small = SampleLog(tmp_path, max_parts=1, keep_s=1e9, max_bytes=1)
    small.append([sample(now + 1, 1)])
    assert [p.name for p in (tmp_path / "samples").iterdir()] == [f"hour-{_hour(now + 1)}.parquet"]


def _hour(t):
    return time.strftime("%Y%m%d%H", time.gmtime(t))


def test_sample_log_accepts_tables_and_empty_input(tmp_path):
    log = SampleLog(tmp_path)
    assert log.append([]) == 0 and log.read().num_rows == 0
    table = pa.Table.from_pylist(sample_rows([sample(T0, 0)]), schema=SAMPLES_SCHEMA)
    assert log.append(table) == 1 and log.read(T0, T0).num_rows == 1


def test_stage_start_and_end_columns_group_the_workers_stages(tmp_path):
    times = {"decode": (T0 + 0.0, T0 + 0.8), "detect": (T0 + 0.1, T0 + 0.9), "landmarks": (T0 + 0.15, T0 + 0.92),
             "anonymize": (T0 + 0.2, T0 + 0.95), "track": (T0 + 0.12, T0 + 0.97), "encode": (T0 + 0.3, T0 + 1.0)}
    seconds = {"decode": 0.5, "detect": 0.4, "landmarks": 0.1, "anonymize": 0.1, "track": 0.01, "encode": 0.3, "total": 1.0}
    providers = {"detect": "CPUExecutionProvider", "landmarks": "CPUExecutionProvider"}
    result = ChunkResult("job", 0, "", 50, 3, seconds, 0, providers, started=T0, stage_times=times)
    row = chunk_row(task(), result, worker(), 2, T0 + 1.1)
    assert (row["decode_start"], row["decode_end"]) == (T0, T0 + 0.8)
    assert (row["gpu_other_start"], row["gpu_other_end"]) == (T0 + 0.15, T0 + 0.92)
    assert (row["cpu_post_start"], row["cpu_post_end"]) == (T0 + 0.12, T0 + 0.97)  # anonymize and track
    assert (row["encode_start"], row["encode_end"]) == (T0 + 0.3, T0 + 1.0)
    assert row["stage_started"]["track"] == T0 + 0.12 and row["stage_ended"]["encode"] == T0 + 1.0
    bare = chunk_row(task(), ChunkResult("job", 1, "", 50, 0, {"total": 1.0}, 0, {}, started=T0), worker(), 1, T0 + 1)
    assert bare["encode_start"] is None and bare["stage_started"] == {}
    job = {"job_id": "job", "started": T0, "finished": T0 + 2}
    write_job_data(tmp_path, job, [row, bare], [sample(T0)], None)
    chunks = read_job_data(tmp_path).chunks.to_pylist()
    assert chunks[0]["detect_start"] == T0 + 0.1 and dict(chunks[0]["stage_ended"])["decode"] == T0 + 0.8
    # a file written before these columns existed reads them as nulls
    table = pq.read_table(tmp_path / "chunks.parquet")
    pq.write_table(table.drop_columns([c for c in table.column_names if c.endswith(("_start", "_end")) or c.startswith("stage_")
                                       and c != "stage_seconds"]), tmp_path / "chunks.parquet")
    old = read_job_data(tmp_path).chunks
    assert old.schema.equals(CHUNKS_SCHEMA) and old.column("decode_start").null_count == 2
