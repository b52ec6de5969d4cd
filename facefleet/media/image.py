"""Still images: read to BGR (alpha kept aside), write back in the same format.

A photo's EXIF orientation is applied on reading (by OpenCV), so faces are detected upright
and the output, written without the tag, displays exactly as the input did.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefleet.errors import InputError, OutputError
from facefleet.media import storage


@dataclass
class Image:
    bgr: np.ndarray  # uint8 (H, W, 3)
    alpha: np.ndarray | None = None  # uint8 (H, W) when the source had an alpha channel


NOT_AN_IMAGE = "not a readable image (damaged, or not the format its name says)"


def _check_file(uri: str, path: Path) -> None:
    if not path.exists():
        raise InputError(uri, "file not found")
    if not path.is_file():
        raise InputError(uri, "is a directory, not an image file" if path.is_dir() else "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(uri, "file is empty (0 bytes)")


HEAD_BYTES = 4096  # more than any image signature OpenCV checks


def check_image(uri: str) -> None:
    """A cheap look before any work (for planning): the file exists, is not empty and
    starts like an image format OpenCV reads. Damage further in is found by read_image."""
    if storage.is_remote(uri):
        readable = _remote_head_readable(uri)
    else:
        path = Path(storage.local_path(uri))
        _check_file(uri, path)
        readable = _have_reader(str(path))
    if not readable:
        raise InputError(uri, NOT_AN_IMAGE)


def _have_reader(path: str) -> bool:
    try:
        return cv2.haveImageReader(path)
    except cv2.error:
        return False


def _remote_head_readable(uri: str) -> bool:
    """OpenCV recognizes formats by the first bytes of a file: give it just those."""
    head = storage.read_bytes(uri, limit=HEAD_BYTES)
    if not head:
        raise InputError(uri, "file is empty (0 bytes)")
    with tempfile.NamedTemporaryFile(suffix=Path(uri).suffix) as f:
        f.write(head)
        f.flush()
        return _have_reader(f.name)


ALPHA_FORMATS = (".png", ".webp", ".tif", ".tiff")


def _decode(data: np.ndarray, flags: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(data, flags)
    except cv2.error:
        return None


def read_image(uri: str) -> Image:
    """Read a local or remote (object storage) image; remote bytes are decoded in memory."""
    if storage.is_remote(uri):
        data = np.frombuffer(storage.read_bytes(uri), dtype=np.uint8)
    else:
        path = Path(storage.local_path(uri))
        _check_file(uri, path)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise InputError(uri, f"cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(uri, "file is empty (0 bytes)")
    # OpenCV applies the EXIF orientation unless asked for the image "unchanged", which is
    # only needed to keep an alpha channel (formats without alpha are decoded once).
    image = _decode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if image is not None and Path(uri).suffix.lower() in ALPHA_FORMATS:
        unchanged = _decode(data, cv2.IMREAD_UNCHANGED)
        if unchanged is not None and unchanged.ndim == 3 and unchanged.shape[2] == 4:
            image = unchanged
    if image is None:
        raise InputError(uri, NOT_AN_IMAGE)
    image = _to_uint8(uri, image)
    if image.ndim == 2:
        return Image(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.shape[2] == 4:
        return Image(np.ascontiguousarray(image[:, :, :3]), np.ascontiguousarray(image[:, :, 3]))
    return Image(image)


def _to_uint8(uri: str, image: np.ndarray) -> np.ndarray:
    """8 bits per sample: 16-bit keeps its high byte, floating point (HDR TIFF/EXR, 0..1)
    is clipped and scaled, other integer types are scaled from their full range."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype.kind == "f":
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(finite, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if image.dtype.kind in "iu":
        info = np.iinfo(image.dtype)
        scaled = (image.astype(np.float64) - info.min) / (info.max - info.min) * 255 + 0.5
        return scaled.astype(np.uint8)
    raise InputError(uri, f"unsupported image sample type {image.dtype}")


def write_image(image: Image, path: Path) -> None:
    """Encode in the format of `path`'s extension (the caller makes the write atomic)."""
    pixels = image.bgr if image.alpha is None else np.dstack([image.bgr, image.alpha])
    ext = path.suffix.lower()
    if ext == ".jpg" or ext == ".jpeg":
        pixels = image.bgr  # JPEG has no alpha
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    try:
        ok, encoded = cv2.imencode(ext, pixels, params)
    except cv2.error:
        ok = False
    if not ok:
        raise OutputError(f"{path}: cannot encode image as {ext}")
    try:
        path.write_bytes(encoded.tobytes())
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
