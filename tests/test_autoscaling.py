"""The scaling adapter against Ray's real autoscaler on a fake multi-node cluster.

`ray.cluster_utils.AutoscalingCluster` starts a head whose autoscaler launches fake nodes
(processes on this machine) of a GPU node type. The scenario: a job's backlog makes the
policy ask for one GPU; the autoscaler brings up a GPU node; a num_gpus=1 task runs there;
the queue drains, the request is released, and the idle node is removed.

It runs in its own process (`python tests/test_autoscaling.py`) with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so that every Ray process binds to 127.0.0.1, and
checks that with the listening sockets. Two things differ from AutoscalingCluster as
shipped in the Ray 2.60 wheel:
- its base config (`fake_multi_node/example.yaml`) is not in the wheel: it is given here;
- its start() and shutdown() run `ray stop --force`, which kills every Ray process on the
  machine (anyone's). This cluster is started on a free port with its own temp dir and
  shut down by stopping only the processes of that cluster.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO_TIMEOUT_S = 240
NODE_UP_TIMEOUT_S = 60
NODE_DOWN_TIMEOUT_S = 90
IDLE_TIMEOUT_MINUTES = 0.05  # 3 s: the node stays while the request holds it; then 3 s idle
GPU_NODE_TYPE = "gpu.worker"
TEMP_DIR_ENV = "FACEFLEET_TEST_RAY_TEMP_DIR"


def test_backlog_brings_up_a_gpu_node_that_goes_away_after_the_job():
    bindir = str(Path(sys.executable).parent)
    # short: Ray's unix socket paths live under it
    temp_dir = tempfile.mkdtemp(prefix="ffas-", dir="/tmp")
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # `ray` for AutoscalingCluster
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process on 127.0.0.1
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # token authentication on, with a token of this run's own (not ~/.ray/auth_token)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env[TEMP_DIR_ENV] = temp_dir
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S
        )
    finally:
        leftovers = stop_processes(cluster_processes(temp_dir))  # after a timeout or a crash
        shutil.rmtree(temp_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"scenario failed after {elapsed:.0f} s:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"autoscaling scenario ({elapsed:.1f} s): {json.dumps(result)}")

    # the policy asked for one GPU bundle, then released the request
    assert [r["bundles"] for r in result["requests"]] == [[{"GPU": 1, "CPU": 1}], []]
    # a GPU node came up and the GPU task ran there, not on the head
    assert result["gpus_up"] == 1
    assert result["task_node"] != result["head_node"]
    assert result["task_gpu_ids"] == ["0"]
    # both nodes' processes (2 raylets) listen on loopback only
    assert result["raylets"] == 2
    assert result["listening"] >= 6
    assert result["non_loopback"] == []
    # the idle node went away after the request was released
    assert result["gpus_after"] == 0 and result["nodes_after"] == 1
    assert result["left_running"] == [] and leftovers == 0


# ------------------------------------------------ processes of one cluster (both sides)


def cluster_processes(temp_dir: str, port: int | None = None) -> list:
    """The processes of the cluster whose temp dir (or GCS port) is given, and their
    children; never this process."""
    import psutil

    pattern = re.escape(temp_dir)
    if port is not None:
        pattern += rf"|(127\.0\.0\.1:|--gcs_server_port=){port}(?!\d)"
    mine = re.compile(pattern)
    own: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and mine.search(" ".join(p.info["cmdline"] or [])):
                own[p.pid] = p
        except psutil.Error:
            pass
    for p in list(own.values()):
        try:
            own.update({c.pid: c for c in p.children(recursive=True) if c.pid != os.getpid()})
        except psutil.Error:
            pass
    return list(own.values())


def stop_processes(procs: list) -> int:
    """Terminate these processes and kill those that linger after a second (the head's
    raylet and GCS take longer than 10 s over SIGTERM, so waiting longer only delays their
    kill; `ray stop --force` kills at once); returns how many there were."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=1)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


# ---------------------------------------------------------------- the scenario process


def base_config(gcs_address: str) -> dict:
    """What `fake_multi_node/example.yaml` would give (the wheel lacks it)."""
    return {
        "cluster_name": "facefleet-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # the provider's default is this machine's port 6379
        },
        "head_node_type": "ray.head.default",
        "available_node_types": {},
        "docker": {},
        "auth": {},
        "cluster_synced_files": [],
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cluster_class():
    import ray
    from ray.cluster_utils import AutoscalingCluster

    class LoopbackAutoscalingCluster(AutoscalingCluster):
        """AutoscalingCluster on 127.0.0.1:PORT with its own temp dir, stopping only its own
        processes."""

        def __init__(self, head_resources: dict, worker_node_types: dict):
            self.port = free_port()
            self.address = f"127.0.0.1:{self.port}"
            self.temp_dir = os.environ[TEMP_DIR_ENV]
            super().__init__(head_resources, worker_node_types)

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = base_config(self.address)
            config["available_node_types"] = dict(worker_node_types)
            config["available_node_types"]["ray.head.default"] = {
                "resources": dict(head_resources),
                "node_config": {},
                "max_workers": 0,
            }
            config.update(config_kwargs)
            return config

        def start(self, _system_config=None, override_env=None):
            config_path = Path(self.temp_dir) / "autoscaling.json"
            config_path.write_text(json.dumps(self._config))
            head = dict(self._head_resources)
            cmd = [
                "ray", "start", "--head",
                f"--autoscaling-config={config_path}",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--ray-client-server-port={free_port()}",
                "--dashboard-agent-listen-port=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={self.temp_dir}",
                f"--num-cpus={head.pop('CPU', 0)}",
                f"--num-gpus={head.pop('GPU', 0)}",
            ]  # fmt: skip
            env = dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
            started = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if started.returncode != 0:
                raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
            ray._private.services.find_gcs_addresses.cache_clear()

        def processes(self) -> list:
            return cluster_processes(self.temp_dir, self.port)

        def shutdown(self):
            stop_processes(self.processes())
            ray._private.services.find_gcs_addresses.cache_clear()

    return LoopbackAutoscalingCluster


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


def listening_sockets(pids: set[int]):
    import psutil

    return [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def scenario() -> dict:
    import ray

    from facefleet.cluster.scaling import Autoscaler, ScalingPolicy

    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    t0 = time.monotonic()
    cluster = make_cluster_class()(
        head_resources={"CPU": 1, "GPU": 0},
        worker_node_types={
            GPU_NODE_TYPE: {
                "resources": {"CPU": 2, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            }
        },
    )
    result: dict = {}
    try:
        cluster.start()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        result["head_node"] = ray.get_runtime_context().get_node_id()
        result["started_s"] = round(time.monotonic() - t0, 1)
        assert ray.cluster_resources().get("GPU", 0) == 0

        # a job's backlog and no GPU: the policy asks for one GPU bundle
        scaler = Autoscaler(ScalingPolicy(cpus_per_gpu=1, max_gpus=2))
        decision = scaler.step(time.monotonic(), None, backlog_frames=9000, fps_per_gpu=None, gpus=0)
        assert (decision.kind, decision.gpus) == ("up", 1), decision

        result["node_up_s"] = round(
            wait_for(lambda: ray.cluster_resources().get("GPU", 0) >= 1, NODE_UP_TIMEOUT_S, "a GPU node"), 1
        )

        @ray.remote(num_gpus=1)
        def where() -> tuple[str, list]:
            return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]

        result["gpus_up"] = ray.cluster_resources().get("GPU", 0)
        t_task = time.monotonic()
        result["task_node"], result["task_gpu_ids"] = ray.get(where.remote(), timeout=60)
        result["task_s"] = round(time.monotonic() - t_task, 1)

        # what every process of both nodes (and this driver) listens on
        procs = cluster.processes()
        result["raylets"] = sum(1 for p in procs if p.name() == "raylet")
        sockets = listening_sockets({p.pid for p in procs} | {os.getpid()})
        result["listening"] = len(sockets)
        result["non_loopback"] = [f"{c.laddr.ip}:{c.laddr.port}" for c in sockets if not is_loopback(c.laddr.ip)]

        # the queue drains: the request is released and the idle node times out
        gpus = int(ray.cluster_resources().get("GPU", 0))
        decision = scaler.step(time.monotonic(), 0.0, backlog_frames=0, fps_per_gpu=30.0, gpus=gpus)
        assert decision.kind == "release", decision

        def gone() -> bool:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            return ray.cluster_resources().get("GPU", 0) == 0 and len(alive) == 1

        result["node_down_s"] = round(wait_for(gone, NODE_DOWN_TIMEOUT_S, "the idle GPU node removed"), 1)
        result["gpus_after"] = ray.cluster_resources().get("GPU", 0)
        result["nodes_after"] = len([n for n in ray.nodes() if n.get("Alive")])
        result["requests"] = [{"bundles": r.bundles, "reason": r.reason} for r in scaler.log]
    finally:
        t_stop = time.monotonic()
        ray.shutdown()
        cluster.shutdown()
        result["shutdown_s"] = round(time.monotonic() - t_stop, 1)
    result["left_running"] = [p.pid for p in cluster.processes()]
    result["total_s"] = round(time.monotonic() - t0, 1)
    return result


if __name__ == "__main__":
    print(json.dumps(scenario()))
