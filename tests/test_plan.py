import pytest

from facefleet.media.plan import FrameRange, auto_chunk_frames, keyframe_at_or_before, plan_ranges


def covers(ranges, frames):
    return ranges[0].start == 0 and ranges[-1].end == frames and all(a.end == b.start for a, b in zip(ranges, ranges[1:]))


def test_ranges_cover_every_frame_once():
    ranges = plan_ranges(1000, (0,), 300)
    assert covers(ranges, 1000)
    assert [r.frames for r in ranges] == [300, 300, 300, 100]
    # a tail shorter than a quarter chunk joins the last chunk
    assert [r.frames for r in plan_ranges(650, (0,), 300)] == [300, 350]


def test_boundaries_snap_to_nearby_keyframes():
    keys = tuple(range(0, 1000, 250))
    ranges = plan_ranges(1000, keys, 300)
    assert covers(ranges, 1000)
    assert [r.start for r in ranges] == [0, 250, 500, 750]


def test_boundary_stays_put_without_a_keyframe_near():
    ranges = plan_ranges(100, (0, 60), 20)
    assert [r.start for r in ranges] == [0, 20, 40, 60, 80]


def test_single_chunk_and_empty():
    assert plan_ranges(50, (0,), 300) == [FrameRange(0, 50)]
    assert plan_ranges(0, (0,), 300) == []
    with pytest.raises(ValueError):
        plan_ranges(10, (0,), 0)


def test_keyframe_at_or_before():
    keys = (0, 30, 60)
    assert [keyframe_at_or_before(keys, i) for i in (0, 29, 30, 59, 61)] == [0, 0, 30, 30, 60]
    assert keyframe_at_or_before((10,), 5) == 0


def test_auto_chunk_size_gives_every_slot_work_within_bounds():
    assert auto_chunk_frames(300, 2) == 150
    assert auto_chunk_frames(100_000, 8) == 300
    assert auto_chunk_frames(40, 4) == 30
    assert auto_chunk_frames(301, 1) == 300


def test_automatic_chunks_shrink_toward_the_end():
    ranges = plan_ranges(3000, (0,), 300, taper_slots=2)
    sizes = [r.frames for r in ranges]
    assert covers(ranges, 3000)
    assert sizes[:8] == [300] * 8  # full size while more than a wave is left
    assert sizes[8:] == sorted(sizes[8:], reverse=True) and sizes[-1] <= 75
    assert min(sizes) >= 30
