"""Errors a user can cause. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class FacefleetError(Exception):
    """Base of every error caused by input, configuration or environment.

    The message says what went wrong and, where it can, what to do about it.
    """


def shown(uri: str) -> str:
    """A path or URI as one printable line: control characters (a newline or tab in a file
    name) written as escapes, like Python's repr does; anything else, non-ASCII included,
    as it is. Messages name inputs this way so that an error stays one line."""
    if uri.isprintable():
        return uri
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in uri)


class InputError(FacefleetError):
    """An input cannot be read as media (missing, not media, truncated, no video...)."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{shown(uri)}: {reason}")
        self.uri = uri
        self.reason = reason

    def __reduce__(self):  # pickled by Ray from worker to driver: rebuild from both fields
        return (type(self), (self.uri, self.reason))


class OutputError(FacefleetError):
    """An output path cannot be written as asked."""


class ModelError(FacefleetError):
    """A model file is missing, corrupt or does not match its manifest."""


class ClusterError(FacefleetError):
    """Ray could not be started or joined, or a worker died for good."""


def one_line(exc: BaseException) -> str:
    """An unexpected exception as one short line: its type and its message's first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
