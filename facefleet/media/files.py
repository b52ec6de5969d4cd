"""Output files appear only when complete: write to a hidden temporary name, then rename."""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from facefleet.errors import OutputError

TMP_MARK = ".facefleet-tmp-"
MAX_STEM_BYTES = 180  # keeps the temporary name under the usual 255-byte limit


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same directory (same filesystem, so the rename is atomic).

    The extension is kept because muxers choose their format from it.
    """
    stem = path.stem.encode("utf-8", "surrogateescape")[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    return path.with_name(f".{stem}{TMP_MARK}{secrets.token_hex(4)}{path.suffix}")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create its directory ({exc.strerror or exc})") from None


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot move the finished output into place ({exc.strerror or exc})") from None


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success move it to `path`, on error remove it."""
    _make_parent(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Move a finished temporary file into place."""
    _make_parent(path)
    _replace(tmp, path)


def durable_checksum(path: Path) -> str:
    """Flush the file to disk and return its sha256 (hex): what a finished chunk records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
