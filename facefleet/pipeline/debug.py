"""The debugger: draws what the pipeline found, so a person can check it frame by frame."""

from __future__ import annotations

import cv2
import numpy as np

from facefleet.pipeline.faces import Face, FrameItem

BOX = (0, 255, 0)  # BGR
INTERPOLATED = (0, 200, 255)
POINTS = (0, 0, 255)
DENSE = (255, 200, 0)


def draw_face(image: np.ndarray, face: Face) -> None:
    """Box, score and track id, the 5 alignment points, and dense landmarks when present."""
    scale = max(1, round(max(image.shape[:2]) / 720))
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    colour = INTERPOLATED if face.interpolated else BOX
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2 * scale)
    label = f"{face.score:.2f}" + (f" #{face.track}" if face.track >= 0 else "")
    cv2.putText(image, label, (x1, max(0, y1 - 4 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, scale, cv2.LINE_AA)
    if face.landmarks is not None:
        for x, y in face.landmarks[:, :2]:
            cv2.circle(image, (int(round(x)), int(round(y))), scale, DENSE, -1)
    for x, y in face.landmarks5:
        cv2.circle(image, (int(round(x)), int(round(y))), 2 * scale, POINTS, -1)


class DebugStage:
    name = "debug"
    context = 0

    def process(self, items: list[FrameItem]) -> list[FrameItem]:
        for item in items:
            for face in item.faces:
                draw_face(item.image, face)
        return items

    def flush(self) -> list[FrameItem]:
        return []
