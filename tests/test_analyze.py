"""The analyze and debug steps, and chained steps, without Ray."""


import pyarrow.parquet as pq
from localrun import decode_all, run_local

from facefleet.jobs.inputs import resolve_outputs
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.spec import PipelineSpec, parse_steps
from facefleet.samples import SampleSpec

SPEC = SampleSpec(width=320, height=180, frames=60, gop=100)


def test_parse_steps():
    assert parse_steps("enhance,debug") == ("enhance", "debug")
    for bad in ("", "blur", "debug,debug"):
        try:
            parse_steps(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_analyze_writes_one_row_per_face_and_tracks_that_survive_chunk_seams(sample_factory, tmp_path):
    src, truth = sample_factory(SPEC)
    out = tmp_path / "faces.parquet"
    pipeline = PipelineSpec(steps=("analyze",))
    one = run_local(JobSpec("a", str(src), str(tmp_path / "one.parquet"), pipeline=pipeline, chunk_frames=1000))
    many = run_local(JobSpec("b", str(src), str(out), pipeline=pipeline, chunk_frames=20))
    assert len(one.tasks) == 1 and len(many.tasks) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.parquet", "faces.tracks.parquet", "one.parquet", "one.tracks.parquet"]
    faces = pq.read_table(out).to_pylist()
    single = pq.read_table(tmp_path / "one.parquet").to_pylist()
    # the same faces whatever the chunking (rows, boxes), and every frame's faces are there
    key = lambda r: (r["frame"], round(r["x1"], 3), round(r["y1"], 3))
    assert sorted(map(key, faces)) == sorted(map(key, single))
    assert {r["frame"] for r in faces} <= set(range(60))
    assert sum(1 for r in faces if not r["interpolated"]) >= 0.9 * sum(map(len, truth))
    first = faces[0]
    assert first["time_s"] == first["pts"] / 90000 and len(first["landmarks5"]) == 10
    # tracks are linked across the two seams: as many tracks as in the unchunked run
    tracks_many = {r["track"] for r in faces}
    tracks_one = {r["track"] for r in single}
    assert len(tracks_many) == len(tracks_one)
    summary = pq.read_table(tmp_path / "faces.tracks.parquet").to_pylist()
    assert sorted(t["track"] for t in summary) == sorted(tracks_many)
    assert sum(t["frames"] for t in summary) == len(faces)
    assert all(t["first_frame"] <= t["last_frame"] for t in summary)
    assert not (tmp_path / ".facefleet-b").exists()


def test_debug_draws_and_chains_with_analyze(sample_factory, tmp_path):
    src, _ = sample_factory(SPEC)
    out = tmp_path / "debug.mp4"
    run_local(JobSpec("d", str(src), str(out), pipeline=PipelineSpec(steps=("debug", "analyze")), chunk_frames=30))
    _, before = decode_all(src)
    pts, after = decode_all(out)
    assert len(after) == 60
    faces = pq.read_table(tmp_path / "debug.faces.parquet").to_pylist()
    row = next(r for r in faces if r["frame"] == 10)
    x1, y1 = int(row["x1"]), int(row["y1"])
    # a green box edge is drawn where the face box starts; far from faces nothing changes
    edge = after[10][y1 + 5 : y1 + 15, max(0, x1 - 1) : x1 + 2].astype(int)
    assert (edge[..., 1] - edge[..., 2]).mean() > 45  # green over red, after 4:2:0 chroma averaging
    assert (tmp_path / "debug.tracks.parquet").exists()


def test_table_outputs_are_named_by_kind(tmp_path):
    assert resolve_outputs(["/x/a.mp4"], None, table=True) == [("/x/a.mp4", "/x/a_faces.parquet")]
    assert resolve_outputs(["/x/a.mp4", "/y/b.mkv"], str(tmp_path), table=True) == [
        ("/x/a.mp4", str(tmp_path / "a.parquet")),
        ("/y/b.mkv", str(tmp_path / "b.parquet")),
    ]
