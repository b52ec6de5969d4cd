"""Video in, video out: frames, timestamps, audio, containers and chunk seams (no Ray)."""

from fractions import Fraction

import numpy as np
import pytest
from localrun import decode_all, run_local, stream_facts

from facefleet.jobs.spec import JobSpec
from facefleet.media.decode import decode_range
from facefleet.media.encode import EncodeSettings, output_pix_fmt, quality_to_crf
from facefleet.media.probe import probe_video
from facefleet.samples import SampleSpec

SMALL = dict(width=320, height=180, frames=45, gop=12)


def job(src, out, **kw):
    return JobSpec(job_id="t", input_uri=str(src), output_uri=str(out), **kw)


def test_probe_counts_frames_and_keyframes(sample_factory):
    path, truth = sample_factory(SampleSpec(**SMALL))
    info = probe_video(str(path))
    assert info.frames == 45 == len(truth)
    assert info.keyframes[:4] == (0, 12, 24, 36)
    assert (info.width, info.height) == (320, 180)
    assert info.rate == Fraction(30000, 1001)
    assert info.has_audio


@pytest.mark.parametrize("start", [10, 11, 12, 13, 44])
def test_decode_range_is_exact_from_any_frame(sample_factory, start):
    path, _ = sample_factory(SampleSpec(**SMALL))
    info = probe_video(str(path))
    all_pts, all_frames = decode_all(path)
    end = min(start + 7, info.frames)
    key = max(k for k in info.keyframes if k <= start)
    got = list(decode_range(str(path), info.frame_pts[start], info.frame_pts[end - 1], info.frame_pts[key]))
    assert [p for p, _ in got] == all_pts[start:end]
    for (_, image), expected in zip(got, all_frames[start:end]):
        assert np.array_equal(image, expected)


def test_decode_range_recovers_when_seek_target_is_late(sample_factory):
    """A wrong (too late) keyframe hint still yields the exact range."""
    path, _ = sample_factory(SampleSpec(**SMALL))
    info = probe_video(str(path))
    all_pts, _ = decode_all(path)
    got = [p for p, _ in decode_range(str(path), info.frame_pts[5], info.frame_pts[9], info.frame_pts[24])]
    assert got == all_pts[5:10]


def test_decode_range_of_mpegts_with_b_frames_from_the_first_frame(sample_factory):
    """MPEG-TS with B-frames: the first keyframe presents after its decode time, and a seek
    to its pts yielded no frame at all; decoding starts over instead of giving nothing."""
    path, _ = sample_factory(SampleSpec(width=320, height=180, frames=24, container="ts"))  # one keyframe
    info = probe_video(str(path))
    all_pts, _ = decode_all(path)
    got = [p for p, _ in decode_range(str(path), info.frame_pts[0], info.frame_pts[-1], info.frame_pts[0])]
    assert got == all_pts and len(got) == info.frames


@pytest.mark.parametrize(
    "container,start",
    [("mp4", 0.0), ("mp4", 0.852), ("mkv", 0.0), ("mkv", 0.852), ("mov", 0.5)],
)
def test_output_keeps_frames_timestamps_size_and_audio(sample_factory, tmp_path, container, start):
    src, _ = sample_factory(SampleSpec(**SMALL, container=container, start=start))
    out = tmp_path / f"out.{container}"
    run_local(job(src, out, chunk_frames=10))
    a, b = stream_facts(src), stream_facts(out)
    assert b["format"] == a["format"]
    assert b["size"] == a["size"] and b["rate"] == a["rate"]
    in_pts, _ = decode_all(src)
    out_pts, _ = decode_all(out)
    assert len(out_pts) == len(in_pts) == 45
    half_frame = 0.5 / float(a["rate"])
    for p, q in zip(in_pts, out_pts):
        assert abs(float(p * a["time_base"]) - float(q * b["time_base"])) < half_frame
    if container != "mkv":
        assert out_pts == in_pts  # same time base: exactly the same timestamps
    assert b["start_time"] == pytest.approx(a["start_time"], abs=half_frame)
    # audio remuxed, not re-encoded: identical packets and timestamps
    assert b["audio_codecs"] == a["audio_codecs"] == ["aac"]
    assert b["audio_packets"] == a["audio_packets"]


def test_no_audio_input_gives_no_audio_output(sample_factory, tmp_path):
    src, _ = sample_factory(SampleSpec(**SMALL, audio=False))
    out = tmp_path / "out.mp4"
    run_local(job(src, out))
    assert stream_facts(out)["audio_codecs"] == []


def test_chunked_and_single_chunk_runs_give_identical_frames(sample_factory, tmp_path):
    """Lossless encoding, so decoded frames compare exactly; chunks of 7 frames with a
    keyframe every 12 put most seams off keyframes."""
    src, _ = sample_factory(SampleSpec(**SMALL))
    lossless = EncodeSettings(quality=100)
    one = run_local(job(src, tmp_path / "one.mp4", encode=lossless, chunk_frames=1000))
    many = run_local(job(src, tmp_path / "many.mp4", encode=lossless, chunk_frames=7))
    assert len(one.tasks) == 1 and len(many.tasks) > 4
    info = probe_video(str(src))
    assert any(t.start not in info.keyframes for t in many.tasks[1:])
    pts_one, frames_one = decode_all(tmp_path / "one.mp4")
    pts_many, frames_many = decode_all(tmp_path / "many.mp4")
    assert pts_one == pts_many
    for i, (a, b) in enumerate(zip(frames_one, frames_many)):
        assert np.array_equal(a, b), f"frame {i} differs"
    assert sum(r.faces for r in many.results.values()) == sum(r.faces for r in one.results.values()) > 0


def test_quality_mapping_and_pixel_formats():
    assert quality_to_crf(100) == 0 and quality_to_crf(0) == 51 and quality_to_crf(65) == 18
    with pytest.raises(ValueError):
        quality_to_crf(101)
    assert output_pix_fmt("yuv420p", 640, 360) == "yuv420p"
    assert output_pix_fmt("yuv420p", 641, 361) == "yuv444p"
    assert output_pix_fmt("yuv444p", 641, 361) == "yuv444p"
    assert output_pix_fmt("rgb48le", 640, 360) == "yuv420p"


def test_output_appears_only_when_complete(sample_factory, tmp_path, monkeypatch):
    """A failure while assembling leaves neither the output nor a temporary file."""
    import facefleet.jobs.runner as runner

    src, _ = sample_factory(SampleSpec(**SMALL))
    out = tmp_path / "out.mp4"

    def broken(info, segments, output):
        output.write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runner, "assemble", broken)
    with pytest.raises(RuntimeError):
        run_local(job(src, out))
    assert list(tmp_path.iterdir()) == []


def test_rotation_metadata_is_kept(sample_factory, tmp_path):
    import av

    src, _ = sample_factory(SampleSpec(**SMALL, rotation=90, audio=False))
    out = tmp_path / "rot.mp4"
    run_local(job(src, out))
    with av.open(str(out)) as c:
        assert next(c.decode(video=0)).rotation == 90


@pytest.mark.parametrize("width,height", [(64, 48), (66, 50), (64, 46)])
def test_segment_writer_writes_exactly_the_frames_it_was_given(tmp_path, width, height):
    """BGR frames in, lossless x264 out: decoding the segment gives back exactly the YUV
    planes of OpenCV's conversion, even when the caller reuses its buffers and memory just
    freed is overwritten at once (x264 keeps frames for its lookahead and frame threads)."""
    import av
    import cv2

    from facefleet.media.encode import SegmentWriter, to_video_frame

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(6)]
    wanted = [cv2.cvtColor(im, cv2.COLOR_BGR2YUV_I420) for im in images]
    for image, planes in zip(images, wanted):
        frame = to_video_frame(image, "yuv420p")
        assert (frame.width, frame.height) == (width, height)
        assert np.array_equal(frame.to_ndarray(), planes)
    path = tmp_path / "seg.mp4"
    writer = SegmentWriter(path, width, height, Fraction(1, 25), Fraction(25), "yuv420p", EncodeSettings(quality=100))
    for pts, image in enumerate(images):
        writer.write(image, pts)
        image[:] = 0
        scratch = [np.full((height * 3 // 2, width), 0, np.uint8) for _ in range(4)]  # reuse freed blocks
        del scratch
    writer.close()
    with av.open(str(path)) as container:
        got = [f.to_ndarray() for f in container.decode(video=0)]
    assert len(got) == len(wanted)
    for g, w in zip(got, wanted):
        assert np.array_equal(g, w)


def test_segments_are_opened_a_few_ahead_and_all_closed_when_one_is_refused(monkeypatch):
    """Assembly opens the next segments in threads while it copies one (opening probes a
    frame); never more than OPEN_AHEAD + 1 at once, and every one is closed when a segment
    with other codec settings stops it."""
    import threading
    from contextlib import contextmanager
    from types import SimpleNamespace

    from facefleet.errors import OutputError
    from facefleet.media import assemble

    lock = threading.Lock()
    state = {"open": 0, "peak": 0, "opened": []}

    @contextmanager
    def fake_open(path):
        with lock:
            state["open"] += 1
            state["peak"] = max(state["peak"], state["open"])
            state["opened"].append(path)
        stream = SimpleNamespace(codec_context=SimpleNamespace(extradata=b"bad" if path == "s7" else b"ok"))
        try:
            yield SimpleNamespace(streams=SimpleNamespace(video=[stream]), demux=lambda s: iter([f"{path}-p0", f"{path}-p1"]))
        finally:
            with lock:
                state["open"] -= 1

    monkeypatch.setattr(assemble, "_open_segment", fake_open)
    segments = [f"s{i}" for i in range(30)]
    packets = []
    with pytest.raises(OutputError, match="s7 was encoded with different codec settings"):
        for packet in assemble._checked_segments(assemble.SegmentFeed(segments, ready=True), b"ok"):
            packets.append(packet)
    assert packets == [f"s{i}-p{j}" for i in range(7) for j in range(2)]  # in order, up to the refused one
    assert state["open"] == 0
    assert state["peak"] <= assemble.OPEN_AHEAD + 1
    assert len(state["opened"]) <= 8 + assemble.OPEN_AHEAD  # opened ahead, not all thirty


def test_a_feed_gives_segments_in_order_as_they_become_ready_and_opens_none_early(monkeypatch):
    """Segments of a running job become ready in any order; assembly reads them in order,
    never opens one before it is ready, and stops with an OutputError when aborted."""
    import random
    import threading
    import time
    from contextlib import contextmanager
    from types import SimpleNamespace

    from facefleet.errors import OutputError
    from facefleet.media import assemble

    ready_at_open = []
    feed = assemble.SegmentFeed([f"s{i}" for i in range(12)])

    @contextmanager
    def fake_open(path):
        if path.startswith("s"):
            ready_at_open.append(feed.is_ready(int(path[1:])))
        stream = SimpleNamespace(codec_context=SimpleNamespace(extradata=b"ok"))
        yield SimpleNamespace(streams=SimpleNamespace(video=[stream]), demux=lambda s: iter([f"{path}-p"]))

    monkeypatch.setattr(assemble, "_open_segment", fake_open)
    order = list(range(12))
    random.Random(4).shuffle(order)

    def chunks_finish():
        for position in order:
            time.sleep(0.005)
            feed.mark_ready(position)

    finisher = threading.Thread(target=chunks_finish)
    finisher.start()
    packets = list(assemble._checked_segments(feed, b"ok"))
    finisher.join()
    assert packets == [f"s{i}-p" for i in range(12)]
    assert len(ready_at_open) == 12 and all(ready_at_open)

    waiting = assemble.SegmentFeed(["a", "b"])
    waiting.mark_ready(0)
    threading.Timer(0.05, waiting.abort, args=("the job failed",)).start()
    with pytest.raises(OutputError, match="assembly stopped: the job failed"):
        list(assemble._checked_segments(waiting, b"ok"))
    with pytest.raises(OutputError, match="the job failed"):
        waiting.decided()
    done = assemble.SegmentFeed(["a"], ready=True)
    done.decided()  # a complete list needs no decision
