"""What `facefleet submit` sends: a checked job request, written to the controller's inbox.

Everything that can be refused is refused here, before anything is queued: an unknown
pipeline step or option, an input that does not exist or a glob that matches nothing, an
unreachable object store, an output outside the allowed output root.
"""

from __future__ import annotations

import dataclasses
import os
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from facefleet.errors import FacefleetError, InputError, OutputError

# The media and storage modules (PyAV, NumPy, pyarrow) are imported where they are used:
# every reader command (status, list, cancel, retry) imports this module for
# default_state_dir, and those imports were most of `facefleet status`'s time (0.16 of 0.27 s).

STATE_ENV = "FACEFLEET_STATE"
OUTPUT_ROOT_ENV = "FACEFLEET_OUTPUT_ROOT"

# submit's pipeline options (TOML keys) and where each goes in a job's settings (the
# fields of its PipelineSpec and EncodeSettings, and its chunk size); an option not given
# takes the field's default, which is `facefleet run`'s
OPTIONS: dict[str, tuple[str, ...]] = {
    "pipeline": ("pipeline", "steps"),
    "replacewith": ("pipeline", "anonymize", "replacewith"),
    "mask_scale": ("pipeline", "anonymize", "mask_scale"),
    "thresh": ("pipeline", "threshold"),
    "boxes": ("pipeline", "anonymize", "boxes"),
    "face_detector_model": ("pipeline", "detector"),
    "detect_size": ("pipeline", "detect_size"),
    "track": ("pipeline", "track"),
    "chunk_frames": ("chunk_frames",),
    "output_video_quality": ("encode", "quality"),
    "output_video_preset": ("encode", "preset"),
}
SUBMIT_KEYS = {"inputs", "output", "priority", "name", *OPTIONS}


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".local" / "state" / "facefleet")


@dataclass
class JobRequest:
    """A job as submitted: inputs paired with outputs, and its settings (dump_settings)."""

    job_id: str
    name: str
    priority: int
    inputs: list[tuple[str, str]]
    settings: dict = field(default_factory=dict)
    # where its segments go: "state" (the state dir's work/) or "beside-output" (a hidden
    # directory beside each local output, as `facefleet run` keeps them; see Controller)
    work: str = "state"

    def payload(self) -> dict:
        return {
            "job_id": self.job_id, "name": self.name, "priority": self.priority, "inputs": self.inputs,
            "settings": self.settings, "work": self.work,
        }


def read_job_file(path: str) -> dict:
    """A job.toml: the keys of submit's options (inputs = [...], output = "...", ...)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise InputError(path, f"cannot read the job file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"not a valid TOML job file ({exc})") from None
    unknown = sorted(set(data) - SUBMIT_KEYS)
    if unknown:
        raise FacefleetError(f"{path}: unknown option {unknown[0]!r}; known: {', '.join(sorted(SUBMIT_KEYS))}")
    return data


def check_output_dir(output: str, root: str | None) -> str:
    """OUTDIR as an absolute path (or a remote URI), refused when it climbs out (`..`) or,
    with an output root configured, is absolute, remote, or leads outside the root.

    With a root, OUTDIR is taken relative to it and resolved, symbolic links included: a
    link inside the root to a directory outside it is refused, not followed out. The
    resolved path is what the job writes to, so a link changed after submission does not
    move its outputs. Remote URIs with credentials in them are refused (media.storage).
    """
    from facefleet.media.storage import has_credentials, is_remote, parse

    if is_remote(output):
        if has_credentials(output):
            try:
                parse(output)  # raises the InputError that shows the URI without them
            except InputError as exc:
                raise OutputError(str(exc)) from None
        if root:
            raise OutputError(f"{output}: outputs must go under the output root {root}")
        return output
    parts = PurePosixPath(output.replace(os.sep, "/")).parts
    if ".." in parts:
        raise OutputError(f"{output}: '..' is not allowed in an output path")
    if not root:
        return str(Path(output).resolve())
    if os.path.isabs(output):
        raise OutputError(f"{output}: absolute output paths are not allowed (the output root is {root})")
    base = Path(root).expanduser().resolve()
    target = (base / output).resolve()
    if not target.is_relative_to(base):
        raise OutputError(
            f"{output}: leads to {target}, outside the output root {root} (through a symbolic link); refused"
        )
    return str(target)


def build_request(
    inputs: list[str], output: str, options: dict, priority: int = 0, name: str | None = None, output_root: str | None = None
) -> JobRequest:
    """Check everything a job needs and pair each input with its output in OUTDIR."""
    from facefleet.jobs.inputs import new_job_id
    from facefleet.media.probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
    from facefleet.media.storage import check_output_dir as check_reachable_output
    from facefleet.media.storage import expand_inputs, is_remote, join

    media = frozenset(VIDEO_EXTENSIONS) | frozenset(IMAGE_EXTENSIONS)
    # refuses an unknown option or step, or a bad value, now, not in the controller
    pipeline, encode, chunk_frames = load_settings(options_settings(options))
    if not inputs:
        raise InputError("(none)", "give at least one input")
    root = output_root if output_root is not None else os.environ.get(OUTPUT_ROOT_ENV)
    outdir = check_output_dir(output, root)
    check_reachable_output(outdir)
    simulated = [i for i in inputs if i.startswith("simulated://")]
    found = expand_inputs([i for i in inputs if not i.startswith("simulated://")], media) if len(simulated) < len(inputs) else []
    pairs: list[tuple[str, str]] = []
    names: set[str] = set()
    for uri in found + simulated:
        leaf = uri.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "input"
        if pipeline.writes_table and not pipeline.writes_video:
            leaf = str(Path(leaf).with_suffix(".parquet"))
        if leaf in names:
            raise OutputError(f"two inputs are named {leaf}: they would both be written to {join(outdir, leaf)}")
        names.add(leaf)
        pairs.append((uri if is_remote(uri) or uri.startswith("simulated://") else str(Path(uri).resolve()), join(outdir, leaf)))
    job_id = new_job_id()
    settings = dump_settings(pipeline, encode, chunk_frames)
    return JobRequest(job_id, name or Path(pairs[0][0]).stem or job_id, int(priority), pairs, settings)


# ---- a job's settings, as the store keeps them --------------------------------------
#
# {"pipeline": {every PipelineSpec field}, "encode": {every EncodeSettings field},
#  "chunk_frames": N}: the same for `facefleet submit` and `facefleet run --state-dir`,
# written and read field by field (dataclasses.fields), so that a field added to either
# dataclass is kept without a change here. A job stored before this kept only submit's
# options ({"options": {...}}): job_settings reads those too.


def options_settings(options: dict, job: str | None = None) -> dict:
    """Submit's options (OPTIONS; None: not given) as settings for load_settings."""
    from facefleet.pipeline.spec import parse_steps

    where = f"job {job}: " if job else ""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise FacefleetError(f"{where}unknown option {unknown[0]!r}")
    settings: dict = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "pipeline":
            try:
                value = list(parse_steps(str(value)))
            except ValueError as exc:
                raise FacefleetError(f"{where}{exc}") from None
        *path, leaf = OPTIONS[key]
        node = settings
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return settings


def dump_settings(pipeline, encode, chunk_frames: int) -> dict:
    """A job's settings as the store keeps them (JSON types): every field of its
    PipelineSpec and EncodeSettings, local paths in them absolute. A URI with credentials
    in it is refused (FacefleetError): the store would keep them."""
    pipeline = dataclasses.replace(
        pipeline,
        reference_face=absolute_path(pipeline.reference_face, resolve=True),
        models_dir=absolute_path(pipeline.models_dir, resolve=True),
        trusted=tuple((name, absolute_path(path)) for name, path in pipeline.trusted),  # the file the user named
    )
    settings = {"pipeline": plain(pipeline), "encode": plain(encode), "chunk_frames": int(chunk_frames)}
    for text in _strings(settings):
        refuse_credentials(text)
    return settings


def load_settings(settings: dict, job: str | None = None):
    """(PipelineSpec, EncodeSettings, chunk frames) from settings (dump_settings; a field
    left out takes its default), every value checked. Raises FacefleetError, one line that
    names `job` when given."""
    from facefleet.media.encode import PRESETS, EncodeSettings
    from facefleet.pipeline.spec import PipelineSpec

    try:
        if not isinstance(settings, dict):
            raise ValueError(f"expected a table of settings, got {type(settings).__name__}")
        unknown = sorted(set(settings) - {"pipeline", "encode", "chunk_frames"})
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}")
        pipeline = from_plain(PipelineSpec, settings.get("pipeline", {}), "pipeline")
        encode = from_plain(EncodeSettings, settings.get("encode", {}), "encode")
        chunk_frames = _typed(int, settings.get("chunk_frames", 0), "chunk_frames")
        if encode.preset not in PRESETS:
            raise ValueError(f"output_video_preset must be one of {', '.join(PRESETS)}")
        encode.crf  # validates the quality range
        if chunk_frames < 0:
            raise ValueError("chunk_frames must be 0 (automatic) or more")
    except ValueError as exc:
        raise FacefleetError(f"job {job}: its stored settings cannot be used: {exc}" if job else str(exc)) from None
    return pipeline, encode, chunk_frames


def job_settings(job_id: str, spec: dict):
    """A stored job's (PipelineSpec, EncodeSettings, chunk frames), from its spec in the
    store (a JobRequest's payload); raises FacefleetError naming the job."""
    if "settings" in spec:
        return load_settings(spec["settings"], job_id)
    if isinstance(spec.get("options"), dict):  # stored before whole settings were
        return load_settings(options_settings(spec["options"], job_id), job_id)
    raise FacefleetError(f"job {job_id}: no settings are stored with it")


def refuse_credentials(uri: str) -> None:
    """Raises InputError (the URI shown without them) when `uri` carries credentials."""
    from facefleet.media.storage import has_credentials, parse

    if has_credentials(uri):
        parse(uri)  # raises the InputError that shows the URI without them


def absolute_path(path: str | None, resolve: bool = False) -> str | None:
    """A local path made absolute, as given (with `resolve`: `~` expanded, as ModelStore
    does, and symbolic links resolved); a URI as it is."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve()) if resolve else os.path.abspath(path)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def plain(value):
    """A dataclass value as JSON types: a dataclass as a dict of its fields (those its
    constructor takes), a tuple as a list. Raises TypeError for any other kind of value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a {type(value).__name__} cannot be stored as a setting")


def from_plain(cls, data, where: str):
    """An instance of the dataclass `cls` from plain(): every value checked against its
    field's type, tuples and nested dataclasses restored, a field left out given its
    default. Raises ValueError (naming the field by `where`) for an unknown field or a
    value of the wrong type, TypeError for a field type this cannot restore."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a table of {cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (written by another version of facefleet?)")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _typed(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _typed(kind, value, where: str):
    """`value` (JSON types) as a value of the type `kind`, or ValueError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{where}: cannot restore a value of {kind}")
        return _typed(options[0], value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_typed(a, item, f"{where}[{i}]") for i, (a, item) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(kind):
        return from_plain(kind, value, where)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int, bool):
        if type(value) is not kind:
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: cannot restore a value of {kind}")


def wait_for_answer(store_dir: Path, request_id: str, timeout: float) -> tuple[bool, str, str | None] | None:
    """The controller's answer to a request, or None if none came within `timeout`."""
    from facefleet.jobs.store import JobStore, StoreError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with JobStore(store_dir, readonly=True) as store:
                answer = store.answer_of(request_id)
        except StoreError:
            answer = None  # no store yet: the controller has not started
        if answer is not None:
            return answer
        time.sleep(0.1)
    return None
