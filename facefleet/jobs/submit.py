"""What `facefleet submit` sends: a checked job request, written to the controller's inbox.

Everything that can be refused is refused here, before anything is queued: an unknown
pipeline step or option, an input that does not exist or a glob that matches nothing, an
unreachable object store, an output outside the allowed output root.
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from facefleet.errors import FacefleetError, InputError, OutputError

# The media and storage modules (PyAV, NumPy, pyarrow) are imported where they are used:
# every reader command (status, list, cancel, retry) imports this module for
# default_state_dir, and those imports were most of `facefleet status`'s time (0.16 of 0.27 s).

STATE_ENV = "FACEFLEET_STATE"
OUTPUT_ROOT_ENV = "FACEFLEET_OUTPUT_ROOT"

# submit's pipeline options (TOML keys), with their defaults: those of `facefleet run`
OPTIONS: dict[str, object] = {
    "pipeline": "anonymize",
    "replacewith": "blur",
    "mask_scale": 1.3,
    "thresh": 0.5,
    "boxes": False,
    "face_detector_model": "centerface",
    "detect_size": 640,
    "track": True,
    "chunk_frames": 0,
    "output_video_quality": 65,
    "output_video_preset": "veryfast",
}
SUBMIT_KEYS = {"inputs", "output", "priority", "name", *OPTIONS}


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".local" / "state" / "facefleet")


@dataclass
class JobRequest:
    """A job as submitted: inputs paired with outputs, and its options."""

    job_id: str
    name: str
    priority: int
    inputs: list[tuple[str, str]]
    options: dict = field(default_factory=dict)

    def payload(self) -> dict:
        return {"job_id": self.job_id, "name": self.name, "priority": self.priority, "inputs": self.inputs, "options": self.options}


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
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise FacefleetError(f"unknown option {unknown[0]!r}")
    merged = {**OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    pipeline_spec(merged)  # refuses an unknown step or a bad value now, not in the controller
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
        if merged["pipeline"] == "analyze":
            leaf = str(Path(leaf).with_suffix(".parquet"))
        if leaf in names:
            raise OutputError(f"two inputs are named {leaf}: they would both be written to {join(outdir, leaf)}")
        names.add(leaf)
        pairs.append((uri if is_remote(uri) or uri.startswith("simulated://") else str(Path(uri).resolve()), join(outdir, leaf)))
    job_id = new_job_id()
    return JobRequest(job_id, name or Path(pairs[0][0]).stem or job_id, int(priority), pairs, merged)


def pipeline_spec(options: dict):
    """(PipelineSpec, EncodeSettings) from submit's options (raises FacefleetError)."""
    from facefleet.media.encode import PRESETS, EncodeSettings
    from facefleet.pipeline.anonymize import AnonymizeOptions
    from facefleet.pipeline.spec import PipelineSpec, parse_steps

    if options["output_video_preset"] not in PRESETS:
        raise FacefleetError(f"output_video_preset must be one of {', '.join(PRESETS)}")
    try:
        spec = PipelineSpec(
            steps=parse_steps(str(options["pipeline"])),
            detector=str(options["face_detector_model"]),
            detect_size=int(options["detect_size"]),
            threshold=float(options["thresh"]),
            anonymize=AnonymizeOptions(
                replacewith=str(options["replacewith"]), mask_scale=float(options["mask_scale"]), boxes=bool(options["boxes"])
            ),
            track=bool(options["track"]),
        )
        encode = EncodeSettings(quality=int(options["output_video_quality"]), preset=str(options["output_video_preset"]))
        encode.crf  # validates the quality range
    except (ValueError, TypeError) as exc:
        raise FacefleetError(str(exc)) from None
    if int(options["chunk_frames"]) < 0:
        raise FacefleetError("chunk_frames must be 0 (automatic) or more")
    return spec, encode


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
