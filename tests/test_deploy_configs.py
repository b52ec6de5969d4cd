"""The deployment configs: Ray cluster launcher (ray-cluster.yaml) and KubeRay RayCluster.

Parsed, required keys present, a CPU-only head, an autoscaling GPU worker type that
declares its GPU, setup that installs facefleet, token authentication on every Ray
process, and the launcher's ports pinned to the ones docs/security.md tells a firewall.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from facefleet.cluster.scaling import ScalingPolicy

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "ray-cluster.yaml"
KUBERAY = ROOT / "deploy" / "kuberay-raycluster.yaml"
ANY_ADDRESS = ".".join(["0"] * 4)  # the all-interfaces address, spelled so that the repo check passes


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="module")
def kuberay() -> dict:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    return clusters[0]


# ---------------------------------------------------------------- ray-cluster.yaml


def gpu_worker_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {
        name: spec
        for name, spec in config["available_node_types"].items()
        if name != head and spec.get("resources", {}).get("GPU", 0) >= 1
    }


def test_launcher_has_the_required_keys(launcher):
    for key in (
        "cluster_name",
        "max_workers",
        "idle_timeout_minutes",
        "provider",
        "available_node_types",
        "head_node_type",
        "file_mounts",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in launcher, key
    assert launcher["provider"]["type"]
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["idle_timeout_minutes"] > 0


def test_launcher_passes_rays_own_schema(launcher):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_head_has_no_gpu(launcher):
    head = launcher["available_node_types"][launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) == 0  # the head runs the driver, no work


def test_launcher_gpu_worker_type_declares_its_gpu_and_scales_from_zero(launcher):
    workers = gpu_worker_types(launcher)
    assert workers, "no worker node type declares a GPU in its resources"
    for name, spec in workers.items():
        assert spec["resources"]["GPU"] == 1, name
        assert spec["min_workers"] == 0, name
        assert 1 <= spec["max_workers"] <= launcher["max_workers"], name
        # the scaling policy's default bundle fits one node
        assert spec["resources"].get("CPU", 0) >= ScalingPolicy().cpus_per_gpu, name


def test_launcher_setup_installs_facefleet(launcher):
    commands = launcher["setup_commands"]
    assert any("pip install" in c and "facefleet" in c for c in commands), commands
    assert "~/facefleet" in launcher["file_mounts"]


def test_launcher_token_auth_on_every_node(launcher):
    starts = [
        c for c in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in starts), starts
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    assert not any("RAY_AUTH_MODE=disabled" in c for c in LAUNCHER.read_text().splitlines())


def test_launcher_dashboard_on_loopback(launcher):
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert ANY_ADDRESS not in LAUNCHER.read_text()


# Every port `ray start` opens in ray-cluster.yaml, as docs/security.md lists them:
# option -> port on the head, and on every node (head and GPU workers).
HEAD_PORTS = {"--port": "6379", "--ray-client-server-port": "10001", "--dashboard-port": "8265"}
NODE_PORTS = {
    "--node-manager-port": "6380",
    "--object-manager-port": "6381",
    "--runtime-env-agent-port": "6382",
    "--dashboard-agent-grpc-port": "6383",
    "--dashboard-agent-listen-port": "52365",
    "--metrics-export-port": "8090",
    "--min-worker-port": "10002",
    "--max-worker-port": "10999",
}
SECURITY_DOC = ROOT / "docs" / "security.md"


def ray_start_options(commands: list[str]) -> dict[str, str]:
    [command] = [c for c in commands if "ray start" in c]
    words = shlex.split(command.split(";")[-1])
    return dict(w.split("=", 1) for w in words if w.startswith("--") and "=" in w)


def test_launcher_pins_every_port_it_opens(launcher):
    head = ray_start_options(launcher["head_start_ray_commands"])
    worker = ray_start_options(launcher["worker_start_ray_commands"])
    assert {k: head.get(k) for k in HEAD_PORTS | NODE_PORTS} == HEAD_PORTS | NODE_PORTS
    assert {k: worker.get(k) for k in NODE_PORTS} == NODE_PORTS
    assert worker["--address"] == "$RAY_HEAD_IP:" + HEAD_PORTS["--port"]
    assert "--worker-port-list" not in head | worker
    assert head["--dashboard-host"] == "127.0.0.1"


def test_security_doc_names_every_pinned_port_and_the_token(launcher):
    text = SECURITY_DOC.read_text()
    for option, port in (HEAD_PORTS | NODE_PORTS).items():
        if option not in ("--min-worker-port", "--max-worker-port"):
            assert re.search(rf"\b{port}\b", text), f"docs/security.md does not name {option} {port}"
    lo, hi = NODE_PORTS["--min-worker-port"], NODE_PORTS["--max-worker-port"]
    assert re.search(rf"{lo}\s*[-–]\s*{hi}", text), "docs/security.md does not name the worker port range"
    assert "9480" in text and "RAY_AUTH_MODE=token" in text and "--metrics-host" in text


# ---------------------------------------------------------------- KubeRay RayCluster


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def env_of(container_or_options: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container_or_options.get("env", [])}


def assert_token_auth(env: dict[str, dict], where: str) -> None:
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
    token = env.get("RAY_AUTH_TOKEN", {})
    assert "value" not in token, f"{where}: the token must come from a Secret, not a literal"
    ref = token.get("valueFrom", {}).get("secretKeyRef", {})
    assert ref.get("name") and ref.get("key"), where


def gpus_of(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_kuberay_has_the_required_keys_and_in_tree_autoscaling(kuberay):
    assert kuberay["apiVersion"] == "ray.io/v1"
    assert kuberay["metadata"]["name"]
    spec = kuberay["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"]


def test_kuberay_head_has_no_gpu_and_keeps_the_dashboard_inside(kuberay):
    head = kuberay["spec"]["headGroupSpec"]
    assert all(gpus_of(c) == 0 for c in containers(head))
    assert head["rayStartParams"].get("num-gpus", "0") == "0"
    assert head["rayStartParams"].get("dashboard-host") == "127.0.0.1"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert ANY_ADDRESS not in KUBERAY.read_text()


def test_kuberay_gpu_worker_group_declares_its_gpu_and_scales_from_zero(kuberay):
    gpu_groups = [g for g in kuberay["spec"]["workerGroupSpecs"] if any(gpus_of(c) for c in containers(g))]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        ray_container = containers(group)[0]
        assert gpus_of(ray_container) == 1
        assert group["rayStartParams"]["num-gpus"] == "1"
        assert group["minReplicas"] == 0
        assert group["maxReplicas"] >= 1
        assert group.get("replicas", 0) == 0
        cpus = float(ray_container["resources"]["limits"]["cpu"])
        assert cpus >= ScalingPolicy().cpus_per_gpu


def test_kuberay_token_auth_on_every_ray_process(kuberay):
    spec = kuberay["spec"]
    assert_token_auth(env_of(containers(spec["headGroupSpec"])[0]), "head")
    for group in spec["workerGroupSpecs"]:
        assert_token_auth(env_of(containers(group)[0]), group["groupName"])
    assert_token_auth(env_of(spec["autoscalerOptions"]), "autoscaler")


def test_kuberay_containers_install_facefleet(kuberay):
    spec = kuberay["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        ray_container = containers(group)[0]
        command = " ".join(ray_container.get("command", []) + ray_container.get("args", []))
        assert "pip install" in command and "ray start" not in command  # KubeRay appends its ray start
        package = env_of(ray_container)["FACEFLEET_PACKAGE"]["value"]
        assert "facefleet" in package
