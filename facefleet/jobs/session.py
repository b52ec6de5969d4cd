"""One `facefleet run`: plan the jobs, start or join Ray, run them, print the summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from facefleet.errors import FacefleetError
from facefleet.jobs.runner import JobOutcome, plan_jobs, run_planned
from facefleet.jobs.spec import JobSpec
from facefleet.models.manifest import get_model, license_notice
from facefleet.report.console import RichProgress, print_summary


@dataclass(frozen=True)
class PoolOptions:
    workers: int | None = None
    chunks_per_worker: int | None = None  # None: auto (cluster.pool.auto_chunks_per_worker)
    gpu_share: float | None = None  # None: cluster.pool.DEFAULT_GPU_SHARE (two workers per GPU)
    sample_interval: float = 0.5  # NVML reporter sampling, seconds
    monitor: bool = True  # False: no NVML reporters and no GPU samples (to measure monitoring's overhead)
    gpu_backend: str = "auto"  # auto | real | simulated
    autoscale: bool | None = None  # None: when joining a cluster (--address)
    target_backlog_s: float = 120.0
    idle_timeout_s: float | None = None  # retire idle workers (None: 60 s when autoscaling, else never)
    stall_timeout_s: float | None = None  # give up a chunk without progress this long (None: 300 s or FACEFLEET_STALL_TIMEOUT_S; 0: never)

    def stall_option(self) -> dict:
        """The runner's stall_timeout_s argument, when the user gave one (0: never)."""
        if self.stall_timeout_s is None:
            return {}
        return {"stall_timeout_s": self.stall_timeout_s if self.stall_timeout_s > 0 else None}


def model_notices(specs: list[JobSpec]) -> list[str]:
    """One line per non-commercial model and per trusted (unchecked) model file used."""
    lines: list[str] = []
    for pipeline in {spec.pipeline for spec in specs}:
        for name in pipeline.models:
            notice = license_notice(get_model(name))
            if notice and notice not in lines:
                lines.append(notice)
        for name, path in pipeline.trusted:
            line = f"note: model {name} is loaded from {path} without a checksum check (--trust-model)"
            if line not in lines:
                lines.append(line)
    return lines


def check_models(specs: list[JobSpec]) -> None:
    """Find and check every model file the jobs need (raises ModelError)."""
    from facefleet.pipeline.processor import ModelLoader

    for pipeline in {spec.pipeline for spec in specs}:
        loader = ModelLoader(pipeline)
        for name in pipeline.models:
            loader.resolve(name)


def cluster_line(cluster, plan, address: str | None) -> str:
    """Where a run or controller runs: Ray, its size, and the workers it started."""
    where = "embedded Ray (127.0.0.1)" if cluster.embedded else f"Ray at {address or 'the current session'}"
    kind = f"{plan.workers} GPU worker(s)" if plan.gpus_per_worker else f"{plan.workers} CPU worker(s)"
    return f"{where}: {cluster.nodes} node(s), {cluster.cpus} CPUs, {cluster.gpus} GPUs; {kind}"


def start_monitoring(options: PoolOptions, console: Console) -> dict:
    """The NVML reporters (started beside the workers, waited for once they are up), or
    none with --no-monitor."""
    from facefleet.cluster.reporter import REPORTER_PREFIX, start_reporters

    if options.monitor:
        return start_reporters(options.sample_interval, options.gpu_backend, name_prefix=REPORTER_PREFIX, wait=False)
    console.print("GPU monitoring off (--no-monitor): no NVML reporters, no GPU samples", highlight=False)
    return {}


def scaling(options: PoolOptions, address: str | None):
    """(autoscaler or None, seconds after which idle workers retire or None) for a run."""
    from facefleet.cluster.scaling import Autoscaler, ScalingPolicy

    autoscale = options.autoscale if options.autoscale is not None else bool(address)
    autoscaler = Autoscaler(ScalingPolicy(target_backlog_s=options.target_backlog_s)) if autoscale else None
    idle = options.idle_timeout_s if options.idle_timeout_s is not None else (60.0 if autoscale else None)
    return autoscaler, idle


def print_notices(specs: list[JobSpec], console: Console) -> None:
    for line in model_notices(specs):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def run_specs(
    specs: list[JobSpec], address: str | None, options: PoolOptions, console: Console, progress: bool = True
) -> list[JobOutcome]:
    """Run every job in memory (`facefleet run --no-state`, and the benches): nothing is
    kept, a run that dies starts over. Bad inputs are refused before Ray starts, and when
    all are bad Ray does not start at all."""
    from facefleet.cluster.monitor import GpuMonitor
    from facefleet.cluster.pool import WorkerPool, plan_pool
    from facefleet.cluster.reporter import await_reporters, stop_reporters
    from facefleet.cluster.runtime import ray_session

    print_notices(specs, console)
    if address is None:  # the models are on this machine: refuse a missing or bad one before Ray starts
        check_models(specs)
    planned = plan_jobs(specs)
    if all(isinstance(p, JobOutcome) for p in planned):
        print_summary(planned)
        return planned
    with ray_session(address) as cluster:
        heavy = any(spec.pipeline.gpu_heavy for spec in specs)
        plan = plan_pool(cluster, options.workers, options.chunks_per_worker, options.gpu_share, gpu_heavy=heavy)
        console.print(cluster_line(cluster, plan, address), highlight=False)
        reporters = start_monitoring(options, console)
        autoscaler, idle = scaling(options, address)
        pool = None
        try:
            pool = WorkerPool(plan, specs[0].pipeline)
            await_reporters(reporters)
            with RichProgress(console, enabled=progress) as bars:
                outcomes = run_planned(
                    planned, pool, bars, monitor=GpuMonitor(reporters) if options.monitor else None, autoscaler=autoscaler,
                    idle_retire_s=idle, **options.stall_option(),
                )
        finally:
            if pool is not None:
                pool.shutdown()
            stop_reporters(reporters)
        print_summary(outcomes)  # before Ray's shutdown, which takes a second or two
    return outcomes


def serve_jobs(
    state_dir,
    address: str | None,
    options: PoolOptions,
    console: Console,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    until_idle: bool = False,
    price_per_gpu_hour: float | None = None,
    pipeline=None,
    progress=None,
    run: bool = False,
    lock=None,
) -> None:
    """The controller (`facefleet serve` and `facefleet resume`): start or join Ray, resume
    unfinished jobs, take requests from the inbox until stopped (or, with `until_idle`,
    until nothing is left to do). With `run` (`facefleet run`), it also scales the cluster
    as a run does (see `scaling`) and shows `progress` (a JobProgress). `lock`: the state
    dir's ControllerLock when the caller took it already (released here at the end)."""
    from facefleet.cluster.monitor import GpuMonitor
    from facefleet.cluster.pool import WorkerPool, plan_pool
    from facefleet.cluster.reporter import await_reporters, stop_reporters
    from facefleet.cluster.runtime import ray_session
    from facefleet.jobs.controller import Controller, ControllerLock
    from facefleet.pipeline.spec import PipelineSpec

    lock = lock or ControllerLock(state_dir)
    metrics = None
    try:
        if metrics_port is not None:
            from facefleet.report.metrics import Metrics

            metrics = Metrics()
            port = metrics.serve(metrics_port, metrics_host)
            console.print(f"metrics: http://{metrics_host}:{port}/metrics", highlight=False)
        with ray_session(address) as cluster:
            heavy = pipeline is not None and pipeline.gpu_heavy
            plan = plan_pool(cluster, options.workers, options.chunks_per_worker, options.gpu_share, gpu_heavy=heavy)
            console.print(cluster_line(cluster, plan, address), highlight=False)
            reporters = start_monitoring(options, console)
            autoscaler, idle = scaling(options, address) if run else (None, None)
            pool = None
            controller = None
            try:
                pool = WorkerPool(plan, pipeline or PipelineSpec())
                await_reporters(reporters)
                controller = Controller(
                    state_dir, pool, monitor=GpuMonitor(reporters) if reporters else None, reporters=reporters,
                    metrics=metrics, price_per_gpu_hour=price_per_gpu_hour,
                    log=lambda line: console.print(line, markup=False, highlight=False),
                    progress=progress, autoscaler=autoscaler, idle_retire_s=idle, **options.stall_option(),
                )
                resumed = controller.resume()
                if not run:
                    console.print(f"controller on {state_dir}: {resumed} unfinished job(s) resumed", highlight=False)
                controller.serve(until_idle=until_idle)
            finally:
                if controller is not None:
                    controller.close()
                if pool is not None:
                    pool.shutdown()
                stop_reporters(reporters)
    finally:
        if metrics is not None:
            metrics.stop()
        lock.release()


def run_durable(
    specs: list[JobSpec], state_dir, address: str | None, options: PoolOptions, console: Console,
    resume: bool = False, progress: bool = True, job_id: str | None = None,
) -> list[JobOutcome]:
    """`facefleet run` (the default): the run's inputs become one job in the job store at
    `state_dir`, with all its settings (submit.dump_settings), and the controller runs it
    here until nothing is left, with the run's progress bars and summary, so that a run
    that dies is finished by `facefleet run --resume` with the same settings and its done
    chunks kept. Inputs refused when planned (missing, not media, ...) fail before the
    store and Ray: they are only in the summary. With `resume`, no new job: every
    unfinished job in the store is finished. Returns one outcome per input, in order."""
    from facefleet.jobs.controller import ControllerLock
    from facefleet.jobs.inputs import new_job_id
    from facefleet.jobs.store import Inbox
    from facefleet.jobs.submit import JobRequest, absolute_path, dump_settings, load_settings, refuse_credentials

    refused: dict[int, JobOutcome] = {}
    pipeline = stored_pipeline(state_dir) if resume else None  # the workers preload it
    lock = None
    if not resume:
        print_notices(specs, console)
        if address is None:
            check_models(specs)
        settings = dump_settings(specs[0].pipeline, specs[0].encode, specs[0].chunk_frames)  # one job: one set
        if any(dump_settings(s.pipeline, s.encode, s.chunk_frames) != settings for s in specs[1:]):
            raise FacefleetError("every input of a stored run must have the same settings")
        for uri in (uri for s in specs for uri in (s.input_uri, s.output_uri)):
            refuse_credentials(uri)  # the store would keep them
        planned = plan_jobs(specs)
        refused = {i: p for i, p in enumerate(planned) if isinstance(p, JobOutcome)}
        kept = [s for i, s in enumerate(specs) if i not in refused]
        if not kept:
            print_summary(list(refused.values()))
            return list(refused.values())
        # absolute: `run --resume` may be started from another directory
        pairs = [(absolute_path(s.input_uri), absolute_path(s.output_uri)) for s in kept]
        job_id = job_id or new_job_id()
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise FacefleetError(f"cannot keep the run in {state_dir} ({exc.strerror}): give --state-dir DIR, or --no-state") from None
        pipeline = load_settings(settings)[0]  # the workers preload the pipeline as stored
        # the store's controller lock before the request: a store that `serve` (or another
        # run) is running is refused here, instead of that controller running the job anyway
        lock = ControllerLock(Path(state_dir))
        try:
            Inbox(state_dir).put("submit", JobRequest(job_id, "run", 0, pairs, settings, work="beside-output").payload())
        except BaseException:
            lock.release()
            raise
    before = time.time()
    with RichProgress(console, enabled=progress) as bars:
        serve_jobs(state_dir, address, options, console, until_idle=True, pipeline=pipeline, progress=bars, run=True, lock=lock)
    ran = stored_outcomes(state_dir, [job_id] if job_id and not resume else None, before, bars.outcomes)
    if not resume:
        missing = "not run: the controller did not store the run (see the lines above)"
        ran += [JobOutcome(s.job_id, s.input_uri, s.output_uri, error=missing) for s in kept[len(ran):]]
        # named as the user gave them (the store holds them absolute)
        ran = [replace(o, input_uri=s.input_uri, output_uri=s.output_uri) for o, s in zip(ran, kept)]
    outcomes = [refused.pop(i) if i in refused else ran.pop(0) for i in range(len(refused) + len(ran))]
    print_summary(outcomes)
    return outcomes


def stored_outcomes(state_dir, job_ids: list[str] | None, since: float, seen: dict[str, JobOutcome]) -> list[JobOutcome]:
    """One outcome per input of the jobs (default: those that ended after `since`), in
    order: the one the run saw end (`seen`, by unit id), else the store's record (an input
    done before a resume)."""
    from facefleet.jobs.controller import unit_id
    from facefleet.jobs.store import JobStore

    outcomes = []
    with JobStore(state_dir, readonly=True) as store:
        jobs = [store.job(j) for j in job_ids] if job_ids else [j for j in store.jobs() if (j.finished or 0) >= since]
        for job in filter(None, jobs):
            for row in store.inputs(job.job_id):
                unit = unit_id(job.job_id, row.index)
                if unit in seen:
                    outcomes.append(seen[unit])
                    continue
                error = None if row.state == "done" else (row.error or job.error or row.state)
                done = [c for c in store.chunks(job.job_id, row.index) if c.state == "done"]
                outcomes.append(JobOutcome(
                    unit, row.input_uri, row.output_uri, frames=sum(c.frames for c in done), faces=sum(c.faces or 0 for c in done),
                    error=error, kept_frames=sum(c.frames for c in done),  # done before this run
                ))
    return outcomes


def stored_pipeline(state_dir):
    """The pipeline of the first unfinished job in a store (the one `run --resume` starts
    its workers with), or None (the default one)."""
    from facefleet.jobs.store import Inbox, JobStore
    from facefleet.jobs.submit import job_settings

    try:
        for request in Inbox(state_dir).pending():
            return job_settings(request.payload["job_id"], request.payload)[0]
        if (Path(state_dir) / "facefleet.db").exists():
            with JobStore(state_dir, readonly=True) as store:
                for job in store.jobs("running") + store.jobs("queued"):
                    return job_settings(job.job_id, job.spec)[0]
    except FacefleetError:  # a job this version cannot read (it fails when the controller starts it), a store being made
        pass
    return None


def prune_runs(root, keep_s: float) -> list:
    """Remove the run stores under `root` that are finished and untouched for `keep_s`
    seconds; returns those removed."""
    import shutil

    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = time.time() - keep_s
    # last touched: read before unfinished_runs opens the stores (a read touches SQLite's files)
    stale = [s for s in sorted(root.glob("*/")) if max(p.stat().st_mtime for p in [s, *s.glob("facefleet.db*")]) < cutoff]
    unfinished = set(unfinished_runs(root)) if stale else set()
    removed = []
    for state in stale:
        if state not in unfinished:
            shutil.rmtree(state, ignore_errors=True)
            removed.append(state)
    return removed


def unfinished_runs(root) -> list:
    """The run stores under `root` (one directory per `facefleet run`) with work left:
    a request not yet taken, or a job queued or running."""
    from facefleet.jobs.store import Inbox, JobStore, StoreError

    found = []
    for state in sorted(Path(root).glob("*/")):
        if Inbox(state).pending():
            found.append(state)
        elif (state / "facefleet.db").exists():
            try:
                store = JobStore(state, readonly=True)
            except StoreError:  # being created by a run starting now, or unreadable: not pruned, tried by a resume
                found.append(state)
                continue
            with store:
                if store.jobs("queued") or store.jobs("running"):
                    found.append(state)
    return found
