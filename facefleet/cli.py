"""The `facefleet` command: parses options and calls the package. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from facefleet import __version__
from facefleet.errors import FacefleetError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Distributed face processing for video on Ray.")
err = Console(stderr=True)

WORKERS_HELP = "Workers (default: every GPU slot, see --gpu-share; else one per node)."
CHUNKS_HELP = (
    "Chunks each worker processes at once (default: one per 2 of its cores on GPU workers, one per core "
    "with enhance, 2 to 8; 2 on CPU workers)."
)
GPU_SHARE_HELP = "GPU fraction per worker (default 0.5: two workers per GPU); 0.25 runs 4 workers per GPU."


@app.callback()
def _root() -> None:
    """facefleet: anonymize faces in videos and images, chunked over Ray workers."""


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def run(
    inputs: list[str] = typer.Argument(None, metavar="INPUT...", help="Video or image files."),
    output: Optional[str] = typer.Option(
        None,
        "-o",
        "--output",
        help="Output file (one input) or directory (several). Default: INPUT_anonymized.EXT (INPUT_faces.parquet for analyze).",
    ),
    pipeline: str = typer.Option(
        "anonymize", "--pipeline", help="Steps, comma-separated: anonymize, enhance, debug, analyze (e.g. enhance,debug)."
    ),
    replacewith: str = typer.Option("blur", "--replacewith", help="blur | solid | mosaic | none."),
    mask_scale: float = typer.Option(1.3, "--mask-scale", help="Grow each face box by this factor before masking."),
    thresh: float = typer.Option(0.5, "--thresh", help="Detection score threshold."),
    boxes: bool = typer.Option(False, "--boxes", help="Mask whole boxes instead of ellipses."),
    mosaicsize: int = typer.Option(20, "--mosaicsize", help="Mosaic block size in pixels."),
    detector: str = typer.Option("centerface", "--face-detector-model", help="A detector from `facefleet models list`."),
    detect_size: int = typer.Option(640, "--detect-size", help="Longer side of the detector input, pixels."),
    angles: str = typer.Option("0", "--face-detector-angles", help="Also detect on frames turned by these angles, e.g. 0,90,270."),
    track: bool = typer.Option(True, "--track/--no-track", help="Link faces over frames and fill one-frame detection gaps."),
    landmarker: Optional[str] = typer.Option(None, "--face-landmarker-model", help="facemesh_468 or 2dfan4: dense landmarks."),
    recognizer: Optional[str] = typer.Option(None, "--face-recognizer-model", help="arcface_w600k_r50: embeddings in analyze."),
    enhancer: str = typer.Option("gfpgan_1.4", "--face-enhancer-model", help="Enhancer of the enhance step."),
    blend: int = typer.Option(80, "--face-enhancer-blend", help="Percent of the enhanced face over the original."),
    weight: Optional[float] = typer.Option(None, "--face-enhancer-weight", help="CodeFormer's fidelity weight, 0-1."),
    mask_blur: float = typer.Option(0.3, "--face-mask-blur", help="Enhancer mask blur, fraction of the face crop."),
    mask_padding: str = typer.Option("0,0,0,0", "--face-mask-padding", help="Enhancer mask padding, percent: top,right,bottom,left."),
    reference: Optional[str] = typer.Option(None, "--reference-face", help="Image of the one face to act on; others are left alone."),
    reference_distance: float = typer.Option(0.3, "--reference-face-distance", help="Faces closer than this to the reference count as it."),
    reference_position: int = typer.Option(0, "--reference-face-position", help="Which face of the reference image, largest first."),
    models_dir: Optional[str] = typer.Option(None, "--models-dir", help="Look for model files here first."),
    trust_model: list[str] = typer.Option([], "--trust-model", help="NAME=PATH: load PATH as model NAME without a checksum."),
    chunk_frames: int = typer.Option(
        0, "--chunk-frames", help="Frames per chunk; 0 sizes chunks to the workers (30 to 300 frames)."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    chunks_per_worker: Optional[int] = typer.Option(None, "--chunks-per-worker", help=CHUNKS_HELP, show_default=False),
    gpu_share: Optional[float] = typer.Option(None, "--gpu-share", help=GPU_SHARE_HELP, show_default=False),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster instead of starting one."),
    sample_interval: float = typer.Option(0.5, "--sample-interval", help="NVML reporter sampling interval, seconds."),
    gpu_backend: str = typer.Option("auto", "--gpu-backend", help="GPU metrics: auto | real (NVML) | simulated."),
    gpu_monitoring: bool = typer.Option(
        True,
        "--monitor/--no-monitor",
        help="--no-monitor: start no NVML reporters and collect no GPU samples, for measuring monitoring's overhead. "
        "Chunks are then not steered away from full or throttling GPUs, the "
        "autoscaler gets no GPU load, and `facefleet monitor` and reports show no GPU samples for the run.",
    ),
    autoscale: Optional[bool] = typer.Option(
        None, "--autoscale/--no-autoscale", help="Ask the Ray autoscaler for GPUs (default: on with --address)."
    ),
    target_backlog: float = typer.Option(120.0, "--target-backlog", help="Scale up when the backlog would take longer (s)."),
    idle_timeout: Optional[float] = typer.Option(
        None, "--idle-timeout", help="Retire workers idle this long, seconds (default: 60 when autoscaling)."
    ),
    stall_timeout: Optional[float] = typer.Option(
        None, "--stall-timeout", help="Seconds a chunk may go without progress before its worker is restarted and the chunk retried (default 300, or FACEFLEET_STALL_TIMEOUT_S; 0: never).", show_default=False
    ),
    providers: str = typer.Option(
        "auto", "--execution-providers", help="auto | cuda | tensorrt | cpu. tensorrt runs CUDA when onnxruntime has no TensorRT."
    ),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16: models computed in half precision (GPU)."),
    batch_size: int = typer.Option(0, "--batch-size", help="Frames per detector call (0: 16 on GPU, 1 on CPU)."),
    quality: int = typer.Option(65, "--output-video-quality", help="0-100; 65 is x264 CRF 18, 100 is lossless."),
    preset: str = typer.Option("veryfast", "--output-video-preset", help="x264 preset."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    state_dir: Optional[str] = typer.Option(
        None, "--state-dir", help="The job store that keeps the run, with all its settings, so that a run that dies is "
        "finished by --resume (default: a new store per run under $FACEFLEET_STATE or ~/.local/state/facefleet, in runs/).",
        show_default=False,
    ),
    no_state: bool = typer.Option(
        False, "--no-state", help="Keep nothing: no job store, no job report data; a run that dies starts over."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Finish the unfinished runs kept in --state-dir (without it: every unfinished run in the "
        "default store's runs/); no inputs."
    ),
) -> None:
    """Anonymize, enhance, debug or analyze faces in videos and images on Ray."""
    from facefleet.jobs.inputs import new_job_id, resolve_outputs
    from facefleet.jobs.session import run_specs
    from facefleet.jobs.spec import JobSpec
    from facefleet.media.encode import PRESETS, EncodeSettings
    from facefleet.pipeline.anonymize import AnonymizeOptions
    from facefleet.pipeline.spec import PipelineSpec, parse_steps

    if sample_interval <= 0:
        raise FacefleetError("--sample-interval must be positive")
    if workers is not None and workers < 1:
        raise FacefleetError("--workers must be at least 1")
    pool = _pool_options(  # the same for a new run and a resumed one
        workers, chunks_per_worker, gpu_share, gpu_backend, sample_interval, stall_timeout,
        monitor=gpu_monitoring, autoscale=autoscale, target_backlog_s=target_backlog, idle_timeout_s=idle_timeout,
    )
    if resume:
        if inputs:
            raise FacefleetError("--resume finishes the runs kept in --state-dir: give no inputs")
        if not _resume_runs(state_dir, address, pool, progress=not quiet):
            raise typer.Exit(1)
        return
    if not inputs:
        raise FacefleetError("give at least one input (or --resume)")
    if preset not in PRESETS:
        raise FacefleetError(f"--output-video-preset must be one of {', '.join(PRESETS)}")
    if chunk_frames < 0:
        raise FacefleetError("--chunk-frames must be 0 (automatic) or more")
    try:
        spec = PipelineSpec(
            steps=parse_steps(pipeline),
            detector=detector,
            detect_size=detect_size,
            threshold=thresh,
            detector_angles=_numbers("--face-detector-angles", angles, int),
            anonymize=AnonymizeOptions(replacewith=replacewith, mask_scale=mask_scale, boxes=boxes, mosaic_size=mosaicsize),
            batch_size=batch_size,
            provider=providers,
            precision=precision,
            track=track,
            landmarker=landmarker,
            recognizer=recognizer,
            enhancer=enhancer,
            enhancer_blend=blend,
            enhancer_weight=weight,
            mask_blur=mask_blur,
            mask_padding=_numbers("--face-mask-padding", mask_padding, float, count=4),
            reference_face=str(Path(reference).resolve()) if reference else None,
            reference_distance=reference_distance,
            reference_position=reference_position,
            models_dir=models_dir,
            trusted=tuple(_pair("--trust-model", item) for item in trust_model),
        )
        encode = EncodeSettings(quality=quality, preset=preset)
        encode.crf  # validates the quality range
    except ValueError as exc:
        raise FacefleetError(str(exc)) from None
    if reference and not Path(reference).is_file():
        raise FacefleetError(f"--reference-face {reference}: file not found")
    table_only = spec.writes_table and not spec.writes_video
    pairs = resolve_outputs(inputs, output, table=table_only)
    specs = [JobSpec(new_job_id(), i, o, pipeline=spec, encode=encode, chunk_frames=chunk_frames) for i, o in pairs]
    if no_state:
        if state_dir is not None:
            raise FacefleetError("--no-state and --state-dir: give one")
        outcomes = run_specs(specs, address, pool, err, progress=not quiet)
    else:
        from facefleet.jobs.session import run_durable

        run_id = new_job_id()
        state = Path(state_dir) if state_dir else _run_store(run_id)
        try:
            outcomes = run_durable(specs, state, address, pool, err, progress=not quiet, job_id=run_id)
        except KeyboardInterrupt:
            if (state / "inbox").is_dir():  # the run was stored
                again = "facefleet run --resume" + (f" --state-dir {state}" if state_dir else "")
                err.print(f"interrupted: the run is kept in {state}; `{again}` finishes it", markup=False, highlight=False, soft_wrap=True)
            raise
        if any(o.job_id.startswith(f"{run_id}-") for o in outcomes):  # else every input was refused: nothing stored
            err.print(
                f"run kept as job {run_id} in {state} (report: facefleet report {run_id} --state-dir {state} -o report.html)",
                markup=False, highlight=False, soft_wrap=True,
            )
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


RUNS_KEPT_S = 30 * 86400.0  # finished run stores older than this go when a new run starts


def _run_store(run_id: str) -> Path:
    """A new run's own job store: runs/<run id> in the default state dir, so that runs at
    once never wait on each other's store (nor on a `facefleet serve` there). Made when
    the run is stored (session.run_durable), after its inputs were checked. Finished run
    stores older than RUNS_KEPT_S are removed first."""
    from facefleet.jobs.session import prune_runs
    from facefleet.jobs.submit import default_state_dir

    runs = default_state_dir() / "runs"
    prune_runs(runs, RUNS_KEPT_S)
    return runs / run_id


def _resume_runs(state_dir: Optional[str], address, options, progress: bool) -> bool:
    """`run --resume`: the store given, or every unfinished run store; True when all ended
    done. A store another process is running is left to it; an error in one store does not
    stop the others."""
    from facefleet.jobs.controller import StoreBusy
    from facefleet.jobs.session import run_durable, unfinished_runs
    from facefleet.jobs.submit import default_state_dir

    stores = [Path(state_dir)] if state_dir else unfinished_runs(default_state_dir() / "runs")
    if not stores:
        err.print(f"no unfinished run in {default_state_dir() / 'runs'}", markup=False, highlight=False, soft_wrap=True)
        return True
    ok = True
    for state in stores:
        err.print(f"resuming the run kept in {state}", markup=False, highlight=False, soft_wrap=True)
        try:
            outcomes = run_durable([], state, address, options, err, resume=True, progress=progress)
        except StoreBusy as exc:
            err.print(f"skipped: {exc}", markup=False, highlight=False, soft_wrap=True)
            ok = ok and state_dir is None  # the one store asked for was not finished
            continue
        except FacefleetError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            ok = False
            continue
        ok = ok and all(o.ok for o in outcomes)
    return ok


def _numbers(option: str, text: str, kind, count: int | None = None) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers; got {text!r}") from None
    if count is not None and len(values) != count:
        raise ValueError(f"{option} takes {count} comma-separated numbers; got {text!r}")
    return values


def _pair(option: str, text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"{option} takes NAME=PATH; got {text!r}")
    return name, str(Path(path).expanduser().resolve())


models_app = typer.Typer(
    no_args_is_help=True,
    help="Model files: list, verify, import (files you downloaded), fetch (only when you ask).")
app.add_typer(models_app, name="models")
MODELS_DIR_HELP = "Models directory (default: $FACEFLEET_MODELS, else ~/.cache/facefleet/models)."


@models_app.command("list")
def models_list(
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=MODELS_DIR_HELP),
) -> None:
    """Every model facefleet knows: kind, whether its file is here, license, size."""
    from rich.table import Table

    from facefleet.models.store import ModelStore

    store = ModelStore(models_dir)
    table = Table(title=f"models (import and fetch write to {store.models_dir})")
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("status")
    table.add_column("license")
    table.add_column("size", justify="right", no_wrap=True)
    for row in store.list_models():
        state = ("shipped" if row.path.parent == store.shipped_dir else "present") if row.path else "missing"
        size = f"{row.size / 1e6:.1f} MB" if row.size is not None else "-"
        terms = row.spec.license + ("" if row.spec.commercial_use else " *")
        table.add_row(row.spec.name, row.spec.kind, state, terms, size)
    out = Console()
    out.print(table)
    out.print("* not for commercial use. Get a missing model with `facefleet models fetch NAME` "
              "or `facefleet models import PATH`.", highlight=False)


@models_app.command("verify")
def models_verify(
    names: Optional[list[str]] = typer.Argument(None, metavar="[NAME]...", help="Models to check (default: all present)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=MODELS_DIR_HELP),
) -> None:
    """Check the sha256 of model files against the manifest or the recorded import."""
    from facefleet.models.store import ModelStore

    checked_by = {"manifest": "the manifest", "lock": "the sha256 recorded at import"}
    results = ModelStore(models_dir).verify(names)
    for r in results:
        if r.status == "ok":
            typer.echo(f"ok       {r.name}  {r.path}  (matches {checked_by.get(r.verified_by or '', r.verified_by)})")
        elif r.status == "bad":
            typer.echo(f"BAD      {r.name}: {r.message}")
        elif names:
            typer.echo(f"missing  {r.name}: {r.message}")
    missing = [r.name for r in results if r.status == "missing"]
    if missing and not names:
        typer.echo(f"not here ({len(missing)}): {', '.join(missing)}")
    if any(r.status == "bad" for r in results) or (names and missing):
        raise typer.Exit(1)


@models_app.command("import")
def models_import(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Model files, or directories of them."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=MODELS_DIR_HELP),
) -> None:
    """Copy model files you downloaded (e.g. FaceFusion's .assets/models) in, checking them."""
    from facefleet.models.store import ModelStore

    results = ModelStore(models_dir).import_files(paths)
    for r in results:
        if r.status == "imported":
            typer.echo(f"imported {r.name}  {r.path}  sha256 {r.sha256}")
        elif r.status == "refused":
            typer.echo(f"REFUSED  {r.source}: {r.message}")
    unknown = [r.source.name for r in results if r.status == "unknown"]
    if unknown:
        typer.echo(f"skipped {len(unknown)} file(s) facefleet does not know: {', '.join(unknown)}")
    if any(r.status == "refused" for r in results) or not any(r.status == "imported" for r in results):
        raise typer.Exit(1)


@models_app.command("fetch")
def models_fetch(
    names: list[str] = typer.Argument(..., metavar="NAME...", help="Models to download."),
    url: Optional[str] = typer.Option(None, "--url", help="Download from this address instead (a mirror); one NAME only."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help=MODELS_DIR_HELP),
) -> None:
    """Download models from their published address and check them (never done at run time)."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from facefleet.models.manifest import get_model, license_notice
    from facefleet.models.store import ModelStore

    if url and len(names) > 1:
        raise FacefleetError("--url takes one model NAME")
    for name in names:
        get_model(name)  # unknown names fail before any download starts
    store = ModelStore(models_dir)
    for name in names:
        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err) as bar:
            task = bar.add_task(name, total=None)
            model = store.fetch(name, url=url, progress=lambda done, total: bar.update(task, completed=done, total=total))
        how = "matches the manifest" if model.verified_by == "manifest" else "recorded in the lock file"
        typer.echo(f"fetched {model.spec.name}  {model.path}  sha256 {model.sha256} ({how})")
        notice = license_notice(model.spec)
        if notice:
            typer.echo(notice)


# ---------------------------------------------------------------- jobs: serve, submit, ...

STATE_HELP = "State dir of the controller (default: $FACEFLEET_STATE or ~/.local/state/facefleet)."


def _state(state_dir: Optional[str]) -> Path:
    from facefleet.jobs.submit import default_state_dir

    return Path(state_dir) if state_dir else default_state_dir()


def _stall(seconds: float | None) -> float | None:
    if seconds is not None and seconds < 0:
        raise FacefleetError("--stall-timeout must be 0 (never) or more seconds")
    return seconds


def _pool_options(workers, chunks_per_worker, gpu_share, gpu_backend, sample_interval, stall_timeout=None, **more):
    """The worker pool's options from the command line (`more`: other PoolOptions fields;
    autoscaling off unless given)."""
    from facefleet.jobs.session import PoolOptions

    if gpu_backend not in ("auto", "real", "simulated"):
        raise FacefleetError("--gpu-backend must be auto, real or simulated")
    return PoolOptions(
        workers=workers, chunks_per_worker=chunks_per_worker, gpu_share=gpu_share, gpu_backend=gpu_backend,
        sample_interval=sample_interval, stall_timeout_s=_stall(stall_timeout), **({"autoscale": False} | more),
    )


@app.command()
def serve(
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster instead of starting one."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics on this port (9480 is the usual one)."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="Address the metrics server binds."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    chunks_per_worker: Optional[int] = typer.Option(None, "--chunks-per-worker", help=CHUNKS_HELP, show_default=False),
    gpu_share: Optional[float] = typer.Option(None, "--gpu-share", help=GPU_SHARE_HELP, show_default=False),
    gpu_backend: str = typer.Option("auto", "--gpu-backend", help="GPU metrics: auto | real | simulated."),
    sample_interval: float = typer.Option(0.5, "--sample-interval", help="NVML sampling interval, seconds."),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour", help="For the cost estimate in job reports."),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop when no job is left (default: run until Ctrl-C)."),
    stall_timeout: Optional[float] = typer.Option(
        None, "--stall-timeout", help="Seconds a chunk may go without progress before its worker is restarted and the chunk retried (default 300, or FACEFLEET_STALL_TIMEOUT_S; 0: never).", show_default=False
    ),
) -> None:
    """The long-running controller: takes submitted jobs and runs them on the cluster."""
    from facefleet.jobs.session import serve_jobs

    options = _pool_options(workers, chunks_per_worker, gpu_share, gpu_backend, sample_interval, stall_timeout)
    try:
        serve_jobs(_state(state_dir), address, options, err, metrics_port, metrics_host, until_idle, price)
    except KeyboardInterrupt:
        err.print("controller stopped; unfinished jobs resume with the next serve or resume")


@app.command()
def resume(
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster instead of starting one."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    chunks_per_worker: Optional[int] = typer.Option(None, "--chunks-per-worker", help=CHUNKS_HELP, show_default=False),
    gpu_backend: str = typer.Option("auto", "--gpu-backend", help="GPU metrics: auto | real | simulated."),
    stall_timeout: Optional[float] = typer.Option(
        None, "--stall-timeout", help="Seconds a chunk may go without progress before its worker is restarted and the chunk retried (default 300, or FACEFLEET_STALL_TIMEOUT_S; 0: never).", show_default=False
    ),
) -> None:
    """After a controller crash: finish every unfinished job (done chunks are kept), then stop."""
    from facefleet.jobs.session import serve_jobs

    options = _pool_options(workers, chunks_per_worker, None, gpu_backend, 0.5, stall_timeout)
    serve_jobs(_state(state_dir), address, options, err, until_idle=True)


@app.command()
def submit(
    inputs: list[str] = typer.Argument(None, metavar="INPUT...", help="Files, directories, globs or s3:// URIs."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output directory (or s3:// prefix)."),
    from_file: Optional[str] = typer.Option(None, "--from", help="A job.toml with the same options."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Steps, comma-separated (default anonymize)."),
    replacewith: Optional[str] = typer.Option(None, "--replacewith", help="blur | solid | mosaic | none."),
    thresh: Optional[float] = typer.Option(None, "--thresh", help="Detection score threshold."),
    mask_scale: Optional[float] = typer.Option(None, "--mask-scale", help="Grow each face box by this factor."),
    detector: Optional[str] = typer.Option(None, "--face-detector-model", help="Detector model."),
    chunk_frames: Optional[int] = typer.Option(None, "--chunk-frames", help="Frames per chunk (0: automatic)."),
    priority: int = typer.Option(0, "--priority", help="Higher runs first; equal priorities share the workers."),
    name: Optional[str] = typer.Option(None, "--name", help="A name for the job."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    output_root: Optional[str] = typer.Option(None, "--output-root", help="Outputs must stay under this directory ($FACEFLEET_OUTPUT_ROOT)."),
    wait: float = typer.Option(10.0, "--wait", help="Seconds to wait for the controller to accept the job (0: don't)."),
) -> None:
    """Queue a job for the controller (`facefleet serve`); prints its id."""
    from facefleet.jobs.store import Inbox
    from facefleet.jobs.submit import build_request, read_job_file, wait_for_answer

    data = read_job_file(from_file) if from_file else {}
    given = {
        "pipeline": pipeline, "replacewith": replacewith, "thresh": thresh, "mask_scale": mask_scale,
        "face_detector_model": detector, "chunk_frames": chunk_frames,
    }
    options = {k: v for k, v in data.items() if k not in ("inputs", "output", "priority", "name")}
    options.update({k: v for k, v in given.items() if v is not None})
    items = list(inputs or data.get("inputs", []))
    outdir = output or data.get("output")
    if not outdir:
        raise FacefleetError("give an output directory: -o OUTDIR (or output = \"...\" in the job file)")
    request = build_request(items, outdir, options, priority or int(data.get("priority", 0)), name or data.get("name"), output_root)
    state = _state(state_dir)
    request_id = Inbox(state).put("submit", request.payload())
    answer = wait_for_answer(state, request_id, wait) if wait > 0 else None
    if answer is None:
        typer.echo(f"{request.job_id} submitted ({len(request.inputs)} input(s)); the controller has not taken it yet")
    else:
        typer.echo(f"{request.job_id} {answer[1]} ({len(request.inputs)} input(s))")


def _reader(state_dir: Optional[str]):
    from facefleet.jobs.store import JobStore

    return JobStore(_state(state_dir), readonly=True)


@app.command("list")
def list_jobs(
    state: Optional[str] = typer.Option(None, "--state", help="queued | running | done | failed | cancelled."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """Jobs in the store, in dispatch order."""
    from rich.table import Table

    from facefleet.jobs.store import JOB_STATES, Inbox

    if state and state not in JOB_STATES:
        raise FacefleetError(f"--state must be one of {', '.join(JOB_STATES)}")
    table = Table("job", "name", "state", "priority", "chunks done", "error")
    if (_state(state_dir) / "facefleet.db").exists():  # else nothing was taken by a controller yet
        with _reader(state_dir) as store:
            for job in store.jobs(state):
                counts = store.chunk_counts(job.job_id)
                table.add_row(job.job_id, job.name, job.state, str(job.priority), f"{counts.get('done', 0)}/{sum(counts.values())}", job.error or "")
    if state in (None, "queued"):
        for request in Inbox(_state(state_dir)).pending():
            if request.kind == "submit":
                table.add_row(request.payload.get("job_id", "?"), request.payload.get("name", ""), "submitted", str(request.payload.get("priority", 0)), "-", "not yet taken by the controller")
    Console().print(table)


@app.command()
def status(
    job: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """A job's state, chunks done/total, fps, ETA, workers and errors."""
    import time as _time

    with _reader(state_dir) as store, store.snapshot():
        row = store.job(job)
        if row is None:
            raise FacefleetError(f"no job {job}")
        chunks = store.chunks(row.job_id)
        inputs = store.inputs(row.job_id)
    done = [c for c in chunks if c.state == "done"]
    frames_done, frames_total = sum(c.frames for c in done), sum(c.frames for c in chunks)
    end = row.finished or _time.time()
    elapsed = end - row.started if row.started else 0.0
    fps = frames_done / elapsed if elapsed > 0 else 0.0
    eta = (frames_total - frames_done) / fps if fps > 0 and row.state == "running" else None
    typer.echo(f"job {row.job_id} ({row.name}): {row.state}, priority {row.priority}")
    typer.echo(f"chunks {len(done)}/{len(chunks)} done, frames {frames_done}/{frames_total}, {fps:.1f} fps" + (f", ETA {eta:.0f} s" if eta is not None else ""))
    workers = sorted({f"{c.worker}@{c.node}" for c in done if c.worker is not None and c.worker >= 0})
    if workers:
        typer.echo(f"workers: {', '.join(workers)}")
    for item in inputs:
        typer.echo(f"  [{item.state}] {item.input_uri} -> {item.output_uri}" + (f"  error: {item.error}" if item.error else ""))
    if row.error:
        typer.echo(f"error: {row.error}")


@app.command()
def logs(
    job: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """A job's event log."""
    import datetime

    with _reader(state_dir) as store:
        row = store.job(job)
        if row is None:
            raise FacefleetError(f"no job {job}")
        for event in store.events(row.job_id):
            when = datetime.datetime.fromtimestamp(event.time).isoformat(timespec="seconds")
            typer.echo(f"{when}  {event.kind:<12} {event.message}")


def _request(kind: str, job: str, state_dir: Optional[str], wait: float) -> None:
    from facefleet.jobs.store import Inbox
    from facefleet.jobs.submit import wait_for_answer

    state = _state(state_dir)
    request_id = Inbox(state).put(kind, {"job": job})
    answer = wait_for_answer(state, request_id, wait)
    if answer is None:
        typer.echo(f"{kind} of {job} sent; the controller has not answered yet")
        return
    ok, message, _ = answer
    typer.echo(message)
    if not ok:
        raise typer.Exit(1)


@app.command()
def cancel(
    job: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    wait: float = typer.Option(10.0, "--wait", help="Seconds to wait for the controller's answer."),
) -> None:
    """Stop a job: nothing more is dispatched, running chunks are called off, no partial output."""
    _request("cancel", job, state_dir, wait)


@app.command()
def retry(
    job: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    wait: float = typer.Option(10.0, "--wait", help="Seconds to wait for the controller's answer."),
) -> None:
    """A failed or cancelled job goes back to the queue; only chunks not done run again."""
    _request("retry", job, state_dir, wait)


@app.command()
def report(
    job: Optional[str] = typer.Argument(None, help="Job id (or a unique prefix)."),
    output: str = typer.Option("report.html", "-o", "--output", help="The HTML file to write."),
    cluster: bool = typer.Option(False, "--cluster", help="Every job in the store instead of one."),
    since: str = typer.Option("24h", "--since", help="With --cluster: how far back, e.g. 24h, 7d, 90m."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """One self-contained HTML report: GPU utilization, chunk timeline, stages, diagnosis."""
    from facefleet.report.html import parse_since, render_cluster_report, render_job_report

    state = _state(state_dir)
    if cluster:
        path = render_cluster_report(state, parse_since(since), Path(output))
    else:
        if not job:
            raise FacefleetError("name a job, or use --cluster")
        with _reader(state_dir) as store:
            row = store.job(job)
        if row is None:
            raise FacefleetError(f"no job {job}")
        path = render_job_report(state / "jobs" / row.job_id, Path(output))
    typer.echo(f"wrote {path}")


@app.command()
def monitor(
    address: Optional[str] = typer.Option(None, "--address", help="A Ray cluster whose reporters to read (default: this machine's GPUs)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", help=STATE_HELP),
    interval: float = typer.Option(1.0, "--interval", help="Refresh every this many seconds."),
    once: bool = typer.Option(False, "--once", help="Print one table and exit."),
    gpu_backend: str = typer.Option("auto", "--gpu-backend", help="Without --address: auto | real | simulated."),
) -> None:
    """Live GPU table: utilization, memory, power, temperature, worker, job, fps (q quits)."""
    from facefleet.report.live import run_monitor

    run_monitor(address, _state(state_dir), interval, once, gpu_backend)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except FacefleetError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
