"""A disk that fills up while a segment is encoded or the output is muxed. FFmpeg's
AVERROR(ENOSPC) reaches Python as an OSError (PyAV's av.error.OSError); here a patched
writer or muxer raises exactly that, as a full disk does, part-way through the file. The
chunk or the job fails with "the disk is full", naming the file (final: a chunk is not
retried), and nothing is left at or beside it. (tests/test_faults.py injects ENOSPC at
the rename instead, through a whole run.)"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import av
import pytest

from facefleet.cluster.chunk import run_chunk
from facefleet.errors import OutputError
from facefleet.jobs.runner import finish_job, plan_job
from facefleet.jobs.spec import JobSpec
from facefleet.media.encode import SegmentWriter
from facefleet.media.files import TMP_MARK
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec

VIDEO = SampleSpec(width=320, height=180, frames=24, gop=8, seed=21)  # with audio


@pytest.fixture(scope="module")
def processor():
    from facefleet.pipeline.processor import build_processor

    return build_processor(PipelineSpec())


def disk_full(path: Path) -> av.error.FFmpegError:
    """What PyAV raises when FFmpeg's write fails with ENOSPC."""
    try:
        av.error.err_check(-errno.ENOSPC, str(path))
    except av.error.FFmpegError as exc:
        assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        return exc
    raise AssertionError("err_check raised nothing")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_disk_full_while_a_segment_is_encoded_fails_the_chunk_naming_the_segment(
    sample_factory, processor, tmp_path, monkeypatch
):
    src, _ = sample_factory(VIDEO)
    job = plan_job(JobSpec("segfull", str(src), str(tmp_path / "out" / "out.mp4"), chunk_frames=8))
    job.workdir.mkdir(parents=True)
    real_write = SegmentWriter.write

    def write(self, image, pts):
        if self.frames == 3:
            raise disk_full(self.path)
        real_write(self, image, pts)

    monkeypatch.setattr(SegmentWriter, "write", write)
    task = job.tasks[1]
    with pytest.raises(OutputError) as failed:
        run_chunk(task, processor)
    # an OutputError: the dispatcher fails the job at once instead of sending it again
    assert str(failed.value).startswith(f"{task.segment_uri}: the disk is full (No space left on device)"), failed.value
    assert files_under(tmp_path / "out") == []  # no segment, no temporary file
    shutil.rmtree(job.workdir)


class FillsUp:
    """An output container whose disk fills after `room` packets (otherwise the real one)."""

    def __init__(self, container, room: int):
        self._container, self._room = container, room

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def mux(self, packet):
        if self._room == 0:
            raise disk_full(self._container.name)
        self._room -= 1
        self._container.mux(packet)


def test_a_disk_full_while_the_output_is_muxed_fails_the_job_naming_the_output(
    sample_factory, processor, tmp_path, monkeypatch
):
    src, _ = sample_factory(VIDEO)
    out = tmp_path / "out" / "out.mp4"
    job = plan_job(JobSpec("outfull", str(src), str(out), chunk_frames=8))
    job.workdir.mkdir(parents=True)
    for task in job.tasks:
        job.results[task.index] = run_chunk(task, processor)
    real_open = av.open

    def open_(file, *args, **kwargs):
        container = real_open(file, *args, **kwargs)
        if kwargs.get("mode") == "w" and Path(str(file)).name.startswith(f".out{TMP_MARK}"):
            return FillsUp(container, room=10)  # the output's temporary file, not a segment
        return container

    monkeypatch.setattr(av, "open", open_)
    with pytest.raises(OutputError) as failed:
        finish_job(job)  # assembled at the end: job.assembly is None here
    assert str(failed.value).startswith(f"{out}: the disk is full (No space left on device)"), failed.value
    assert not out.exists()
    assert [name for name in files_under(out.parent) if not name.startswith(job.workdir.name)] == []
    shutil.rmtree(job.workdir)
