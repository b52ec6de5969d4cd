"""The analyze step: one row per face per frame, as plain columns (no files here)."""

from __future__ import annotations

from facefleet.pipeline.faces import FrameItem

COLUMNS = (
    "frame", "pts", "context", "track", "x1", "y1", "x2", "y2", "score", "interpolated", "selected",
    "landmarks5", "landmarks", "landmark_score", "embedding",
)


def face_rows(items: list[FrameItem]) -> list[dict]:
    """Rows for every face of every frame (pts in the stream's time base); context frames
    are flagged so the driver can link tracks across chunk seams and then drop them."""
    rows = []
    for item in items:
        for face in item.faces:
            rows.append(
                {
                    "frame": item.index,
                    "pts": item.pts,
                    "context": not item.output,
                    "track": face.track,
                    "x1": float(face.box[0]),
                    "y1": float(face.box[1]),
                    "x2": float(face.box[2]),
                    "y2": float(face.box[3]),
                    "score": float(face.score),
                    "interpolated": face.interpolated,
                    "selected": face.selected,
                    "landmarks5": [float(v) for v in face.landmarks5.reshape(-1)],
                    "landmarks": None if face.landmarks is None else [float(v) for v in face.landmarks.reshape(-1)],
                    "landmark_score": face.landmark_score,
                    "embedding": None if face.embedding is None else [float(v) for v in face.embedding],
                }
            )
    return rows


class AnalyzeStage:
    """Collects rows for the frames passing through (context frames included, flagged)."""

    name = "analyze"
    context = 0

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        self.rows.extend(face_rows(items))
        return items

    def flush(self) -> list[FrameItem]:
        return []
