"""Run a job's chunks in this process, without Ray: the worker's code path minus the actor."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np

from facefleet.cluster.chunk import run_chunk
from facefleet.jobs.runner import PlannedJob, finish_job, plan_job
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.processor import Processor, build_processor

_processors: dict = {}


def run_local(spec: JobSpec, processor: Processor | None = None) -> PlannedJob:
    """What the workers and the driver do for one job, in this process."""
    job = plan_job(spec)
    if processor is None:
        if spec.pipeline not in _processors:
            _processors[spec.pipeline] = build_processor(spec.pipeline)
        processor = _processors[spec.pipeline]
    job.workdir.mkdir(parents=True, exist_ok=True)
    try:
        for task in job.tasks:
            job.results[task.index] = run_chunk(task, processor)
        finish_job(job)
    finally:
        shutil.rmtree(job.workdir, ignore_errors=True)
    return job


def decode_all(path: Path) -> tuple[list[int], list[np.ndarray]]:
    """Every frame's pts and BGR pixels."""
    pts, frames = [], []
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.video[0]):
            pts.append(frame.pts)
            frames.append(frame.to_ndarray(format="bgr24"))
    return pts, frames


def stream_facts(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        audio = [
            [(p.pts, p.dts, bytes(p)) for p in c.demux(a) if p.size] for a in c.streams.audio
        ]
        c.seek(0)
        return {
            "format": c.format.name,
            "time_base": v.time_base,
            "rate": v.average_rate,
            "size": (v.codec_context.width, v.codec_context.height),
            "audio_codecs": [a.codec_context.name for a in c.streams.audio],
            "audio_packets": audio,
            "start_time": float(v.start_time * v.time_base) if v.start_time is not None else None,
        }
