"""What held a job back, in plain words, from its chunks and GPU samples.

Pure functions: `diagnose(data)` takes a job's tables (tables.JobData) and returns
findings, each with a kind, a headline, the numbers behind it and a suggestion. The
thresholds are the constants below (documented in docs/reports.md).

How a finding is reached, over the time the job's chunks ran:
- mean GPU utilization at or above GPU_BOUND_PCT: the job is GPU-bound;
- below UNDERUSED_PCT: the first cause that fits, in this order: decoding or encoding on
  the CPU takes CPU_LIMIT_RATIO times the processing thread's time per frame (that thread
  cannot outrun its decoder or encoder); batches smaller than SMALL_BATCH frames with the
  GPU computing less than CALL_EFFICIENCY of the time spent in model calls; fewer than
  FEW_IN_FLIGHT chunks in flight per GPU; else under-used for an unclear reason;
- independently: memory peaking at MEMORY_NEAR of a GPU's total, a limiting throttle
  reason in THROTTLE_SHARE of a GPU's busy samples, and a worker or node whose chunks ran
  below STRAGGLER_RATIO of the others' pace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facefleet.report.tables import JobData, gpu_series, gpu_stats

GPU_BOUND_PCT = 85.0  # mean utilization at or above this: GPU-bound
UNDERUSED_PCT = 60.0  # mean utilization below this: under-used
CPU_LIMIT_RATIO = 1.2  # decode (or encode) per frame vs the processing thread's, to call it the limit
SMALL_BATCH = 8  # frames per model call below which a batch counts as small
CALL_EFFICIENCY = 0.5  # GPU busy time / time in model calls below which calls are mostly overhead
FEW_IN_FLIGHT = 1.5  # mean chunks in flight per GPU below which the GPU is left waiting
MEMORY_NEAR = 0.90  # peak memory / total at or above this: near the limit
MEMORY_CRITICAL = 0.97
MEMORY_TARGET = 0.75  # where a suggested batch size should bring the peak
THROTTLE_SHARE = 0.10  # share of a GPU's busy samples with a limiting reason
STRAGGLER_RATIO = 0.67  # a worker's (node's) chunk pace below this share of the others'
SPEEDUP_GPUS = 2.0  # the GPU-bound estimate is for this many times the GPUs

KINDS = (
    "gpu_bound",
    "cpu_decode_bound",
    "cpu_encode_bound",
    "small_batches",
    "few_chunks_in_flight",
    "gpu_underused",
    "memory_near_limit",
    "throttling",
    "straggler_worker",
    "straggler_node",
)


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    headline: str  # the diagnosis in plain words
    numbers: dict[str, str]  # label -> value with its unit: what the headline rests on
    suggestion: str
    severity: str = "warning"  # "info" | "warning" | "critical"
    subject: str = ""  # the GPU, worker or node it is about ("" for the job)
    values: dict[str, float] = field(default_factory=dict)  # the raw numbers, for programs

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "headline": self.headline,
            "numbers": dict(self.numbers),
            "suggestion": self.suggestion,
            "severity": self.severity,
            "subject": self.subject,
            "values": dict(self.values),
        }


@dataclass(frozen=True)
class JobFacts:
    """What the rules read: per-frame stage costs and GPU figures over the chunks' span."""

    frames: int
    chunks: int
    gpus: list[dict[str, Any]]  # tables.gpu_stats over the active span, plus "chunks"
    span_s: float  # first chunk start to last chunk end
    ms_per_frame: dict[str, float]  # decode, detect, gpu_other, cpu_post, encode, waiting, processing, model
    util_pct: float | None  # mean over the GPUs
    gpu_busy_ms_per_frame: float | None
    in_flight_per_gpu: float | None
    batch: int | None  # median frames per model call
    rows: list[dict[str, Any]]


def job_facts(data: JobData) -> JobFacts:
    rows = data.chunks.to_pylist()
    frames = sum(r["frames"] for r in rows)
    start = min((r["started"] for r in rows), default=None)
    end = max((r["finished"] for r in rows), default=None)
    span = (end - start) if rows else 0.0
    gpus = [gpu_stats(g) for g in gpu_series(data.samples, start, end)] if rows else []
    for g in gpus:
        g["chunks"] = sum(1 for r in rows if r["gpu_uuid"] == g["gpu_uuid"])
    per_frame = {
        name: 1000 * sum(r[f"{name}_s"] for r in rows) / frames if frames else 0.0
        for name in ("decode", "detect", "gpu_other", "cpu_post", "encode", "waiting")
    }
    per_frame["model"] = per_frame["detect"] + per_frame["gpu_other"]
    per_frame["processing"] = per_frame["model"] + per_frame["cpu_post"]
    utils = [g["utilization_mean"] for g in gpus if g["utilization_mean"] is not None]
    busy = sum(g["busy_s"] for g in gpus)
    on_gpus = {r["gpu_uuid"] for r in rows if r["gpu_uuid"]} | {g["gpu_uuid"] for g in gpus}
    in_flight = sum(r["total_s"] for r in rows if r["gpu_uuid"]) / span / len(on_gpus) if span > 0 and on_gpus else None
    batches = [r["batch_size"] for r in rows if r["batch_size"]]
    return JobFacts(
        frames=frames,
        chunks=len(rows),
        gpus=gpus,
        span_s=span,
        ms_per_frame=per_frame,
        util_pct=sum(utils) / len(utils) if utils else None,
        gpu_busy_ms_per_frame=1000 * busy / frames if frames and gpus else None,
        in_flight_per_gpu=in_flight,
        batch=int(np.median(batches)) if batches else None,
        rows=rows,
    )


def diagnose(data: JobData) -> list[Finding]:
    """Every finding about one job, most important first."""
    facts = job_facts(data)
    findings = utilization_findings(facts)
    findings += memory_findings(facts)
    findings += throttling_findings(facts)
    findings += straggler_findings(facts)
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order.get(f.severity, 3))


# --------------------------------------------------------------------------- utilization


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


def _ms(value: float) -> str:
    return f"{value:.1f} ms/frame"


def utilization_findings(facts: JobFacts) -> list[Finding]:
    util = facts.util_pct
    if util is None or not facts.frames:
        return []
    ms = facts.ms_per_frame
    gpus = len(facts.gpus)
    base = {"mean GPU utilization": _pct(util), "GPUs": str(gpus)}
    values = {"utilization_pct": util, "gpus": float(gpus)} | {f"{k}_ms_per_frame": v for k, v in ms.items()}
    if util >= GPU_BOUND_PCT:
        speedup = min(SPEEDUP_GPUS * gpus, facts.chunks) / gpus if gpus else 1.0
        more = round(SPEEDUP_GPUS * gpus)
        return [
            Finding(
                "gpu_bound",
                f"GPU-bound: the GPUs were busy {util:.0f} % of the time, so more GPUs would make the job faster "
                f"(about {speedup:.1f}x with {more} GPUs instead of {gpus}).",
                base | {"GPU work": _ms(ms["model"]), "chunks": str(facts.chunks),
                        f"expected speed-up with {more} GPUs": f"{speedup:.1f}x"},
                f"Run on {more} GPUs (workers follow the GPUs the cluster has), or lighten the model stages "
                "(smaller --detect-size). The estimate assumes the work per GPU stays the same; "
                f"a job of {facts.chunks} chunks cannot use more than {facts.chunks} GPUs at once.",
                severity="info",
                values=values | {"speedup": speedup, "gpus_suggested": float(more)},
            )
        ]
    if util >= UNDERUSED_PCT:
        return []
    for stage, word in (("decode", "decoding"), ("encode", "encoding")):
        other = ms["encode" if stage == "decode" else "decode"]
        if ms[stage] >= CPU_LIMIT_RATIO * ms["processing"] and ms[stage] >= other:
            return [
                Finding(
                    f"cpu_{stage}_bound",
                    f"GPU under-used because {word} on the CPU is the limit: {word} takes "
                    f"{ms[stage]:.1f} ms a frame against {ms['processing']:.1f} ms for the processing stages, "
                    f"so the GPUs were busy only {util:.0f} % of the time while chunks ran.",
                    base | {f"{stage} (CPU)": _ms(ms[stage]), "processing (GPU stages + CPU post)": _ms(ms["processing"]),
                            "waiting for frames or the encoder": _ms(ms["waiting"])},
                    f"Give the GPUs more CPU for {word}: more chunks in flight per worker (--chunks-per-worker 3) "
                    f"so several {'decoders' if stage == 'decode' else 'encoders'} run at once, nodes with more "
                    f"cores per GPU, or a share of a GPU per worker (--gpu-share 0.5)"
                    + (", or a faster preset (--output-video-preset)" if stage == "encode" else "")
                    + ".",
                    values=values,
                )
            ]
    efficiency = facts.gpu_busy_ms_per_frame / ms["model"] if facts.gpu_busy_ms_per_frame is not None and ms["model"] else None
    if facts.batch is not None and facts.batch < SMALL_BATCH and efficiency is not None and efficiency < CALL_EFFICIENCY:
        return [
            Finding(
                "small_batches",
                f"GPU under-used because batches are too small: {facts.batch} frame(s) per model call, and the GPU "
                f"computed during only {100 * efficiency:.0f} % of the time spent in model calls (the rest is "
                f"per-call overhead), so the GPUs were busy {util:.0f} % of the time.",
                base | {"frames per model call": str(facts.batch), "time in model calls": _ms(ms["model"]),
                        "GPU busy": _ms(facts.gpu_busy_ms_per_frame)},
                f"Use larger batches (--batch-size {max(16, 4 * facts.batch)}); with the GPU memory to spare, "
                "batches of 16 to 32 frames keep the per-call overhead small.",
                values=values | {"batch": float(facts.batch), "call_efficiency": efficiency},
            )
        ]
    in_flight = facts.in_flight_per_gpu
    if in_flight is not None and in_flight < FEW_IN_FLIGHT:
        idle = [g for g in facts.gpus if not g["chunks"]]
        why = (
            f"the job had {facts.chunks} chunk(s) for {len(facts.gpus)} GPUs and {len(idle)} GPU(s) got none"
            if idle
            else f"{in_flight:.1f} chunk(s) were in flight per GPU, and each chunk leaves its GPU idle while it does "
            f"its CPU work ({ms['cpu_post']:.1f} ms a frame of CPU post against {ms['model']:.1f} ms on the GPU)"
        )
        return [
            Finding(
                "few_chunks_in_flight",
                f"GPU under-used because too few chunks are in flight: {why}; the GPUs were busy {util:.0f} % of the time.",
                base | {"chunks in flight per GPU": f"{in_flight:.2f}", "chunks": str(facts.chunks),
                        "CPU post": _ms(ms["cpu_post"]), "GPU stages": _ms(ms["model"])},
                "Keep more chunks in flight per GPU (--chunks-per-worker 3, or --gpu-share 0.5 for two workers "
                "per GPU) so one chunk's GPU calls fill another's CPU gaps"
                + (", and cut the job into more chunks (smaller --chunk-frames)" if idle else "")
                + ".",
                values=values | {"in_flight_per_gpu": in_flight, "idle_gpus": float(len(idle))},
            )
        ]
    return [
        Finding(
            "gpu_underused",
            f"GPUs under-used ({util:.0f} % busy) with no clear cause in the stage times: "
            "the time may go to scheduling gaps between chunks or to work outside the chunks.",
            base | {"chunks in flight per GPU": f"{in_flight:.2f}" if in_flight is not None else "n/a",
                    "processing": _ms(ms["processing"]), "decode": _ms(ms["decode"]), "encode": _ms(ms["encode"])},
            "Look at the chunk timeline for gaps between chunks; larger chunks (--chunk-frames) make the gaps rarer.",
            values=values,
        )
    ]


# --------------------------------------------------------------------------- memory, heat


def _gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def _short(uuid: str) -> str:
    return uuid if len(uuid) <= 20 else uuid[:20] + "…"


def memory_findings(facts: JobFacts) -> list[Finding]:
    """One finding for the GPUs whose memory peaked at MEMORY_NEAR of their total or more."""
    near = [g for g in facts.gpus if (g["memory_peak_fraction"] or 0.0) >= MEMORY_NEAR]
    if not near:
        return []
    worst = max(near, key=lambda g: g["memory_peak_fraction"])
    fraction = worst["memory_peak_fraction"]
    batch = facts.batch or 1
    # a power of two that scales the batch down to MEMORY_TARGET, were memory all batch
    target = max(1, 2 ** int(math.floor(math.log2(max(1.0, batch * MEMORY_TARGET / fraction)))))
    advice = (
        f"use --batch-size {target} (the batch is {batch} frames now)" if target < batch else
        "the batch is already small: the models themselves fill the memory"
    )
    where = _short(worst["gpu_uuid"]) if len(near) == 1 else f"{len(near)} of {len(facts.gpus)} GPUs"
    return [
        Finding(
            "memory_near_limit",
            f"GPU memory near the limit on {where}: peak {_gib(worst['memory_peak'])} of "
            f"{_gib(worst['memory_total'])} ({100 * fraction:.0f} %); a larger batch or another tenant would run out "
            "of memory (OOM).",
            {"peak memory": _gib(worst["memory_peak"]), "total memory": _gib(worst["memory_total"]),
             "peak share": _pct(100 * fraction), "GPUs near the limit": ", ".join(_short(g["gpu_uuid"]) for g in near),
             "frames per model call": str(batch)},
            f"Leave headroom: {advice}, or use fp16 models (about half the memory of fp32 weights and "
            "activations); check for other processes on the GPU (nvidia-smi).",
            severity="critical" if fraction >= MEMORY_CRITICAL else "warning",
            subject=",".join(g["gpu_uuid"] for g in near),
            values={"memory_peak_fraction": fraction, "batch": float(batch), "suggested_batch": float(target),
                    "gpus_near_limit": float(len(near))},
        )
    ]


def throttling_findings(facts: JobFacts) -> list[Finding]:
    out = []
    for g in facts.gpus:
        share = g["throttled_fraction"] or 0.0
        if share < THROTTLE_SHARE:
            continue
        reasons = ", ".join(g["throttle_reasons"]) or "a limiting reason"
        heat = any("thermal" in r for r in g["throttle_reasons"])
        out.append(
            Finding(
                "throttling",
                f"GPU {_short(g['gpu_uuid'])} was throttled ({reasons}) during {100 * share:.0f} % of its busy time: "
                f"its clock ran at {g['sm_clock_mean_mhz'] or 0:.0f} MHz on average while busy.",
                {"throttled share of busy time": _pct(100 * share), "reasons": reasons,
                 "mean SM clock while busy": f"{g['sm_clock_mean_mhz'] or 0:.0f} MHz",
                 "max temperature": f"{g['temperature_max_c'] or 0:.0f} °C",
                 "mean power": f"{g['power_mean_w'] or 0:.0f} W"},
                ("Check the cooling of this GPU's node (airflow, fans, ambient temperature)" if heat
                 else "Check the power limit and supply of this GPU (nvidia-smi -q -d PERFORMANCE,POWER)")
                + "; until then, the scheduler steers new chunks away from it.",
                subject=g["gpu_uuid"],
                values={"throttled_fraction": share, "sm_clock_mean_mhz": g["sm_clock_mean_mhz"] or 0.0},
            )
        )
    return out


# --------------------------------------------------------------------------- stragglers


def _pace(rows: list[dict]) -> float | None:
    """Median frames per second of the chunks (each at its own pace)."""
    rates = [r["frames"] / r["total_s"] for r in rows if r["total_s"] > 0 and r["frames"]]
    return float(np.median(rates)) if rates else None


def _slow_groups(rows: list[dict], key: str) -> list[tuple[Any, float, float, list[dict]]]:
    """(group, its pace, the others' pace, its rows) for groups slower than STRAGGLER_RATIO
    of the median pace of the other groups."""
    groups: dict[Any, list[dict]] = {}
    for r in rows:
        if r[key] is not None:
            groups.setdefault(r[key], []).append(r)
    out = []
    for group, mine in groups.items():
        others = [r for g, rs in groups.items() if g != group for r in rs]
        pace, other = _pace(mine), _pace(others)
        if pace is not None and other and pace < STRAGGLER_RATIO * other:
            out.append((group, pace, other, mine))
    return out


def straggler_findings(facts: JobFacts) -> list[Finding]:
    out = []
    nodes = {r["node_id"] for r in facts.rows if r["node_id"]}
    slow_nodes = _slow_groups(facts.rows, "node_id") if len(nodes) > 1 else []
    for node, pace, other, mine in slow_nodes:
        workers = sorted({r["worker_id"] for r in mine})
        out.append(
            Finding(
                "straggler_node",
                f"Node {mine[0]['node'] or node} straggles: its chunks ran at {pace:.1f} frames/s against "
                f"{other:.1f} on the other nodes ({other / pace:.1f}x slower).",
                {"node pace": f"{pace:.1f} frames/s", "other nodes": f"{other:.1f} frames/s",
                 "workers on it": ", ".join(map(str, workers)), "chunks": str(len(mine))},
                "Check the node's GPUs (throttling, other tenants), its CPU load and its disk or network; "
                "tail copies (on by default) stop it from holding up the end of the job.",
                subject=str(node),
                values={"pace_fps": pace, "others_fps": other},
            )
        )
    slow_node_ids = {node for node, *_ in slow_nodes}
    for worker, pace, other, mine in _slow_groups(facts.rows, "worker_id"):
        if mine[0]["node_id"] in slow_node_ids:
            continue  # said of its node
        gpu = mine[0]["gpu_uuid"] or "no GPU"
        out.append(
            Finding(
                "straggler_worker",
                f"Worker {worker} straggles: its chunks ran at {pace:.1f} frames/s against {other:.1f} for the "
                f"other workers ({other / pace:.1f}x slower).",
                {"worker pace": f"{pace:.1f} frames/s", "other workers": f"{other:.1f} frames/s",
                 "GPU": _short(gpu), "node": mine[0]["node"] or "?", "chunks": str(len(mine))},
                "Check that worker's GPU (throttling, memory, other processes) and node; the dispatcher already "
                "sends it less work and copies its last chunks to faster workers.",
                subject=str(worker),
                values={"pace_fps": pace, "others_fps": other, "slowdown": other / pace},
            )
        )
    return out
