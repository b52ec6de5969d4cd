"""Rebuild the small face crops in this folder from ../shared/media (public-domain photos).

Run from the project root: .venv/bin/python tests/data/build.py
The face boxes in faces.json are what the shipped CenterFace detector finds on each crop
at detection size 640; tests place these crops in synthetic videos and know from this
where every face is.
"""

import json
from pathlib import Path

import cv2

from facefleet.models.manifest import get_model
from facefleet.models.session import create_session
from facefleet.pipeline.detect import FaceDetector

HERE = Path(__file__).parent
MEDIA = HERE.parents[1].parent / "shared" / "media"
# source file, crop (x1, y1, x2, y2) in source pixels, resize factor
CROPS = {
    "astronaut.jpg": ("astronaut.png", (110, 0, 350, 260), 1.0),
    "obama.jpg": ("obama.jpg", (300, 10, 690, 500), 0.5),
    "biden.jpg": ("biden.jpg", (360, 100, 790, 650), 0.45),
    "two_people.jpg": ("two_people.jpg", (0, 0, 1126, 661), 0.5),
}


def main() -> None:
    detector = FaceDetector(create_session(get_model("centerface")), detect_size=640, threshold=0.5)
    faces = {}
    for name, (source, (x1, y1, x2, y2), factor) in CROPS.items():
        image = cv2.imread(str(MEDIA / source))[y1:y2, x1:x2]
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(HERE / name), image, [cv2.IMWRITE_JPEG_QUALITY, 88])
        image = cv2.imread(str(HERE / name))
        found = detector.detect([image])[0]
        faces[name] = [[round(float(v), 1) for v in box] for box in found.boxes]
        print(name, image.shape, faces[name])
    (HERE / "faces.json").write_text(json.dumps(faces, indent=1) + "\n")


if __name__ == "__main__":
    main()
