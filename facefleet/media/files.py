"""Output files appear only when complete: write to a hidden temporary name, then rename.

A full disk while a file is written is an `OutputError` that names the file, and the
temporary file goes. For the reliability tests, FACEFLEET_FAULT_ENOSPC (read at each
call, so Ray workers started with it set see it too) injects that fault: a comma-separated
list of fnmatch patterns; a file whose full path matches one fails with ENOSPC once its
content is written, before it is moved into place.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from facefleet.errors import OutputError

TMP_MARK = ".facefleet-tmp-"
FAULT_ENOSPC_ENV = "FACEFLEET_FAULT_ENOSPC"  # test-only fault injection (see the module's doc)
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
    """Rename `tmp` over `path`; across filesystems (two bind mounts of one disk share a
    device number, yet refuse renames between them), copy it to a temporary sibling first."""
    try:
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            sibling = temporary_sibling(path)
            try:
                shutil.copyfile(tmp, sibling)
                with open(sibling, "rb") as copied:
                    os.fsync(copied.fileno())
                os.replace(sibling, path)
            except BaseException:
                sibling.unlink(missing_ok=True)
                raise
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot move the finished output into place ({exc.strerror or exc})") from None


def _injected_disk_full(path: Path, tmp: Path) -> None:
    patterns = [p.strip() for p in os.environ.get(FAULT_ENOSPC_ENV, "").split(",") if p.strip()]
    if any(fnmatch.fnmatchcase(str(path), pattern) for pattern in patterns):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)", str(tmp))


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, from Python or from FFmpeg through PyAV (its errors are OSErrors)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_output(path: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success move it to `path`, on error remove it. A full
    disk becomes an OutputError naming `path`. `tmp` (default: a hidden sibling) must be
    on `path`'s filesystem."""
    _make_parent(path)
    tmp = tmp or temporary_sibling(path)
    try:
        yield tmp
        _injected_disk_full(path, tmp)
        _replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise OutputError(f"{path}: the disk is full ({exc.strerror or exc}); free some space and run it again") from None
        raise


def publish(tmp: Path, path: Path) -> None:
    """Move a finished temporary file into place."""
    _make_parent(path)
    _replace(tmp, path)


def same_filesystem(a: Path, b: Path) -> bool:
    """Whether directories `a` and `b` are on one device (the nearest existing ancestor of
    each is compared), where a rename between them is expected to work (bind mounts of one
    disk share a device yet refuse it: `_replace` then copies)."""

    def device(path: Path) -> int | None:
        for candidate in (path, *path.parents):
            try:
                return candidate.stat().st_dev
            except OSError:
                continue
        return None

    first = device(a.absolute())
    return first is not None and first == device(b.absolute())


DEFAULT_ACL_XATTR = "system.posix_acl_default"


def passes_on_ownership(directory: Path) -> bool:
    """Whether a file made in `directory` gets something from it beyond the creating
    process's user, group and umask: the directory's group (setgid bit) or its default ACL.
    A file made elsewhere and renamed in would not have it. A directory that cannot be
    read is taken to pass something on (the careful answer)."""
    for candidate in (directory, *directory.parents):  # the nearest existing one
        try:
            mode = candidate.stat().st_mode
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if mode & stat.S_ISGID:
            return True
        try:
            return DEFAULT_ACL_XATTR in os.listxattr(candidate)
        except OSError as exc:
            return exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP)  # no xattrs here: no ACLs
    return False


def durable_checksum(path: Path) -> str:
    """Flush the file to disk and return its sha256 (hex): what a finished chunk records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
