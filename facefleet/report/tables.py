"""The data behind a job's report: GPU samples, chunks and a summary, as files.

Every job directory holds three files, written when the job ends:

- `gpu_samples.parquet`: one row per GPU per reporter sample (SAMPLE_COLUMNS);
- `chunks.parquet`: one row per finished chunk (CHUNK_COLUMNS);
- `summary.json`: totals, throughput, GPU-hours, per-GPU utilization and memory, cost.

The column lists below are the schema (name, Arrow type, unit, meaning), documented in
docs/reports.md; columns are only ever added, never renamed (SCHEMA_VERSION counts the
additions). `SampleLog` keeps every sample of the cluster in rolling Parquet files, since
the reporters remember only their last 10 minutes.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facefleet.cluster.chunk import SIMULATED_BATCH
from facefleet.cluster.nvml import GpuSample, LIMITING_REASONS
from facefleet.jobs.spec import ChunkResult, ChunkTask, WorkerInfo
from facefleet.media.files import atomic_output

SCHEMA_VERSION = 2  # 2: stage start/end columns in chunks.parquet
SAMPLES_FILE = "gpu_samples.parquet"
CHUNKS_FILE = "chunks.parquet"
SUMMARY_FILE = "summary.json"

IDLE_UTIL_PCT = 5.0  # a GPU below this utilization counts as idle
SAMPLE_PAD_S = 5.0  # samples kept before the job started and after it ended (plot context)

# (name, type, unit, meaning)
SAMPLE_COLUMNS: tuple[tuple[str, pa.DataType, str, str], ...] = (
    ("time", pa.float64(), "s (Unix time)", "when the reading was taken (simulated: end of the window it describes)"),
    ("node", pa.string(), "", "the node the GPU is on (the reporter's node: Ray node id)"),
    ("gpu_uuid", pa.string(), "", "GPU UUID from NVML (SIM-GPU-... for a simulated GPU)"),
    ("gpu_index", pa.int32(), "", "NVML index (PCI bus order, not CUDA's order)"),
    ("gpu_name", pa.string(), "", "device name"),
    ("utilization_gpu", pa.float64(), "%", "share of the last sample period in which a kernel ran"),
    ("utilization_memory", pa.float64(), "%", "share of the last sample period in which memory was read or written"),
    ("memory_used", pa.int64(), "bytes", "GPU memory in use"),
    ("memory_total", pa.int64(), "bytes", "GPU memory in all"),
    ("power_w", pa.float64(), "W", "board power draw"),
    ("temperature_c", pa.float64(), "°C", "GPU temperature"),
    ("sm_clock_mhz", pa.float64(), "MHz", "SM clock"),
    ("encoder_utilization", pa.float64(), "%", "NVENC utilization"),
    ("decoder_utilization", pa.float64(), "%", "NVDEC utilization"),
    ("sm_activity", pa.float64(), "%", "GPM SM activity (Hopper and later; else null)"),
    ("throttle_reasons", pa.string(), "", "active clock event reasons, comma-separated ('' none, null unknown)"),
    ("throttled", pa.bool_(), "", "a limiting reason (power cap, thermal, hardware slowdown, power brake) was active"),
    ("backend", pa.string(), "", "real (NVML) or simulated (derived from the workers' busy time)"),
)

# Stage seconds in a chunk row, by what runs them. The processing thread runs the model
# stages and the CPU post stages in turn; decoding and encoding run on their own threads,
# overlapping it. "waiting" is the processing thread's time in no stage (waiting for
# decoded frames or for the encoder), "return" the time from the worker's end to the
# controller having the result.
STAGE_COLUMNS = ("decode_s", "detect_s", "gpu_other_s", "cpu_post_s", "encode_s", "waiting_s", "return_s")
PROCESSING_COLUMNS = ("detect_s", "gpu_other_s", "cpu_post_s")  # the processing thread's stages
STAGE_GROUPS = ("decode", "detect", "gpu_other", "cpu_post", "encode")  # the stage columns' names, less _s

CHUNK_COLUMNS: tuple[tuple[str, pa.DataType, str, str], ...] = (
    ("job_id", pa.string(), "", "the job"),
    ("chunk", pa.int32(), "", "chunk index in the job"),
    ("start_frame", pa.int64(), "frames", "first frame of the chunk"),
    ("frames", pa.int64(), "frames", "frames the chunk produced"),
    ("faces", pa.int64(), "faces", "faces found on them"),
    ("worker_id", pa.int32(), "", "the worker that produced the result"),
    ("pid", pa.int64(), "", "the worker's process id (null: worker unknown)"),
    ("node", pa.string(), "", "the worker's host name"),
    ("node_id", pa.string(), "", "the worker's Ray node id (matches gpu_samples.node)"),
    ("gpu_uuid", pa.string(), "", "the worker's GPU (null: CPU worker or unknown)"),
    ("gpu_backend", pa.string(), "", "real or simulated"),
    ("providers", pa.string(), "", "stage=execution provider, comma-separated"),
    ("started", pa.float64(), "s (Unix time)", "the worker started the chunk"),
    ("finished", pa.float64(), "s (Unix time)", "the worker was done with it (started + total_s)"),
    ("ended", pa.float64(), "s (Unix time)", "the controller had the result"),
    ("total_s", pa.float64(), "s", "wall time on the worker"),
    ("decode_s", pa.float64(), "s", "decode thread busy decoding (overlaps the processing thread)"),
    ("detect_s", pa.float64(), "s", "face detector calls (a model: on the GPU when there is one)"),
    ("gpu_other_s", pa.float64(), "s", "other model stages: landmarks, embed, enhance"),
    ("cpu_post_s", pa.float64(), "s", "CPU stages in the processing thread: anonymize, debug, analyze, track"),
    ("encode_s", pa.float64(), "s", "encode thread busy encoding (overlaps the processing thread)"),
    ("waiting_s", pa.float64(), "s", "processing thread in no stage: waiting for decoded frames or the encoder"),
    ("return_s", pa.float64(), "s", "from the worker's end to the controller having the result"),
    ("stage_seconds", pa.map_(pa.string(), pa.float64()), "s", "every stage's seconds as the worker reported them"),
    ("batch_size", pa.int32(), "frames", "frames per model call (at the end of the chunk)"),
    ("oom_retries", pa.int32(), "", "times the chunk ran again with half the batch after running out of memory"),
    ("attempts", pa.int32(), "", "times the chunk was sent (1: first try)"),
    ("simulated", pa.bool_(), "", "a simulated chunk (it slept instead of working)"),
    # schema 2: when each stage worked on the chunk (stages overlap: see docs/reports.md)
    ("decode_start", pa.float64(), "s (Unix time)", "the decode thread started on the chunk (opening, seeking)"),
    ("decode_end", pa.float64(), "s (Unix time)", "the decode thread had decoded its last frame"),
    ("detect_start", pa.float64(), "s (Unix time)", "the first face detector call began"),
    ("detect_end", pa.float64(), "s (Unix time)", "the last face detector call ended"),
    ("gpu_other_start", pa.float64(), "s (Unix time)", "the first call of another model stage began (null: none)"),
    ("gpu_other_end", pa.float64(), "s (Unix time)", "the last call of another model stage ended (null: none)"),
    ("cpu_post_start", pa.float64(), "s (Unix time)", "the first call of a CPU post stage began (null: none)"),
    ("cpu_post_end", pa.float64(), "s (Unix time)", "the last call of a CPU post stage ended (null: none)"),
    ("encode_start", pa.float64(), "s (Unix time)", "the encode thread began writing the first frame (null: no video written)"),
    ("encode_end", pa.float64(), "s (Unix time)", "the encode thread had closed the segment (null: no video written)"),
    ("stage_started", pa.map_(pa.string(), pa.float64()), "s (Unix time)", "every stage's first time on the chunk"),
    ("stage_ended", pa.map_(pa.string(), pa.float64()), "s (Unix time)", "every stage's last time on the chunk"),
)


def _schema(columns: Iterable[tuple[str, pa.DataType, str, str]]) -> pa.Schema:
    return pa.schema([(name, kind) for name, kind, _, _ in columns], metadata={"facefleet_schema": str(SCHEMA_VERSION)})


SAMPLES_SCHEMA = _schema(SAMPLE_COLUMNS)
CHUNKS_SCHEMA = _schema(CHUNK_COLUMNS)


# --------------------------------------------------------------------------- rows


def stage_group(stage: str, model_stages: Iterable[str] = ()) -> str:
    """The chunk column a worker's stage is counted in: decode, detect and encode by name,
    other stages that run a model (those with a session) in gpu_other, the rest in
    cpu_post."""
    if stage in ("decode", "detect", "encode"):
        return f"{stage}_s"
    return "gpu_other_s" if stage in model_stages else "cpu_post_s"


def chunk_row(
    task: ChunkTask, result: ChunkResult, worker: WorkerInfo | None, attempts: int, ended: float
) -> dict[str, Any]:
    """One row of chunks.parquet for a chunk whose result the controller had at `ended`
    (time.time()), after `attempts` sends, from `worker` (None: unknown)."""
    seconds = dict(result.seconds)
    total = float(seconds.pop("total", 0.0))
    groups = dict.fromkeys(STAGE_COLUMNS, 0.0)
    for stage, value in seconds.items():
        groups[stage_group(stage, result.providers)] += float(value)
    groups["waiting_s"] = max(0.0, total - sum(groups[c] for c in PROCESSING_COLUMNS))
    finished = result.started + total
    groups["return_s"] = max(0.0, ended - finished)
    simulated = task.kind == "simulated"
    batch = int(dict(task.simulate_params).get("batch", SIMULATED_BATCH)) if simulated else result.batch_size
    spans: dict[str, Any] = {f"{g}_{edge}": None for g in STAGE_GROUPS for edge in ("start", "end")}
    for stage, (first, last) in result.stage_times.items():
        group = stage_group(stage, result.providers)[: -len("_s")]
        start, end = spans[f"{group}_start"], spans[f"{group}_end"]
        spans[f"{group}_start"] = float(first) if start is None else min(start, float(first))
        spans[f"{group}_end"] = float(last) if end is None else max(end, float(last))
    return {
        "job_id": task.job_id,
        "chunk": task.index,
        "start_frame": task.start,
        "frames": result.frames,
        "faces": result.faces,
        "worker_id": result.worker_id,
        "pid": worker.pid if worker else None,
        "node": worker.node if worker else None,
        "node_id": worker.node_id if worker else None,
        "gpu_uuid": worker.gpu_uuid if worker else None,
        "gpu_backend": worker.gpu_backend if worker else None,
        "providers": ",".join(f"{k}={v}" for k, v in sorted(result.providers.items())),
        "started": result.started,
        "finished": finished,
        "ended": ended,
        "total_s": total,
        **groups,
        "stage_seconds": {k: float(v) for k, v in sorted(seconds.items())},
        "batch_size": batch,
        "oom_retries": result.oom_retries,
        "attempts": attempts,
        "simulated": simulated,
        **spans,
        "stage_started": {k: float(v[0]) for k, v in sorted(result.stage_times.items())},
        "stage_ended": {k: float(v[1]) for k, v in sorted(result.stage_times.items())},
    }


def sample_rows(samples: Iterable[GpuSample]) -> list[dict[str, Any]]:
    """Rows of gpu_samples.parquet (per-process numbers are left out)."""
    rows = []
    for s in samples:
        reasons = s.throttle_reasons
        rows.append(
            {
                "time": s.time,
                "node": s.node,
                "gpu_uuid": s.gpu_uuid,
                "gpu_index": s.gpu_index,
                "gpu_name": s.name,
                "utilization_gpu": s.utilization_gpu,
                "utilization_memory": s.utilization_memory,
                "memory_used": s.memory_used,
                "memory_total": s.memory_total,
                "power_w": s.power_w,
                "temperature_c": s.temperature_c,
                "sm_clock_mhz": s.sm_clock_mhz,
                "encoder_utilization": s.encoder,
                "decoder_utilization": s.decoder,
                "sm_activity": s.sm_activity,
                "throttle_reasons": ",".join(reasons) if reasons is not None else None,
                "throttled": bool(reasons and LIMITING_REASONS.intersection(reasons)),
                "backend": s.backend,
            }
        )
    return rows


Samples = Sequence[GpuSample] | Sequence[dict] | pa.Table


def samples_table(samples: Samples) -> pa.Table:
    """GpuSamples, sample rows, or a table (SampleLog.read) as a gpu_samples table."""
    if isinstance(samples, pa.Table):
        return samples.select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA)
    samples = list(samples)
    rows = sample_rows(samples) if samples and isinstance(samples[0], GpuSample) else samples
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def chunks_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(sorted(rows, key=lambda r: (r["job_id"], r["chunk"])), schema=CHUNKS_SCHEMA)


# --------------------------------------------------------------------------- summary


def job_window(job: dict, chunks: pa.Table, samples: pa.Table) -> tuple[float, float]:
    """(start, end) of a job in Unix time: its recorded start and finish, else its chunks'
    first start and last result, else its samples' span."""
    start, end = job.get("started"), job.get("finished")
    if start is None and chunks.num_rows:
        start = min(chunks.column("started").to_pylist())
    if end is None and chunks.num_rows:
        end = max(chunks.column("ended").to_pylist())
    times = samples.column("time").to_numpy() if samples.num_rows else np.array([0.0])
    start = float(times.min() if start is None else start)
    end = float(times.max() if end is None else end)
    return start, max(start, end)


def sample_weights(times: np.ndarray) -> np.ndarray:
    """Seconds each sample of one GPU stands for (times sorted): the gap to the next one,
    at most twice the typical gap (a longer gap is time nobody watched); the last sample
    gets the typical gap."""
    if len(times) < 2:
        return np.ones(len(times))
    gaps = np.diff(times)
    typical = float(np.median(gaps)) or 1.0
    return np.append(np.minimum(gaps, 2 * typical), typical)


@dataclass(frozen=True)
class GpuSeries:
    """One GPU's samples as arrays, oldest first, and the seconds each one stands for."""

    uuid: str
    node: str
    name: str
    index: int
    backend: str
    time: np.ndarray
    weight: np.ndarray
    util: np.ndarray  # NaN where unknown
    memory_used: np.ndarray  # NaN where unknown
    memory_total: float | None
    power: np.ndarray
    temperature: np.ndarray
    sm_clock: np.ndarray
    throttled: np.ndarray  # bool
    reasons: tuple[str, ...]  # limiting reasons seen


def _floats(table: pa.Table, column: str) -> np.ndarray:
    """A column as float64, NaN where null."""
    return pc.fill_null(table.column(column).cast(pa.float64()), math.nan).to_numpy()


def gpu_series(samples: pa.Table, start: float | None = None, end: float | None = None) -> list[GpuSeries]:
    """Per GPU (ordered by node, index), the samples from `start` to `end`."""
    out = []
    for uuid in pc.unique(samples.column("gpu_uuid")).to_pylist():
        if uuid is None:
            continue
        rows = samples.filter(pc.equal(samples.column("gpu_uuid"), uuid)).sort_by("time")
        t = rows.column("time").to_numpy()
        keep = np.ones(len(t), bool)
        if start is not None:
            keep &= t >= start
        if end is not None:
            keep &= t <= end
        weights = sample_weights(t)[keep]
        rows = rows.filter(pa.array(keep))
        if rows.num_rows == 0:
            continue
        first = rows.slice(0, 1).to_pylist()[0]
        reasons = {r for text in pc.unique(rows.column("throttle_reasons")).to_pylist() if text for r in text.split(",")}
        totals = _floats(rows, "memory_total")
        out.append(
            GpuSeries(
                uuid=uuid,
                node=first["node"] or "",
                name=first["gpu_name"] or "",
                index=first["gpu_index"] if first["gpu_index"] is not None else -1,
                backend=first["backend"] or "",
                time=rows.column("time").to_numpy(),
                weight=weights,
                util=_floats(rows, "utilization_gpu"),
                memory_used=_floats(rows, "memory_used"),
                memory_total=_max(totals) or None,
                power=_floats(rows, "power_w"),
                temperature=_floats(rows, "temperature_c"),
                sm_clock=_floats(rows, "sm_clock_mhz"),
                throttled=pc.fill_null(rows.column("throttled"), False).to_numpy(zero_copy_only=False),
                reasons=tuple(sorted(LIMITING_REASONS.intersection(reasons))),
            )
        )
    return sorted(out, key=lambda g: (g.node, g.index, g.uuid))


def _mean(values: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    ok = ~np.isnan(values)
    if not ok.any():
        return None
    w = np.ones(len(values)) if weights is None else weights
    total = float(w[ok].sum())
    return float((values[ok] * w[ok]).sum() / total) if total > 0 else float(values[ok].mean())


def _max(values: np.ndarray) -> float | None:
    ok = values[~np.isnan(values)]
    return float(ok.max()) if len(ok) else None


def gpu_stats(g: GpuSeries) -> dict[str, Any]:
    """Utilization (time-weighted mean, p95), busy and idle seconds, memory, power,
    temperature and throttling of one GPU's samples."""
    util_known = ~np.isnan(g.util)
    busy = float((g.util[util_known] / 100.0 * g.weight[util_known]).sum())
    idle = float(g.weight[util_known & (np.nan_to_num(g.util, nan=100.0) < IDLE_UTIL_PCT)].sum())
    peak = _max(g.memory_used)
    busy_samples = util_known & (np.nan_to_num(g.util) >= IDLE_UTIL_PCT)
    return {
        "gpu_uuid": g.uuid,
        "gpu_name": g.name,
        "gpu_index": g.index,
        "node": g.node,
        "backend": g.backend,
        "samples": int(len(g.time)),
        "observed_s": float(g.weight.sum()),
        "utilization_mean": _mean(g.util, g.weight),
        "utilization_p95": float(np.percentile(g.util[util_known], 95)) if util_known.any() else None,
        "busy_s": busy,
        "idle_s": idle,
        "memory_peak": int(peak) if peak is not None else None,
        "memory_total": int(g.memory_total) if g.memory_total else None,
        "memory_peak_fraction": peak / g.memory_total if peak is not None and g.memory_total else None,
        "power_mean_w": _mean(g.power, g.weight),
        "temperature_max_c": _max(g.temperature),
        "sm_clock_mean_mhz": _mean(g.sm_clock[busy_samples]) if busy_samples.any() else None,
        # share of the busy samples (utilization >= IDLE_UTIL_PCT) with a limiting reason
        "throttled_fraction": float(g.throttled[busy_samples].mean()) if busy_samples.any() else 0.0,
        "throttle_reasons": list(g.reasons),
    }


def summarize(
    job: dict, chunks: pa.Table, samples: pa.Table, price_per_gpu_hour: float | None = None
) -> dict[str, Any]:
    """summary.json of a job from its chunks and GPU samples (see docs/reports.md)."""
    start, end = job_window(job, chunks, samples)
    wall = end - start
    rows = chunks.to_pylist()
    gpus = [gpu_stats(g) for g in gpu_series(samples, start, end)]
    per_gpu_chunks: dict[str, list[dict]] = {}
    for r in rows:
        per_gpu_chunks.setdefault(r["gpu_uuid"] or "", []).append(r)
    for g in gpus:
        mine = per_gpu_chunks.get(g["gpu_uuid"], [])
        g["chunks"], g["frames"] = len(mine), sum(r["frames"] for r in mine)
    uuids = {g["gpu_uuid"] for g in gpus} | {r["gpu_uuid"] for r in rows if r["gpu_uuid"]}
    frames = sum(r["frames"] for r in rows)
    utils = [g["utilization_mean"] for g in gpus if g["utilization_mean"] is not None]
    peaks = [g for g in gpus if g["memory_peak"] is not None]
    peak = max(peaks, key=lambda g: g["memory_peak_fraction"] or 0.0) if peaks else None
    gpu_hours = len(uuids) * wall / 3600
    backends = {g["backend"] for g in gpus} | {r["gpu_backend"] for r in rows if r["gpu_backend"]}
    backends |= {"simulated" for r in rows if r["simulated"]}
    stages = {c: float(sum(r[c] for r in rows)) for c in STAGE_COLUMNS}
    return {
        "schema_version": SCHEMA_VERSION,
        "job": job,
        "window": {"start": start, "end": end, "seconds": wall},
        "backend": "mixed" if len(backends) > 1 else (backends.pop() if backends else "none"),
        "totals": {
            "chunks": len(rows),
            "frames": frames,
            "faces": sum(r["faces"] for r in rows),
            "attempts": sum(r["attempts"] for r in rows),
            "retried_chunks": sum(1 for r in rows if r["attempts"] > 1),
            "oom_retries": sum(r["oom_retries"] for r in rows),
            "wall_s": wall,
            "fps": frames / wall if wall > 0 else 0.0,
            "workers": len({r["worker_id"] for r in rows}),
            "gpus": len(uuids),
            "gpu_hours": gpu_hours,
            "busy_gpu_hours": sum(g["busy_s"] for g in gpus) / 3600,
            "idle_gpu_seconds": sum(g["idle_s"] for g in gpus),
            "utilization_mean": sum(utils) / len(utils) if utils else None,
            "utilization_p95": max((g["utilization_p95"] for g in gpus if g["utilization_p95"] is not None), default=None),
            "memory_peak": peak["memory_peak"] if peak else None,
            "memory_peak_fraction": peak["memory_peak_fraction"] if peak else None,
            "memory_peak_gpu": peak["gpu_uuid"] if peak else None,
            "price_per_gpu_hour": price_per_gpu_hour,
            "cost": gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None,
        },
        "stages_s": stages,
        "stages_ms_per_frame": {c: 1000 * v / frames if frames else None for c, v in stages.items()},
        "gpus": gpus,
        "workers": worker_stats(rows),
        # workers taken out of rotation while the job ran (worker, node, gpu_uuid, reason, time)
        "workers_out_of_rotation": list(job.get("workers_out_of_rotation") or []),
    }


def worker_stats(rows: list[dict]) -> list[dict[str, Any]]:
    """Per worker: its node and GPU, chunks, frames, seconds on chunks, and the median
    frames per second of its chunks (chunks run concurrently count each at their own pace)."""
    out = []
    for worker in sorted({r["worker_id"] for r in rows}):
        mine = [r for r in rows if r["worker_id"] == worker]
        rates = [r["frames"] / r["total_s"] for r in mine if r["total_s"] > 0]
        out.append(
            {
                "worker_id": worker,
                "node": mine[0]["node"],
                "node_id": mine[0]["node_id"],
                "gpu_uuid": mine[0]["gpu_uuid"],
                "chunks": len(mine),
                "frames": sum(r["frames"] for r in mine),
                "seconds": sum(r["total_s"] for r in mine),
                "chunk_fps": float(np.median(rates)) if rates else None,
            }
        )
    return out


# --------------------------------------------------------------------------- files


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def write_job_data(
    job_dir: Path,
    job: dict,
    chunk_rows: Sequence[dict],
    samples: Samples,
    price_per_gpu_hour: float | None = None,
) -> dict[str, Any]:
    """Write gpu_samples.parquet, chunks.parquet and summary.json into `job_dir` and return
    the summary. Each file appears whole (temporary name, then rename); summary.json comes
    last, so a directory with it holds all three. `samples`: GpuSamples, sample rows or a
    SampleLog table; those outside the job's time (more than SAMPLE_PAD_S away) are left out.
    """
    job_dir = Path(job_dir)
    chunks = chunks_table(chunk_rows)
    table = samples_table(samples).sort_by([("time", "ascending"), ("gpu_uuid", "ascending")])
    start, end = job_window(job, chunks, table)
    times = table.column("time").to_numpy()
    table = table.filter(pa.array((times >= start - SAMPLE_PAD_S) & (times <= end + SAMPLE_PAD_S)))
    summary = summarize(job, chunks, table, price_per_gpu_hour)
    _write_parquet(table, job_dir / SAMPLES_FILE)
    _write_parquet(chunks, job_dir / CHUNKS_FILE)
    with atomic_output(job_dir / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(_plain(summary), indent=1, sort_keys=True))
    return summary


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class JobData:
    job_dir: Path
    summary: dict[str, Any]
    chunks: pa.Table
    samples: pa.Table

    @property
    def job(self) -> dict[str, Any]:
        return self.summary.get("job", {})


def read_job_data(job_dir: Path) -> JobData:
    """The three files of a job directory (FileNotFoundError when summary.json is absent)."""
    job_dir = Path(job_dir)
    summary = json.loads((job_dir / SUMMARY_FILE).read_text())
    chunks = _read_table(job_dir / CHUNKS_FILE, CHUNKS_SCHEMA)
    samples = _read_table(job_dir / SAMPLES_FILE, SAMPLES_SCHEMA)
    return JobData(job_dir, summary, chunks, samples)


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """A file of `schema`, with columns of a later schema left out and missing ones null."""
    if not path.exists():
        return schema.empty_table()
    table = pq.read_table(path)
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def job_dirs(state_dir: Path) -> list[Path]:
    """The job directories under state_dir/jobs/ that hold a summary."""
    root = Path(state_dir) / "jobs"
    return sorted(p for p in root.glob("*") if (p / SUMMARY_FILE).is_file()) if root.is_dir() else []


# --------------------------------------------------------------------------- sample log


class SampleLog:
    """Every GPU sample of the cluster, in rolling Parquet files under STATE_DIR/samples/.

    `append` (the controller, every few seconds, with the samples it pulled from the
    reporters) writes one small part file; once `max_parts` parts exist they are merged
    into hourly files (hour-YYYYMMDDHH.parquet, UTC). Hours older than `keep_s`, and the
    oldest hours beyond `max_bytes` in all, are deleted. Every file appears whole (written
    under a temporary name, then renamed); `read` drops duplicates (a sample sent twice,
    or read from a part and its hour during a merge). One writer at a time; readers
    anywhere.
    """

    PART = re.compile(r"^part-(\d+)-(\d+)-(\d+)\.parquet$")
    HOUR = re.compile(r"^hour-(\d{10})\.parquet$")

    def __init__(
        self,
        state_dir: Path,
        max_parts: int = 64,
        keep_s: float = 30 * 86400.0,
        max_bytes: int = 1 << 30,
    ):
        self.dir = Path(state_dir) / "samples"
        self.max_parts = max_parts
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self._newest: dict[str, float] = {}  # GPU uuid -> newest sample time appended
        self._seq = 0

    def _files(self, pattern: re.Pattern) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if pattern.match(p.name))

    def append(self, samples: Samples) -> int:
        """Store the samples newer than those this log was given before, per GPU (a
        reporter pulled with an overlapping `since` sends some twice); returns how many
        were stored."""
        table = samples_table(samples)
        if table.num_rows == 0:
            return 0
        rows = [r for r in table.to_pylist() if r["time"] > self._newest.get(r["gpu_uuid"], -math.inf)]
        if not rows:
            return 0
        for r in rows:
            self._newest[r["gpu_uuid"]] = max(r["time"], self._newest.get(r["gpu_uuid"], -math.inf))
        self._seq += 1
        first = min(r["time"] for r in rows)
        _write_parquet(
            pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA),
            self.dir / f"part-{int(first * 1000):015d}-{os.getpid()}-{self._seq:06d}.parquet",
        )
        if len(self._files(self.PART)) >= self.max_parts:
            self.compact()
        return len(rows)

    def compact(self, now: float | None = None) -> None:
        """Merge the part files into their hourly files, then apply the retention limits."""
        parts = self._files(self.PART)
        if parts:
            table = pa.concat_tables([_read_table(p, SAMPLES_SCHEMA) for p in parts])
            hours = np.array([_hour(t) for t in table.column("time").to_pylist()])
            for hour in sorted(set(hours)):
                path = self.dir / f"hour-{hour}.parquet"
                add = table.filter(pa.array(hours == hour))
                old = [_read_table(path, SAMPLES_SCHEMA)] if path.exists() else []
                _write_parquet(_dedupe(pa.concat_tables(old + [add])), path)
            for p in parts:
                p.unlink(missing_ok=True)
        self._retain(time.time() if now is None else now)

    def _retain(self, now: float) -> None:
        hours = self._files(self.HOUR)
        oldest_kept = _hour(now - self.keep_s)
        for p in hours:
            if self.HOUR.match(p.name).group(1) < oldest_kept:
                p.unlink(missing_ok=True)
        hours = self._files(self.HOUR)
        sizes = [p.stat().st_size for p in hours]
        while hours[:-1] and sum(sizes) > self.max_bytes:  # the newest hour always stays
            hours.pop(0).unlink(missing_ok=True)
            sizes.pop(0)

    def read(self, since: float | None = None, until: float | None = None, _retries: int = 3) -> pa.Table:
        """The samples with since <= time <= until (Unix time; None: no bound), oldest first."""
        lo, hi = (_hour(since) if since is not None else ""), (_hour(until) if until is not None else "9" * 10)
        paths = [p for p in self._files(self.HOUR) if lo <= self.HOUR.match(p.name).group(1) <= hi]
        paths += [p for p in self._files(self.PART) if until is None or int(self.PART.match(p.name).group(1)) / 1000 <= until]
        tables = []
        for p in paths:
            try:
                tables.append(_read_table(p, SAMPLES_SCHEMA))
            except FileNotFoundError:  # merged away meanwhile: its rows are in an hour file now
                if _retries:
                    return self.read(since, until, _retries - 1)
        table = pa.concat_tables(tables) if tables else SAMPLES_SCHEMA.empty_table()
        t = table.column("time").to_numpy()
        keep = np.ones(len(t), bool)
        if since is not None:
            keep &= t >= since
        if until is not None:
            keep &= t <= until
        return _dedupe(table.filter(pa.array(keep)))


def _hour(t: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(t))


def _dedupe(table: pa.Table) -> pa.Table:
    """Sorted by time, one row per (GPU, time)."""
    table = table.sort_by([("time", "ascending"), ("gpu_uuid", "ascending")])
    if table.num_rows < 2:
        return table
    t = table.column("time").to_numpy()
    u = pc.fill_null(pc.dictionary_encode(table.column("gpu_uuid")).combine_chunks().indices, -1).to_numpy()
    order = np.lexsort((t, u))
    same = np.zeros(len(t), bool)
    same[order[1:]] = (t[order[1:]] == t[order[:-1]]) & (u[order[1:]] == u[order[:-1]])
    return table.filter(pa.array(~same))
