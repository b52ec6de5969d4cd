"""Starting or joining Ray.

The embedded default runs Ray inside this process's session, bound to 127.0.0.1 only,
with no dashboard. Ray 2.60 otherwise advertises the machine's external address and
listens on every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set before Ray starts
keeps every Ray process on loopback (checked by the tests with the listening sockets),
whether Ray was imported before or not.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from facefleet.errors import ClusterError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ClusterInfo:
    cpus: int
    gpus: int
    nodes: int
    embedded: bool


def loopback_environment() -> None:
    """Make Ray processes started from here bind to 127.0.0.1 (must run before ray.init).

    Ray reads the variable into `ray._private.ray_constants` when it is imported, so when
    Ray was imported before this call, the constant is set too.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        constants.ENABLE_RAY_CLUSTER = False


CONNECT_TIMEOUT_S = 10

# Ray starts idle Python workers ahead of tasks, up to one per CPU. facefleet runs actors
# only, so on the 16-core H100 machine 16 such processes started with every run and spent
# about 0.7 s of CPU each importing Ray while the GPU worker loaded its models, then sat
# idle (py-spy, 2026-11-24). The embedded cluster starts none.
NO_PRESTART = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def stop_autoscaler_monitor() -> bool:
    """Kill the autoscaler monitor of the embedded Ray this process started; True if one was
    running. Call it just before ray.shutdown().

    ray.shutdown() ends Ray's processes one by one, the raylet and the GCS first, each
    with SIGTERM and up to 1 s to exit. The monitor's SIGTERM handler reports its own end
    to the GCS, which is gone by then, so it never exits by itself and shutdown waited the
    whole second before killing it (1.0 of 1.2-1.4 s, 2-core machine). An embedded cluster
    scales nothing, so the monitor has nothing to save; killing it first leaves
    ray.shutdown() the others, about 0.1 s. Ray keeps its processes in a private table; if
    that is not there (another Ray version), nothing is done and shutdown is as before.
    """
    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        infos = list(node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, [])) if node else []
    except (ImportError, AttributeError):
        return False
    killed = False
    for info in infos:
        process = getattr(info, "process", None)
        if process is None or process.poll() is not None:
            continue
        process.kill()
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        killed = True
    return killed


def check_reachable(address: str) -> None:
    """Fail fast when a HOST:PORT address does not answer (Ray itself retries for minutes).

    "auto" and ray:// addresses are left to Ray.
    """
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def describe_cluster(embedded: bool) -> ClusterInfo:
    import ray

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        cpus=int(resources.get("CPU", 0)),
        gpus=int(resources.get("GPU", 0)),
        nodes=len(nodes),
        embedded=embedded,
    )


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[ClusterInfo]:
    """Yield a connected Ray; start an embedded one when no address is given.

    A Ray already initialised by the caller (tests, notebooks) is used as it is and left
    running; otherwise Ray is shut down on exit.
    """
    import ray

    if ray.is_initialized():
        yield describe_cluster(embedded=False)
        return
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            loopback_environment()
            ray.init(
                # "local": always a new cluster; with no address Ray joins a cluster that
                # `ray start` left running on this machine (and refuses num_cpus for it)
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                logging_level=logging.ERROR,
                log_to_driver=False,
                _system_config=NO_PRESTART,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "an embedded Ray"
        hint = (
            "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token in "
            "RAY_AUTH_TOKEN or ~/.ray/auth_token"
            if address
            else ""
        )
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"cannot start or join {where}: {first_line}{hint}") from None
    try:
        yield describe_cluster(embedded=not address)
    finally:
        if not address:
            stop_autoscaler_monitor()
        ray.shutdown()
