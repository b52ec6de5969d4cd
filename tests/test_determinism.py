"""Runs are deterministic: the same job gives the same frames whatever the chunking, the
chunks running at once on one processor, OpenCV's thread count, or the worker's threads.

Found (2026-11): cv2.stackBlur's result depended on how OpenCV split the work over its
thread pool (a frame blurred while another thread used the pool came out up to 4 levels
off, and x264 spread that over the rest of the segment, up to 60 levels); the x264
thread count came from the worker (its media threads, or the machine's cores), which
changes x264's output; and x264's AVX-512 code read memory it had not written, so on an
AVX-512 CPU a 320x240 segment came out differently from run to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from localrun import decode_all, run_local

from facefleet.cluster.chunk import run_chunk
from facefleet.jobs.runner import finish_job, plan_job
from facefleet.jobs.spec import JobSpec
from facefleet.media.encode import ENCODER_THREADS, EncodeSettings, x264_asm_flags
from facefleet.pipeline.anonymize import AnonymizeOptions, anonymize_frame, blurred
from facefleet.pipeline.processor import Processor, build_processor
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec

SAMPLE = SampleSpec(frames=40, audio=False)
LOSSLESS = EncodeSettings(quality=100)  # CRF 0: decoded frames are the processed frames
UNCHUNKED = 10_000


@pytest.fixture
def cv2_threads():
    """Set OpenCV's thread count in a test; restored afterwards."""
    before = cv2.getNumThreads()
    yield cv2.setNumThreads
    cv2.setNumThreads(before)


@pytest.fixture(scope="module")
def processor() -> Processor:
    return build_processor(PipelineSpec())


class RecordingProcessor:
    """A processor whose runs remember every output frame's faces and pixels as the stages
    leave them (before encoding), by frame index."""

    def __init__(self, processor: Processor):
        self._processor = processor
        self.frames: dict[int, tuple[list, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def run(self, chunk: int = 0):
        return _RecordingRun(self._processor.run(chunk), self)

    def record(self, items):
        with self._lock:
            for item in items:
                if item.output:
                    faces = [(f.box.tobytes(), f.score, f.landmarks5.tobytes(), f.interpolated) for f in item.faces]
                    self.frames[item.index] = (faces, item.image.copy())
        return items


class _RecordingRun:
    def __init__(self, run, recorder: RecordingProcessor):
        self._run, self._recorder = run, recorder

    def __getattr__(self, name):
        return getattr(self._run, name)

    def process(self, items):
        return self._recorder.record(self._run.process(items))

    def flush(self):
        return self._recorder.record(self._run.flush())


def run_job(spec: JobSpec, processor, concurrency: int = 1) -> list[np.ndarray]:
    """The job's chunks on one processor, `concurrency` at a time (as a worker runs its
    chunks in flight); returns the output's decoded frames."""
    if concurrency == 1:
        run_local(spec, processor)
    else:
        job = plan_job(spec)
        job.workdir.mkdir(parents=True, exist_ok=True)
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                results = [pool.submit(run_chunk, task, processor) for task in job.tasks]
                for task, result in zip(job.tasks, results):
                    job.results[task.index] = result.result()
            finish_job(job)
        finally:
            shutil.rmtree(job.workdir, ignore_errors=True)
    return decode_all(Path(spec.output_uri))[1]


def differing(a: list[np.ndarray], b: list[np.ndarray]) -> list[tuple[int, int]]:
    """(frame, largest difference) of every frame that differs."""
    assert len(a) == len(b)
    return [(i, int(np.abs(x.astype(int) - y).max())) for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)]


def differing_faces(a: RecordingProcessor, b: RecordingProcessor) -> list[int]:
    assert sorted(a.frames) == sorted(b.frames)
    return [i for i in sorted(a.frames) if a.frames[i][0] != b.frames[i][0]]


def differing_pixels(a: RecordingProcessor, b: RecordingProcessor) -> list[int]:
    return [i for i in sorted(a.frames) if not np.array_equal(a.frames[i][1], b.frames[i][1])]


def test_blur_same_whatever_opencv_threads(cv2_threads):
    """The blur of a face region does not depend on OpenCV's threads or on other threads
    using OpenCV at the same time (cv2.stackBlur did: 1 vs 2 threads changed most regions)."""
    rng = np.random.default_rng(0)
    regions = [rng.integers(0, 256, (int(h), int(w), 3), np.uint8) for h, w in rng.integers(12, 400, (120, 2))]
    cv2_threads(1)
    reference = [blurred(r) for r in regions]
    for threads in (2, 3, 8):
        cv2_threads(threads)
        assert all(np.array_equal(x, blurred(r)) for x, r in zip(reference, regions)), f"{threads} threads"
        with ThreadPoolExecutor(3) as pool:
            concurrent = list(pool.map(blurred, regions))
        assert all(np.array_equal(x, y) for x, y in zip(reference, concurrent)), f"{threads} threads, concurrent"


def test_blur_strength_kept():
    """The blur still spans the whole region: a face-sized patch of noise keeps no detail."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (360, 640, 3), np.uint8)
    before = frame.copy()
    anonymize_frame(frame, np.array([[200, 100, 360, 300]], np.float32), AnonymizeOptions(boxes=True))
    inner = (slice(120, 280), slice(220, 340))
    sharpness = cv2.Laplacian(frame[inner], cv2.CV_64F).var() / cv2.Laplacian(before[inner], cv2.CV_64F).var()
    assert sharpness < 0.01
    assert np.array_equal(frame[:60], before[:60])  # outside the grown box: untouched


def test_two_runs_equal_frame_for_frame(sample_factory, tmp_path, processor, cv2_threads):
    """The same job, default encoding, run again: with the same processor, a fresh one, and
    another OpenCV thread count (a worker sets its own): the decoded frames are equal."""
    path, _ = sample_factory(SAMPLE)

    def spec(name: str) -> JobSpec:
        return JobSpec(name, str(path), str(tmp_path / f"{name}.mp4"), chunk_frames=16)

    cv2_threads(1)
    first = run_job(spec("first"), processor)
    cv2_threads(4)
    again = run_job(spec("again"), processor)
    cv2_threads(2)
    fresh = run_job(spec("fresh"), build_processor(PipelineSpec()))
    assert differing(first, again) == []
    assert differing(first, fresh) == []


@pytest.mark.parametrize("batch_size", [0, 5])
def test_chunked_equals_unchunked(sample_factory, tmp_path, processor, batch_size):
    """Chunks of several sizes (their seams, context frames and short last batches) give the
    unchunked run's faces and, encoded losslessly, its pixels."""
    path, _ = sample_factory(SAMPLE)
    pipeline = PipelineSpec(batch_size=batch_size)
    chunked_processor = processor if not batch_size else build_processor(pipeline)
    runs = {}
    for chunk_frames in (UNCHUNKED, 7, 16, 25):
        recorder = RecordingProcessor(chunked_processor)
        spec = JobSpec(
            f"c{chunk_frames}", str(path), str(tmp_path / f"c{chunk_frames}.mp4"), pipeline, LOSSLESS, chunk_frames
        )
        runs[chunk_frames] = (recorder, run_job(spec, recorder))
    whole, whole_frames = runs.pop(UNCHUNKED)
    assert len(whole.frames) == SAMPLE.frames and sum(len(f[0]) for f in whole.frames.values()) > SAMPLE.frames
    for chunk_frames, (recorder, frames) in runs.items():
        assert differing_faces(whole, recorder) == [], chunk_frames
        assert differing_pixels(whole, recorder) == [], chunk_frames
        assert differing(whole_frames, frames) == [], chunk_frames


@pytest.mark.parametrize("encode", [LOSSLESS, EncodeSettings()], ids=["lossless", "default"])
def test_concurrent_chunks_equal_sequential(sample_factory, tmp_path, processor, encode):
    """Two chunks at once on one processor (as a worker runs its chunks in flight) give
    what one chunk at a time gives."""
    path, _ = sample_factory(SAMPLE)

    def spec(name: str) -> JobSpec:
        return JobSpec(name, str(path), str(tmp_path / f"{name}.mp4"), encode=encode, chunk_frames=10)

    sequential, concurrent = RecordingProcessor(processor), RecordingProcessor(processor)
    one_at_a_time = run_job(spec("sequential"), sequential)
    two_at_once = run_job(spec("concurrent"), concurrent, concurrency=2)
    assert differing_faces(sequential, concurrent) == []
    assert differing_pixels(sequential, concurrent) == []
    assert differing(one_at_a_time, two_at_once) == []


def test_segment_same_on_any_worker(sample_factory, tmp_path, processor):
    """A chunk's segment is the same bytes whatever thread budget its worker has (a retried,
    duplicated or resumed chunk may run elsewhere): x264's threads are the job's."""
    path, _ = sample_factory(SAMPLE)
    job = plan_job(JobSpec("seg", str(path), str(tmp_path / "seg.mp4"), chunk_frames=20))
    task = job.tasks[1]
    segments = set()
    for worker_threads in (0, 1, 3):
        job.workdir.mkdir(parents=True, exist_ok=True)
        run_chunk(task, processor, threads=worker_threads)
        segments.add(Path(task.segment_uri).read_bytes())
        shutil.rmtree(job.workdir)
    assert len(segments) == 1
    assert EncodeSettings().encoder_threads == ENCODER_THREADS


ENCODE_IN_A_FRESH_PROCESS = """
import hashlib, sys
from fractions import Fraction
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from localrun import decode_all
from facefleet.media.encode import EncodeSettings, SegmentWriter
pts, frames = decode_all(Path(sys.argv[1]))
out = Path(sys.argv[3])
writer = SegmentWriter(out, 320, 240, Fraction(1, 30000), Fraction(30000, 1001), "yuv420p", EncodeSettings())
for pts_, frame in zip(pts, frames):
    writer.write(frame, pts_)
writer.close()
print(hashlib.sha256(b"".join(f.tobytes() for f in decode_all(out)[1])).hexdigest())
"""


def test_segment_same_whatever_the_heap_holds(sample_factory, tmp_path):
    """x264 gives the same segment whatever its fresh memory holds: glibc fills it with a
    different byte in each process (MALLOC_PERTURB_). With x264's AVX-512 code, a 320x240
    segment came out differently each time on an AVX-512 CPU."""
    path, _ = sample_factory(SampleSpec(width=320, height=240, frames=16, audio=False, seed=3))
    digests = set()
    for byte in (1, 77, 200):
        env = {**os.environ, "MALLOC_PERTURB_": str(byte)}
        args = [sys.executable, "-c", ENCODE_IN_A_FRESH_PROCESS, str(path), str(Path(__file__).parent), str(tmp_path / f"{byte}.mp4")]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_x264_runs_without_avx512():
    """x264 gets the capabilities it reported, less AVX-512 (flags of x264.h)."""
    reported = ["MMX2", "SSE2Fast", "SSSE3", "SSE4.2", "AVX", "FMA3", "BMI2", "AVX2", "AVX512"]
    assert x264_asm_flags(reported) == 0x10F3FF  # up to AVX2, SSE2 fast; bit 16 (AVX-512) off
    assert x264_asm_flags(reported[:-1]) is None  # no AVX-512: x264 left to itself
    assert x264_asm_flags(["MMX2", "SSE2", "AVX512", "Unknown"]) & (1 << 16) == 0
