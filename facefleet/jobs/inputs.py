"""From the command line's inputs and OUTPUT to one (input, output) pair per job."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from facefleet.errors import OutputError
from facefleet.media.probe import is_image

SUFFIX = "_anonymized"
# Video containers facefleet writes H.264 segments into (media/assemble.py MUXERS, less
# .webm, which takes VP8/VP9/AV1 only). An output named after an input in any other
# container (.ts, .avi, .webm, ...) gets DEFAULT_VIDEO_EXT instead.
WRITABLE_VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv")
DEFAULT_VIDEO_EXT = ".mp4"


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def resolve_outputs(
    inputs: list[str], output: str | None, suffix: str = SUFFIX, table: bool = False
) -> list[tuple[str, str]]:
    """Pair every input with its output path.

    No OUTPUT: next to each input, named `<stem><suffix><ext>`. Several inputs, an
    existing directory, or a name ending in `/`: a directory, input names kept. Otherwise
    OUTPUT is the file for the single input. With `table` (a pipeline whose output is a
    table of faces) the extension is .parquet and the default suffix `_faces`. Where
    facefleet names the output (no OUTPUT, or a directory), a video whose container it
    cannot write (.ts, .avi, .webm, ...) gets a .mp4 output; an image keeps its extension.
    """
    if not inputs:
        raise OutputError("no input given")

    def ext(path: Path) -> str:
        if table:
            return ".parquet"
        if is_image(str(path)) or path.suffix.lower() in WRITABLE_VIDEO_EXTS:
            return path.suffix
        return DEFAULT_VIDEO_EXT

    if output is None:
        tail = "_faces" if table else suffix
        pairs = [(i, str(Path(i).with_name(f"{Path(i).stem}{tail}{ext(Path(i))}"))) for i in inputs]
    else:
        out = Path(output)
        as_dir = len(inputs) > 1 or out.is_dir() or output.endswith(("/", os.sep))
        if as_dir:
            if out.exists() and not out.is_dir():
                raise OutputError(f"{output}: several inputs need OUTPUT to be a directory, and this is a file")
            pairs = [(i, str(out / (Path(i).stem + ext(Path(i))))) for i in inputs]
        elif table:
            if out.suffix != ".parquet":
                raise OutputError(f"{output}: the analyze pipeline writes a table of faces: name the output NAME.parquet")
            pairs = [(inputs[0], output)]
        else:
            if is_image(inputs[0]) != is_image(output):
                kind = "an image" if is_image(inputs[0]) else "a video"
                raise OutputError(f"{output}: {inputs[0]} is {kind}; give OUTPUT a matching extension")
            pairs = [(inputs[0], output)]
    seen: dict[str, str] = {}
    for source, target in pairs:
        key = os.path.abspath(target)
        if key in seen:
            raise OutputError(f"{seen[key]} and {source} would both be written to {target}; use separate runs or rename one")
        if os.path.abspath(source) == key:
            raise OutputError(f"{source}: output would overwrite the input; choose another OUTPUT")
        seen[key] = source
    return pairs
