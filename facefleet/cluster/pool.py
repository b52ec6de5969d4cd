"""The set of GpuWorker actors a run uses, and the Ray calls to reach them."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import ray

from facefleet.cluster.runtime import ClusterInfo
from facefleet.cluster.scheduler import MAX_IN_FLIGHT
from facefleet.cluster.worker import GpuWorker
from facefleet.errors import ClusterError, FacefleetError, one_line
from facefleet.jobs.spec import ChunkResult, ChunkTask, WorkerInfo
from facefleet.pipeline.spec import PipelineSpec

MAX_RESTARTS = 2
START_TIMEOUT_S = 300
START_GRACE_S = 60.0  # once one worker is up, how long the others may still take to start


@dataclass(frozen=True)
class PoolPlan:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    chunks_per_worker: int = MAX_IN_FLIGHT  # in flight and processed concurrently
    media_threads: int = 0  # decoder threads per chunk: the node's cores shared out (encoders run a fixed count)
    slowdowns: tuple[float, ...] = ()  # simulation knob: per-worker factor on simulated chunks
    elastic: bool = False  # follow the cluster: workers for GPUs that join later

    @property
    def onnx_threads(self) -> int:
        """onnxruntime threads per chunk on CPU workers (0: let it choose, on GPU workers)."""
        if self.gpus_per_worker:
            return 0
        return max(1, int(self.cpus_per_worker) // self.chunks_per_worker)


CORES_PER_CHUNK = 2  # GPU workers: one chunk in flight per this many of the node's cores
MAX_AUTO_CHUNKS = 8


def auto_chunks_per_worker(cluster: ClusterInfo, workers: int, on_gpus: bool, gpu_heavy: bool = False) -> int:
    """Chunks a worker processes at once when the user does not say.

    An anonymize chunk is bound by its x264 encoder, whose frame threads keep only a few
    cores busy, so the GPU workers of a node need several encoders at once to use its
    cores: on the H100 machine (16 cores, 1080p, 1800 frames) 4 encoders in one worker ran
    156-180 fps, 8 in two workers 180-200 (bench/results/speed_sweep_h100.md, 2026-12-07).
    So one chunk per CORES_PER_CHUNK cores of the worker's share of its node, at least
    MAX_IN_FLIGHT. A GPU-heavy pipeline (enhance) keeps the GPU busy only with more chunks
    in flight, each waiting on the model in turn: one per core.
    CPU workers spend their cores on the models and keep MAX_IN_FLIGHT.
    """
    if not on_gpus:
        return MAX_IN_FLIGHT
    nodes = max(cluster.nodes, 1)
    cores_per_worker = cluster.cpus / nodes / max(1, -(-workers // nodes))
    per_chunk = 1 if gpu_heavy else CORES_PER_CHUNK
    return max(MAX_IN_FLIGHT, min(MAX_AUTO_CHUNKS, int(cores_per_worker // per_chunk)))


# GPU share per worker when the user does not say: two workers per GPU, each a process with
# its own interpreter lock. enhance with a GFPGAN-size model on the H100 machine (16 cores,
# 1080p, 1200 frames, 4 faces a frame), two runs: one worker with 4 chunks 186 and 203
# faces/s, GPU 78 and 84 % busy; two workers with 8 chunks each 204 and 202 faces/s, GPU
# 97.5 and 96 % (bench/results/enhance_e2e_h100-levers.md, enhance_e2e_h100.md).
# anonymize at 1080p, 1800 frames, interleaved: one worker with 4 chunks 156-180 fps (5
# runs), with 8 chunks 143 and 167 (its processing threads contend for one interpreter
# lock); two workers with 4 chunks each 180-200 (5 runs, faster in every pair); four
# workers with 2 each 195 and 170 (bench/results/speed_sweep_h100.md, 2026-12-07).
DEFAULT_GPU_SHARE = 0.5


def plan_pool(
    cluster: ClusterInfo,
    workers: int | None = None,
    chunks_per_worker: int | None = None,
    gpu_share: float | None = None,
    gpu_heavy: bool = False,
) -> PoolPlan:
    """1/gpu_share workers per GPU (None: DEFAULT_GPU_SHARE, or 1 where the cluster has fewer
    than two CPUs per GPU; num_gpus=gpu_share each); with no GPU, `workers` CPU workers
    (default one per node) sharing the CPUs. `chunks_per_worker` None: see
    `auto_chunks_per_worker`; `gpu_heavy` pipelines get more.
    """
    if chunks_per_worker is not None and chunks_per_worker < 1:
        raise ClusterError("--chunks-per-worker must be at least 1")
    if gpu_share is None:
        # each GPU worker takes a CPU: with fewer CPUs than two per GPU, one worker per GPU
        gpu_share = DEFAULT_GPU_SHARE if cluster.cpus >= 2 * cluster.gpus else 1.0
    if not 0 < gpu_share <= 1:
        raise ClusterError("--gpu-share must be in (0, 1]: 0.5 runs two workers per GPU")
    if cluster.gpus > 0:
        per_gpu = max(1, round(1 / gpu_share))
        slots = cluster.gpus * per_gpu
        count = workers or slots
        if count > slots:
            raise ClusterError(
                f"--workers {count} asks for more workers than the cluster's {cluster.gpus} GPU(s) x {per_gpu} per GPU"
            )
        gpus_per_worker, cpus = 1 / per_gpu, 1
        elastic = workers is None
    else:
        elastic = False
        count = workers or max(1, cluster.nodes)
        cpus = max(cluster.cpus, 1) / count
        cpus = int(cpus) if cpus >= 1 else round(cpus, 2)
        gpus_per_worker = 0
    if chunks_per_worker is None:
        chunks_per_worker = auto_chunks_per_worker(cluster, count, on_gpus=cluster.gpus > 0, gpu_heavy=gpu_heavy)
    return PoolPlan(
        count, gpus_per_worker, cpus, chunks_per_worker, media_threads(cluster, count, chunks_per_worker), elastic=elastic
    )


def media_threads(cluster: ClusterInfo, workers: int, chunks_per_worker: int) -> int:
    """Decoder/encoder threads per chunk so that the chunks running on a node share its
    cores instead of each starting one thread per core."""
    nodes = max(cluster.nodes, 1)
    node_cpus = max(cluster.cpus // nodes, 1)
    chunks_per_node = -(-workers // nodes) * chunks_per_worker
    return max(1, node_cpus // chunks_per_node)


class WorkerPool:
    def __init__(self, plan: PoolPlan, pipeline: PipelineSpec):
        self.plan = plan
        remote = ray.remote(concurrency_groups={"progress": 1})(GpuWorker).options(
            num_gpus=plan.gpus_per_worker,
            num_cpus=plan.cpus_per_worker,
            max_restarts=MAX_RESTARTS,
            max_concurrency=plan.chunks_per_worker,
        )
        self.remote = remote
        self.pipeline = pipeline
        self.actors = {i: self._start(i) for i in range(plan.workers)}
        self._next_id = plan.workers  # ids are never reused: a retired worker's history stays its own
        infos, late = self._await_start()
        for worker, reason in late.items():  # the pool goes on with the workers that started
            self.retire(worker)
            print(f"warning: worker {worker} {reason}; going on with {len(self.actors)} worker(s)", file=sys.stderr, flush=True)
        self.plan = replace(plan, workers=len(self.actors))
        self.infos: dict[int, WorkerInfo] = {info.worker_id: info for info in infos}

    def _await_start(self) -> tuple[list[WorkerInfo], dict[int, str]]:
        """Wait for the workers to answer: all of them, or once one has, START_GRACE_S more
        for the others. A worker that has not answered by then, or whose process died,
        is left out (returned with the reason): a worker planned for a GPU whose node died
        just before (Ray counts a dead node's GPUs for about 16 s) never starts, and
        waiting for it held a starting controller for START_TIMEOUT_S, then failed it.
        Raises ClusterError when no worker starts within START_TIMEOUT_S, and a worker's
        own error (a model that cannot load, say) as it is."""
        calls = {actor.info.remote(): worker for worker, actor in self.actors.items()}
        pending, infos, late = list(calls), [], {}
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
                try:
                    infos.append(ray.get(ready[0]))
                except ray.exceptions.RayActorError as exc:
                    late[calls[ready[0]]] = f"could not start ({one_line(exc)[:200]})"
                    continue
                if len(infos) == 1:
                    deadline = min(deadline, time.monotonic() + START_GRACE_S)
        except ray.exceptions.RayTaskError as exc:
            self.shutdown()
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if isinstance(cause, FacefleetError):
                raise cause from None
            raise ClusterError(f"workers could not start: {cause}") from None
        if not infos:
            self.shutdown()
            if late:
                raise ClusterError(f"workers could not start: {next(iter(late.values()))}")
            raise ClusterError(
                f"{self.plan.workers} worker(s) did not start within {START_TIMEOUT_S} s: the cluster lacks the "
                f"resources ({self.plan.gpus_per_worker} GPU, {self.plan.cpus_per_worker} CPU each) or cannot scale up"
            )
        for ref in pending:
            late[calls[ref]] = (
                f"did not start within {START_GRACE_S:.0f} s of the first one (its node gone, or the cluster lacks "
                f"the resources: {self.plan.gpus_per_worker} GPU, {self.plan.cpus_per_worker} CPU each)"
            )
        return infos, late

    def _start(self, worker: int):
        slowdown = self.plan.slowdowns[worker] if worker < len(self.plan.slowdowns) else 1.0
        share = self.plan.gpus_per_worker if self.plan.gpus_per_worker else 1.0
        return self.remote.remote(
            worker, self.pipeline, self.plan.onnx_threads, self.plan.media_threads, slowdown, share
        )

    def submit(self, worker: int, task: ChunkTask) -> ray.ObjectRef:
        return self.actors[worker].process.remote(task)

    def grow(self) -> list[int]:
        """Start workers for GPUs that joined the cluster since the pool started; return
        their ids (elastic GPU pools only: a pool of an asked-for size stays that size).
        They take work at once: calls queue until they are up."""
        if not self.plan.elastic:
            return []
        gpus = ray.cluster_resources().get("GPU", 0)
        want = int(round(gpus / self.plan.gpus_per_worker))
        new = []
        while len(self.actors) < want:
            worker, self._next_id = self._next_id, self._next_id + 1
            self.actors[worker] = self._start(worker)
            new.append(worker)
        return new

    def ping(self, worker: int) -> ray.ObjectRef:
        """A call that answers once the worker is up (after a restart, say)."""
        return self.actors[worker].info.remote()

    def retire(self, worker: int) -> None:
        """Stop an idle worker so that its node can be scaled down."""
        actor = self.actors.pop(worker, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)

    def stop(self, worker: int, key: tuple[str, int]) -> None:
        """Ask a worker to call a chunk off; does not wait."""
        actor = self.actors.get(worker)
        if actor is not None:
            actor.stop.remote(key)

    @staticmethod
    def result(ref: ray.ObjectRef) -> ChunkResult:
        """The chunk's result; a worker's FacefleetError is re-raised as itself."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, FacefleetError):
                raise cause from None
            raise

    def progress(self) -> dict[tuple[str, int], int]:
        """Frames done so far of every chunk being processed, over all workers."""
        refs = [a.progress.remote() for a in self.actors.values()]
        out: dict[tuple[str, int], int] = {}
        for ref in refs:
            try:
                out.update(ray.get(ref, timeout=5))
            except ray.exceptions.RayError:
                pass  # a worker restarting: its chunks report when they are sent again
        return out

    def shutdown(self) -> None:
        for worker in list(self.actors):
            self.retire(worker)
