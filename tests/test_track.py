"""Tracks and one-frame gap filling, also across chunk seams."""

import numpy as np
import pytest
from localrun import decode_all

from facefleet.cluster.chunk import run_chunk
from facefleet.jobs.runner import finish_job, plan_job
from facefleet.jobs.spec import JobSpec
from facefleet.media.encode import EncodeSettings
from facefleet.pipeline.faces import Face, FrameItem
from facefleet.pipeline.processor import Processor, build_processor
from facefleet.pipeline.spec import PipelineSpec
from facefleet.pipeline.stages import AnonymizeStage, DetectStage
from facefleet.pipeline.track import Tracker, TrackStage, fill_gaps
from facefleet.samples import SampleSpec


def face(x, y, size=20.0, score=0.9):
    return Face(box=np.array([x, y, x + size, y + size], np.float32), score=score, landmarks5=np.full((5, 2), x, np.float32))


def test_fill_gaps_interpolates_a_face_missing_for_one_frame():
    prev, nxt = [face(0, 0), face(100, 100)], [face(4, 0), face(100, 100)]
    cur = [face(100, 100)]  # the first face was missed
    filled = fill_gaps(prev, cur, nxt)
    assert len(filled) == 1 and filled[0].interpolated
    np.testing.assert_allclose(filled[0].box, [2, 0, 22, 20])
    assert fill_gaps(prev, [face(2, 0), face(100, 100)], nxt) == []  # nothing missing
    assert fill_gaps(prev, cur, [face(100, 100)]) == []  # gone for good: not filled
    assert fill_gaps([], cur, nxt) == []


def test_tracker_keeps_ids_through_motion_and_a_gap():
    tracker = Tracker()
    a, b = face(0, 0), face(200, 0)
    tracker.assign([a, b])
    moved = [face(205, 0), face(3, 0)]
    tracker.assign(moved)
    assert (moved[0].track, moved[1].track) == (b.track, a.track)
    tracker.assign([face(206, 0)])  # a missing for one frame
    back = [face(5, 0)]
    tracker.assign(back)
    assert back[0].track == a.track
    new = [face(500, 500)]
    tracker.assign(new)
    assert new[0].track not in (a.track, b.track)


def test_track_stage_holds_one_frame_and_flushes_it():
    stage = TrackStage()
    items = [FrameItem(i, i, np.zeros((4, 4, 3), np.uint8)) for i in range(3)]
    items[0].faces, items[1].faces, items[2].faces = [face(0, 0)], [], [face(2, 0)]
    out = stage.process(items)
    assert [i.index for i in out] == [0, 1]
    assert len(out[1].faces) == 1 and out[1].faces[0].interpolated
    assert [i.index for i in stage.flush()] == [2]
    assert stage.flush() == []


class DropFaces:
    """Test stage: forgets the faces the detector found on some frames (a detector dropout)."""

    name = "drop"
    context = 0

    def __init__(self, frames):
        self.frames = set(frames)

    def process(self, items):
        for item in items:
            if item.index in self.frames:
                item.faces = []
        return items

    def flush(self):
        return []


def centre_of(box):
    x1, y1, x2, y2 = box.astype(int)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    return slice(cy - 5, cy + 5), slice(cx - 5, cx + 5)


def processor_dropping(frames, track=True):
    spec = PipelineSpec(track=track)
    base = build_processor(spec)

    def stages(chunk):
        chain = [DetectStage(base.detector), DropFaces(frames)]
        if track:
            chain.append(TrackStage())
        return chain + [AnonymizeStage(spec.anonymize)]

    return Processor(spec, base.detector, stages)


@pytest.mark.parametrize("track", [True, False])
def test_face_missed_for_one_frame_is_still_anonymized_across_a_chunk_seam(sample_factory, tmp_path, track):
    """Frame 30 starts the second chunk and its faces are dropped: with tracking they come
    back from frames 29 and 31 (context frames across the seam); without, they stay clear."""
    src, truth = sample_factory(SampleSpec(width=320, height=180, frames=60, gop=100))
    spec = JobSpec("t", str(src), str(tmp_path / "out.mp4"), pipeline=PipelineSpec(track=track),
                   encode=EncodeSettings(quality=100), chunk_frames=30)
    job = plan_job(spec)
    assert [t.start for t in job.tasks] == [0, 30]
    processor = processor_dropping({30}, track)
    job.workdir.mkdir(parents=True)
    for task in job.tasks:
        job.results[task.index] = run_chunk(task, processor)
    finish_job(job)
    _, before = decode_all(src)
    _, after = decode_all(tmp_path / "out.mp4")
    assert len(truth[30]) >= 1
    changed = min(
        np.abs(after[30][centre].astype(int) - before[30][centre].astype(int)).mean()
        for centre in (centre_of(box) for box in truth[30])
    )
    if track:
        assert changed > 10, "a dropped face was not filled in"
    else:
        assert changed < 3, "without tracking a dropped face should stay as it was"
