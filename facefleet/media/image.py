"""Still images: read to BGR (alpha kept aside), write back in the same format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefleet.errors import InputError, OutputError


@dataclass
class Image:
    bgr: np.ndarray  # uint8 (H, W, 3)
    alpha: np.ndarray | None = None  # uint8 (H, W) when the source had an alpha channel


def read_image(uri: str) -> Image:
    path = Path(uri)
    if not path.is_file():
        raise InputError(uri, "file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise InputError(uri, "file is empty (0 bytes)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(uri, "not a readable image (damaged, or not the format its name says)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(uri, f"unsupported image sample type {image.dtype}")
    if image.ndim == 2:
        return Image(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.shape[2] == 4:
        return Image(np.ascontiguousarray(image[:, :, :3]), np.ascontiguousarray(image[:, :, 3]))
    return Image(image)


def write_image(image: Image, path: Path) -> None:
    """Encode in the format of `path`'s extension (the caller makes the write atomic)."""
    pixels = image.bgr if image.alpha is None else np.dstack([image.bgr, image.alpha])
    ext = path.suffix.lower()
    if ext == ".jpg" or ext == ".jpeg":
        pixels = image.bgr  # JPEG has no alpha
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(ext, pixels, params)
    if not ok:
        raise OutputError(f"{path}: cannot encode image as {ext}")
    path.write_bytes(encoded.tobytes())
