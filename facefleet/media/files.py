"""Output files appear only when complete: write to a hidden temporary name, then rename."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".facefleet-tmp-"


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same directory (same filesystem, so the rename is atomic).

    The extension is kept because muxers choose their format from it.
    """
    return path.with_name(f".{path.stem}{TMP_MARK}{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success move it to `path`, on error remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Move a finished temporary file into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
