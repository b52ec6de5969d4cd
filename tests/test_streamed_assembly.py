"""A video job's output assembled while its chunks run (facefleet.jobs.assembly): the same
bytes as assembling at the end, nothing at or beside the output until the job is done,
nothing left when the job stops; and only where the output can be renamed into place."""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from facefleet.cluster.chunk import run_chunk
from facefleet.jobs import assembly as assembly_module
from facefleet.jobs.assembly import MAX_STREAMED, streamed_assembly
from facefleet.jobs.runner import finish_job, plan_job, start_assembly, stop_assembly
from facefleet.jobs.spec import JobSpec
from facefleet.media.files import same_filesystem
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec
from localrun import run_local

VIDEO = SampleSpec(width=320, height=180, frames=48, gop=8, seed=11)  # with audio


@pytest.fixture(scope="module")
def processor():
    from facefleet.pipeline.processor import build_processor

    return build_processor(PipelineSpec())


def spec(src: Path, out: Path) -> JobSpec:
    return JobSpec(job_id="streamed", input_uri=str(src), output_uri=str(out), chunk_frames=8)


def planned(src: Path, out: Path, processor, done: int = 0):
    """The job planned, its work directory made, its first `done` chunks run (an earlier
    run's, for a resume), then its streamed assembly started as the runner starts it."""
    job = plan_job(spec(src, out))
    job.workdir.mkdir(parents=True)
    for task in job.tasks[:done]:
        job.results[task.index] = run_chunk(task, processor)
    job.assembly = start_assembly(job)
    return job


def beside(out: Path) -> list[str]:
    """Files in the output's directory other than the job's work directory."""
    return sorted(p.name for p in out.parent.iterdir() if p.is_file())


def test_streamed_output_has_the_bytes_of_one_assembled_at_the_end(sample_factory, processor, tmp_path):
    src, _ = sample_factory(VIDEO)
    at_end = tmp_path / "end" / "out.mp4"
    at_end.parent.mkdir()
    reference = run_local(spec(src, at_end), processor)
    assert reference.assembly is None and at_end.is_file()

    out = tmp_path / "streamed" / "out.mp4"
    out.parent.mkdir()
    job = planned(src, out, processor)
    assert job.assembly is not None and len(job.tasks) == 6
    order = list(job.tasks)
    random.Random(2).shuffle(order)  # chunks finish in any order
    for task in order:
        job.results[task.index] = run_chunk(task, processor)
        job.assembly.ready(task.index)
        assert not out.exists() and beside(out) == []  # nothing at or beside the output yet
    finish_job(job)
    assert out.read_bytes() == at_end.read_bytes()
    assert beside(out) == ["out.mp4"] and not job.assembly.tmp.exists()
    stop_assembly(job, "its job ended")  # what the runner does next: changes nothing now
    assert out.read_bytes() == at_end.read_bytes()
    shutil.rmtree(job.workdir)


def test_a_stopped_streamed_assembly_publishes_nothing_and_leaves_nothing(sample_factory, processor, tmp_path):
    src, _ = sample_factory(VIDEO)
    out = tmp_path / "out.mp4"
    job = planned(src, out, processor)
    streamed = job.assembly
    for task in job.tasks[:3]:  # the first half is done and being assembled
        job.results[task.index] = run_chunk(task, processor)
        streamed.ready(task.index)
    deadline = time.monotonic() + 30
    while not streamed.tmp.is_file():  # the thread is writing the output's first part
        assert time.monotonic() < deadline, "the assembly wrote nothing in 30 s"
        time.sleep(0.01)
    assert streamed.tmp.parent.parent == job.workdir and streamed.tmp.name == out.name
    stop_assembly(job, "the job failed")
    assert job.assembly is None and not streamed._thread.is_alive()
    assert not out.exists() and beside(out) == []
    assert not streamed.tmp.exists()  # its temporary file went too
    with pytest.raises(RuntimeError, match="before every segment was ready"):
        streamed.finish()  # a runner that would finish too early fails the job, never hangs
    shutil.rmtree(job.workdir)


def test_a_resumed_job_streams_the_segments_it_already_has(sample_factory, processor, tmp_path):
    src, _ = sample_factory(VIDEO)
    out = tmp_path / "out.mp4"
    job = planned(src, out, processor, done=4)  # 4 chunks done by an earlier run
    assert all(job.assembly.feed.is_ready(i) for i in range(4)) and not job.assembly.feed.is_ready(4)
    for task in job.tasks[4:]:
        job.results[task.index] = run_chunk(task, processor)
        job.assembly.ready(task.index)
    finish_job(job)
    at_end = tmp_path / "end" / "out.mp4"
    at_end.parent.mkdir()
    run_local(spec(src, at_end), processor)
    assert out.read_bytes() == at_end.read_bytes()
    shutil.rmtree(job.workdir)


def test_a_runner_streams_a_few_jobs_and_stops_each_assembly_it_drops(sample_factory, tmp_path):
    """At most MAX_STREAMED jobs of a runner are assembled while they run; a job added
    again while running, a job that ends, and the jobs left at close stop theirs."""
    from types import SimpleNamespace

    from facefleet.errors import OutputError
    from facefleet.jobs.runner import JobRunner

    src, _ = sample_factory(VIDEO)
    pool = SimpleNamespace(plan=SimpleNamespace(workers=1, chunks_per_worker=1, elastic=False), infos={}, actors=[None])
    runner = JobRunner(pool, feed=1, replan=False)  # with a feed, adding queues the chunks, sends nothing
    jobs = [plan_job(JobSpec(job_id=f"j{i}", input_uri=str(src), output_uri=str(tmp_path / f"o{i}.mp4"), chunk_frames=8))
            for i in range(MAX_STREAMED + 2)]
    runner.add(jobs)
    assert [job.assembly is not None for job in jobs] == [True] * MAX_STREAMED + [False, False]
    first = jobs[0].assembly
    again = plan_job(jobs[0].spec)
    runner.add([again])
    with pytest.raises(OutputError, match="started again"):
        first.feed.check()
    assert jobs[0].assembly is None and again.assembly is not None
    ending = jobs[1].assembly
    jobs[1].error = "failed"
    runner._end(jobs[1])
    with pytest.raises(OutputError, match="its job ended"):
        ending.feed.check()
    assert jobs[1].assembly is None
    left = [job.assembly for job in runner.jobs.values() if job.assembly is not None]
    runner.close()
    assert len(left) == MAX_STREAMED - 1 and all(job.assembly is None for job in runner.jobs.values())
    for streamed in left:
        with pytest.raises(OutputError, match="the run stopped"):
            streamed.feed.check()


def test_a_controller_closed_before_it_served_stops_the_assemblies_it_started(sample_factory, tmp_path):
    """resume() raising partway leaves serve() unrun: close() must still stop the streamed
    assemblies of the jobs resume() had started (their files stay for the next resume)."""
    from types import SimpleNamespace

    from facefleet.errors import OutputError
    from facefleet.jobs.controller import Controller

    src, _ = sample_factory(VIDEO)
    pool = SimpleNamespace(plan=SimpleNamespace(workers=1, chunks_per_worker=1, elastic=False), infos={}, actors=[None])
    controller = Controller(tmp_path / "state", pool)
    job = plan_job(JobSpec(job_id="resumed", input_uri=str(src), output_uri=str(tmp_path / "o.mp4"), chunk_frames=8))
    controller.runner.add([job])  # as resume() does for each unfinished job
    streamed = job.assembly
    assert streamed is not None
    controller.close()
    with pytest.raises(OutputError, match="the run stopped"):
        streamed.feed.check()
    assert job.assembly is None and job.workdir.is_dir()  # kept for a resume
    controller.close()  # a second close changes nothing


def test_assembly_is_streamed_only_where_the_output_can_be_renamed_into_place(sample_factory, tmp_path, monkeypatch):
    src, _ = sample_factory(VIDEO)
    job = plan_job(spec(src, tmp_path / "out.mp4"))
    segments = [Path(t.segment_uri) for t in job.tasks]
    work = job.workdir
    assert streamed_assembly(job.info, segments, str(tmp_path / "out.mp4"), work, writes_table=False) is not None
    assert streamed_assembly(job.info, segments, str(tmp_path / "out.mp4"), work, writes_table=True) is None
    assert streamed_assembly(None, segments, str(tmp_path / "out.png"), work, writes_table=False) is None  # an image
    assert streamed_assembly(job.info, segments, "s3://bucket/out.mp4", work, writes_table=False) is None
    from_s3 = replace(job.info, uri="s3://bucket/in.mp4")
    assert streamed_assembly(from_s3, segments, str(tmp_path / "out.mp4"), work, writes_table=False) is None
    monkeypatch.setattr(assembly_module, "same_filesystem", lambda a, b: False)
    assert streamed_assembly(job.info, segments, str(tmp_path / "out.mp4"), work, writes_table=False) is None


def test_not_streamed_from_a_work_dir_elsewhere_into_a_directory_that_passes_on_its_group_or_acl(
    sample_factory, tmp_path, monkeypatch
):
    """A file made in the state dir and renamed into a setgid (or default-ACL) output
    directory would keep the state dir's group and ACL: such jobs are assembled at the end,
    beside the output, unless their work directory is inside the output's directory."""
    import os
    import stat

    from facefleet.media import files

    src, _ = sample_factory(VIDEO)
    shared = tmp_path / "shared"
    shared.mkdir()
    out = str(shared / "out.mp4")
    job = plan_job(spec(src, shared / "out.mp4"))
    segments = [Path(t.segment_uri) for t in job.tasks]
    elsewhere = tmp_path / "state" / "work" / "unit"  # serve's work dir: same disk, another directory
    assert streamed_assembly(job.info, segments, out, elsewhere, writes_table=False) is not None
    os.chmod(shared, os.stat(shared).st_mode | stat.S_ISGID)
    assert files.passes_on_ownership(shared) and files.passes_on_ownership(shared / "sub" / "dir")
    assert streamed_assembly(job.info, segments, out, elsewhere, writes_table=False) is None
    assert streamed_assembly(job.info, segments, out, job.workdir, writes_table=False) is not None  # run's: inside
    os.chmod(shared, os.stat(shared).st_mode & ~stat.S_ISGID)
    monkeypatch.setattr(files.os, "listxattr", lambda path: [files.DEFAULT_ACL_XATTR])  # a default ACL
    assert streamed_assembly(job.info, segments, out, elsewhere, writes_table=False) is None
    monkeypatch.setattr(files.os, "listxattr", lambda path: [])
    assert streamed_assembly(job.info, segments, out, elsewhere, writes_table=False) is not None


def test_an_output_moved_across_filesystems_is_copied_then_renamed(tmp_path, monkeypatch):
    """Bind mounts of one disk share a device number but refuse renames between them (EXDEV)."""
    import errno
    import os

    from facefleet.media import files

    real = os.replace
    refused = []

    def replace(src, dst):
        if not refused:
            refused.append(dst)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    tmp = tmp_path / "work" / "out.mp4"
    tmp.parent.mkdir()
    tmp.write_bytes(b"the whole output")
    target = tmp_path / "outputs" / "out.mp4"
    files.publish(tmp, target)
    assert refused == [target] and target.read_bytes() == b"the whole output"
    assert not tmp.exists() and sorted(p.name for p in target.parent.iterdir()) == ["out.mp4"]


def test_same_filesystem_looks_at_the_nearest_existing_directory(tmp_path):
    assert same_filesystem(tmp_path, tmp_path / "not" / "made" / "yet")
    assert not same_filesystem(tmp_path, Path("/proc/self"))  # another filesystem
