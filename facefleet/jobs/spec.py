"""Jobs and chunks as values: what the driver asks for and what workers send back.

A chunk task is a descriptor (input, frame range, settings), never frames: workers decode
their own range and return the segment's location plus small metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from facefleet.media.encode import EncodeSettings
from facefleet.pipeline.spec import PipelineSpec



@dataclass(frozen=True)
class JobSpec:
    """One input processed into one output."""

    job_id: str
    input_uri: str
    output_uri: str
    pipeline: PipelineSpec = field(default_factory=PipelineSpec)
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    chunk_frames: int = 0  # 0: sized to the workers (media.plan.auto_chunk_frames)


@dataclass(frozen=True)
class ChunkTask:
    job_id: str
    index: int
    kind: str  # "video", "image" or "simulated" (sleeps; scheduling tests and benches)
    input_uri: str
    segment_uri: str  # where the worker writes this chunk's video segment or image ("": none)
    pipeline: PipelineSpec
    encode: EncodeSettings
    start: int = 0  # first frame index (for reports and messages)
    frames: int = 1  # frames in the range
    first_pts: int = 0  # output range: frames with first_pts <= pts <= last_pts are written
    last_pts: int = 0
    context_before: int = 0  # frames decoded before the range (context for the stages)
    decode_first_pts: int = 0  # decoded range: the output range plus context on each side
    decode_last_pts: int = 0
    seek_pts: int = 0  # pts of a keyframe at or before decode_first_pts
    width: int = 0
    height: int = 0
    time_base: Fraction = Fraction(1, 1)
    rate: Fraction = Fraction(25)
    pix_fmt: str = "yuv420p"  # output pixel format
    rotation: int = 0
    table_uri: str = ""  # where the worker writes this chunk's face rows (analyze), "" for none
    simulate_ms: float = 0.0  # simulated chunks: milliseconds per frame
    simulate_failures: tuple[int, ...] = ()  # simulated chunks: indices that fail (param fail_tries: their first N sends only)
    simulate_params: tuple[tuple[str, float], ...] = ()  # simulated chunks: other costs (decode_ms, encode_ms, ...)
    attempt: int = 1  # which send of this chunk this is (set by the runner as it sends it)

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.index)


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: int
    pid: int
    node: str  # host name
    node_id: str  # Ray's node id (several nodes can share a host)
    cuda_visible_devices: str | None
    providers: dict[str, str]
    gpu_uuid: str | None = None  # from NVML by this worker's PID (NVML order ignores CUDA_VISIBLE_DEVICES)
    gpu_backend: str = ""  # "real" or "simulated" (no NVML: a simulated GPU's UUID)
    # how its start went, in seconds: "process" (from its process's start to the actor's
    # constructor: Python, Ray's worker, imports), "models" (sessions made, CUDA started),
    # "warm_up" (the first call through the stages), "gpu" (finding its GPU in NVML)
    start_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkResult:
    job_id: str
    index: int
    segment_uri: str
    frames: int
    faces: int
    seconds: dict[str, float]  # wall time per stage: decode, detect, anonymize, encode, total
    worker_id: int
    providers: dict[str, str]
    models: dict[str, str] = field(default_factory=dict)  # model -> what vouched for its file
    started: float = 0.0  # wall-clock time (time.time()) the worker started the chunk
    batch_size: int = 0  # frames per detector call at the end of the chunk
    oom_retries: int = 0  # times the chunk ran again with half the batch after an allocation failure
    checksum: str = ""  # sha256 of the segment (or face table), flushed to disk first; simulated: of the chunk's name
    # stage -> (first, last): wall-clock times (time.time()) the stage first started and last
    # stopped working on this chunk, within [started, started + seconds["total"]]. Stages
    # overlap (decode and encode threads beside the processing thread); the processing
    # thread's stages are timed per batch call, so theirs are the batch calls' bounds.
    stage_times: dict[str, tuple[float, float]] = field(default_factory=dict)
