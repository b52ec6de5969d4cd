"""The set of GpuWorker actors a run uses, and the Ray calls to reach them."""

from __future__ import annotations

from dataclasses import dataclass

import ray

from facefleet.cluster.runtime import ClusterInfo
from facefleet.cluster.worker import GpuWorker
from facefleet.errors import ClusterError, FacefleetError
from facefleet.jobs.spec import ChunkResult, ChunkTask, WorkerInfo
from facefleet.pipeline.spec import PipelineSpec

MAX_RESTARTS = 2


@dataclass(frozen=True)
class PoolPlan:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float


def plan_pool(cluster: ClusterInfo, workers: int | None = None) -> PoolPlan:
    """One worker per GPU; with no GPU, `workers` CPU workers (default one) sharing the CPUs."""
    if cluster.gpus > 0:
        count = workers or cluster.gpus
        if count > cluster.gpus:
            raise ClusterError(f"--workers {count} asks for more workers than the cluster's {cluster.gpus} GPUs")
        return PoolPlan(workers=count, gpus_per_worker=1, cpus_per_worker=1)
    count = workers or max(1, cluster.nodes)
    cpus = max(1, cluster.cpus // count) if cluster.cpus else 1
    return PoolPlan(workers=count, gpus_per_worker=0, cpus_per_worker=cpus)


class WorkerPool:
    def __init__(self, plan: PoolPlan, pipeline: PipelineSpec):
        remote = ray.remote(concurrency_groups={"progress": 1})(GpuWorker).options(
            num_gpus=plan.gpus_per_worker,
            num_cpus=plan.cpus_per_worker,
            max_restarts=MAX_RESTARTS,
        )
        threads = 0 if plan.gpus_per_worker else int(plan.cpus_per_worker)
        self.actors = {i: remote.remote(i, pipeline, threads) for i in range(plan.workers)}
        try:
            infos = ray.get([a.info.remote() for a in self.actors.values()])
        except ray.exceptions.RayTaskError as exc:
            self.shutdown()
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if isinstance(cause, FacefleetError):
                raise cause from None
            raise ClusterError(f"workers could not start: {cause}") from None
        except ray.exceptions.RayActorError as exc:
            self.shutdown()
            raise ClusterError(f"workers could not start: {exc}") from None
        self.infos: dict[int, WorkerInfo] = {info.worker_id: info for info in infos}

    def submit(self, worker: int, task: ChunkTask) -> ray.ObjectRef:
        return self.actors[worker].process.remote(task)

    def progress(self) -> dict[int, tuple[tuple[str, int] | None, int]]:
        refs = {w: a.progress.remote() for w, a in self.actors.items()}
        out = {}
        for worker, ref in refs.items():
            try:
                out[worker] = ray.get(ref, timeout=5)
            except (ray.exceptions.RayError, TimeoutError):
                out[worker] = (None, 0)
        return out

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors = {}


def result_of(ref: ray.ObjectRef) -> ChunkResult:
    """The chunk's result; a worker's FacefleetError is re-raised as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, FacefleetError):
            raise cause from None
        raise
