"""The analyze output: one Parquet row per face per frame, and one per track.

Workers write a part per chunk (context frames included and flagged); the driver merges
the parts in chunk order, links each chunk's tracks to the previous chunk's through the
frame they both saw, drops the context rows and adds times in seconds.

Columns of `faces` (stable; documented in the README):
frame int64, pts int64 (stream time base), time_s float64, track int64, x1 y1 x2 y2 float32,
score float32, interpolated bool, selected bool (false: not the reference face), landmarks5 list<float32> (10: x,y of eyes, nose, mouth
corners), landmarks list<float32> (dense x,y[,z] or null), landmark_score float32 (null),
embedding list<float32> (null).
Columns of `tracks`: track, first_frame, last_frame, frames, interpolated_frames,
first_time_s, last_time_s, mean_score, mean_width, mean_height.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facefleet.media.files import atomic_output
from facefleet.pipeline.track import greedy_pairs

PART_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("pts", pa.int64()),
        ("context", pa.bool_()),
        ("track", pa.int64()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("score", pa.float32()),
        ("interpolated", pa.bool_()),
        ("selected", pa.bool_()),
        ("landmarks5", pa.list_(pa.float32())),
        ("landmarks", pa.list_(pa.float32())),
        ("landmark_score", pa.float32()),
        ("embedding", pa.list_(pa.float32())),
    ]
)
SEAM_IOU = 0.5


def write_face_table(rows: list[dict], path: Path) -> None:
    """One chunk's rows, written atomically."""
    table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def _boxes(table: pa.Table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float32)


def seam_links(before: pa.Table, after: pa.Table, threshold: float = SEAM_IOU) -> dict[int, int]:
    """Track ids of `after` (the next chunk's context rows of a frame) mapped to the ids of
    `before` (the previous chunk's output rows of the same frame), by box overlap."""
    from facefleet.pipeline.geometry import box_iou

    if before.num_rows == 0 or after.num_rows == 0:
        return {}
    a, b = _boxes(before), _boxes(after)
    iou = np.stack([box_iou(box, a) for box in b])
    ids_before = before.column("track").to_pylist()
    ids_after = after.column("track").to_pylist()
    return {ids_after[r]: ids_before[c] for r, c in greedy_pairs(iou, threshold)}


def merge_face_tables(parts: list[Path], time_base: Fraction, faces_out: Path, tracks_out: Path) -> int:
    """Merge chunk parts (in chunk order) into the faces and tracks tables; return face rows."""
    merged: list[pa.Table] = []
    previous_output: pa.Table | None = None
    for path in parts:
        part = pq.read_table(path, schema=PART_SCHEMA)
        context = part.filter(pc.field("context"))
        output = part.filter(~pc.field("context"))
        if previous_output is not None and context.num_rows:
            first_frame = pc.min(context.column("frame")).as_py()
            seen = previous_output.filter(pc.field("frame") == first_frame)
            links = seam_links(seen, context.filter(pc.field("frame") == first_frame))
            if links:
                tracks = [links.get(t, t) for t in output.column("track").to_pylist()]
                output = output.set_column(output.schema.get_field_index("track"), "track", pa.array(tracks, pa.int64()))
        merged.append(output)
        previous_output = output
    faces = pa.concat_tables(merged) if merged else PART_SCHEMA.empty_table()
    faces = faces.drop_columns(["context"])
    seconds = pc.multiply(pc.cast(faces.column("pts"), pa.float64()), float(time_base))
    faces = faces.add_column(2, "time_s", seconds)
    with atomic_output(faces_out) as tmp:
        pq.write_table(faces, tmp)
    with atomic_output(tracks_out) as tmp:
        pq.write_table(track_summary(faces), tmp)
    return faces.num_rows


def track_summary(faces: pa.Table) -> pa.Table:
    widths = pc.subtract(faces.column("x2"), faces.column("x1"))
    heights = pc.subtract(faces.column("y2"), faces.column("y1"))
    table = faces.select(["track", "frame", "time_s", "score", "interpolated"]).append_column("width", widths)
    table = table.append_column("height", heights)
    table = table.append_column("interp", pc.cast(table.column("interpolated"), pa.int64()))
    grouped = table.group_by("track").aggregate(
        [
            ("frame", "min"),
            ("frame", "max"),
            ("frame", "count"),
            ("interp", "sum"),
            ("time_s", "min"),
            ("time_s", "max"),
            ("score", "mean"),
            ("width", "mean"),
            ("height", "mean"),
        ]
    )
    names = {
        "frame_min": "first_frame",
        "frame_max": "last_frame",
        "frame_count": "frames",
        "interp_sum": "interpolated_frames",
        "time_s_min": "first_time_s",
        "time_s_max": "last_time_s",
        "score_mean": "mean_score",
        "width_mean": "mean_width",
        "height_mean": "mean_height",
    }
    grouped = grouped.rename_columns([names.get(n, n) for n in grouped.column_names])
    return grouped.sort_by("track")
