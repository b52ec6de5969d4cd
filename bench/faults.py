"""Faults in a multi-job run (issue 8), seeded and repeatable.

    .venv/bin/python bench/faults.py [--seed 1] [--jobs 6] [--faults 9] [--workers 2] [--nodes 1]

Submits `--jobs` small videos (anonymize, 8-frame chunks), one input that is not a video,
one video whose output lands on a "full disk" (ENOSPC injected through
FACEFLEET_FAULT_ENOSPC), a simulated job with a chunk that hangs on its first send (the
controller runs with FACEFLEET_STALL_TIMEOUT_S) and, with two workers or more, a
simulated job whose chunks fail on worker 1 (a GPU that returns errors). Then runs
`facefleet serve --until-idle` in its own process group and, at seeded moments (after a
seeded number of chunks are done, plus a seeded delay), SIGKILLs a worker actor's
process (Ray restarts it), the NVML reporter actor's process (Ray restarts it), the
whole controller (started again on the same state dir, it resumes) or a node.

With `--nodes 1` (the default) the controller starts an embedded one-node Ray, which dies
with the controller. With `--nodes N` (2 or more) the bench starts its own Ray cluster on
127.0.0.1 (LoopbackCluster): a head (`ray start --head --block`) and N-1 more nodes, each
in a session of its own, with `--workers`/N fake GPUs each (the workers run on the CPU;
their GPU metrics are simulated), token authentication with a token of this run and a
temp dir of its own (so no other `ray.init()` on the machine finds it). The controller
joins it (`facefleet serve --address ...`, one worker per GPU) and a controller kill
kills the controller alone. N-1 of the `--faults` are node kills: every process of one
node other than the head (its session: raylet, agents, its worker and reporter), SIGKILL;
the head's node finishes the jobs. A worker kill picks a node whose worker was not killed
yet in this controller life.

`--seed`, `--nodes` and `--faults` take lists (`--seed 1,2,3 --nodes 1,2 --faults 9,1`):
one run for each combination, a summary table first.

Checks: every job done with output bytes equal to a fault-free `facefleet run` of the
same inputs, or failed with a reason (and nothing at its output path); the store's
integrity_check is clean; no temporary file or work directory is left; lost = 0.
Every wait has a limit: the whole run (`--timeout-s`) and, while the controller is alive,
no chunk done for `--stuck-s` seconds counts as hung; a hung controller's Python stacks
(py-spy dump, when installed) are saved beside its log before it is killed.
Writes bench/results/faults.md (and .json); exits 1 if anything was lost or hung.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from facefleet.jobs.runner import simulated_uri  # noqa: E402
from facefleet.jobs.store import Inbox, JobStore  # noqa: E402
from facefleet.jobs.submit import build_request  # noqa: E402
from facefleet.media.files import FAULT_ENOSPC_ENV, TMP_MARK  # noqa: E402
from facefleet.samples import SampleSpec, make_sample_video  # noqa: E402

FACEFLEET = [sys.executable, "-m", "facefleet"]
CHUNK_FRAMES = 8
KINDS = ("worker killed", "reporter killed", "controller killed")
NODE_KILLED = "node killed"
PROCESS_TITLES = {"worker killed": b"ray::GpuWorker", "reporter killed": b"ray::NvmlReporter"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_processes(sid: int, title: bytes = b"") -> list[int]:
    """PIDs in session `sid` (the controller, started as a session leader, and its Ray:
    Ray's actor processes get process groups of their own) whose title starts with `title`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != sid:
                continue
            if (entry / "cmdline").read_bytes().startswith(title):
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return sorted(pids)


def processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains `text` (a Ray temp dir of this bench)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def kill_controller(proc: subprocess.Popen) -> None:
    """SIGKILL the controller and every process of its session (its Ray), by PID."""
    for pid in [proc.pid, *session_processes(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_session(sid: int) -> int:
    """SIGKILL every process of session `sid`, by PID; how many there were."""
    pids = session_processes(sid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while sum(1 for n in ray.nodes() if n["Alive"]) < want:
    if time.monotonic() > deadline:
        sys.exit(f"{sum(1 for n in ray.nodes() if n['Alive'])} of {want} nodes up")
    time.sleep(0.2)
print(ray.cluster_resources())
"""


# A node that joins the head: what `ray.cluster_utils.Cluster.add_node` does, in a process
# of its own that blocks until killed. (`ray start --address 127.0.0.1:PORT` refuses to
# start a second node with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with 1 it turns
# 127.0.0.1 into the machine's external address, both for the GCS it joins and for the
# node's own address.)
JOIN_NODE = """
import json, signal, sys
from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
from ray._private.node import Node
from ray._private.parameter import RayParams
ensure_token_if_auth_enabled(create_token_if_missing=False)
node = Node(RayParams(**json.loads(sys.argv[1])), head=False, shutdown_at_exit=True, spawn_reaper=True)
print("node", node.node_id, "up", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
"""


class LoopbackCluster:
    """A Ray cluster of `count` nodes on 127.0.0.1 for the controller to join: the head
    (`ray start --head --block`) and count-1 more (JOIN_NODE), each in a session of its
    own (a node is every process of its session, so killing the session kills the node),
    with `gpus` fake GPUs and `cpus` CPUs each.

    Every Ray process here is told RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and 127.0.0.1; the
    ports Ray would otherwise fix (client server, dashboard agent) are free ones, the
    dashboard is off, and the temp dir is a short one of its own under /tmp (Ray's socket
    paths have a length limit): `ray start` writes the cluster's address there, so no
    other `ray.init()` on this machine joins it. Token authentication with a token of
    this run (RAY_AUTH_MODE, RAY_AUTH_TOKEN in `env`, which the controller gets too).
    """

    def __init__(self, root: Path, count: int, gpus: int, cpus: int, env: dict[str, str]):
        self.root, self.count, self.gpus, self.cpus = root, count, gpus, cpus
        self.temp = Path(tempfile.mkdtemp(prefix="ff-faults-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.nodes: list[subprocess.Popen] = []  # [0]: the head
        self.killed: set[int] = set()

    def start(self, timeout_s: float = 120.0) -> None:
        self._spawn([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(self.port),
                     "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus),
                     "--temp-dir", str(self.temp), "--include-dashboard", "false", "--ray-client-server-port", str(free_port()),
                     "--min-worker-port", "0", "--max-worker-port", "0", "--dashboard-agent-listen-port", str(free_port()),
                     "--object-store-memory", str(150 * 1024 * 1024), "--disable-usage-stats"])
        for _ in range(self.count - 1):
            params = {
                "gcs_address": self.address, "node_ip_address": "127.0.0.1", "num_cpus": self.cpus, "num_gpus": self.gpus,
                "temp_dir": str(self.temp), "min_worker_port": 0, "max_worker_port": 0, "node_manager_port": 0,
                "dashboard_agent_listen_port": free_port(), "object_store_memory": 150 * 1024 * 1024,
                "include_log_monitor": False,
            }
            self._spawn([sys.executable, "-c", JOIN_NODE, json.dumps(params)])
        try:
            up = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, self.address, str(self.count), str(timeout_s)],
                                capture_output=True, text=True, timeout=timeout_s + 60, env=self.env)
        except subprocess.TimeoutExpired:
            up = None
        if up is None or up.returncode != 0:
            self.shutdown()
            why = "no answer" if up is None else (up.stderr.strip().splitlines() or ["?"])[-1]
            raise SystemExit(f"the Ray cluster of {self.count} nodes did not start ({why}); logs in {self.root}")

    def _spawn(self, command: list[str]) -> None:
        log = open(self.root / f"ray-node-{len(self.nodes)}.log", "wb")
        self.nodes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env))
        log.close()

    @property
    def live(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.killed]

    def processes(self, node: int, title: bytes = b"") -> list[int]:
        return session_processes(self.nodes[node].pid, title)

    def kill(self, node: int) -> int:
        """SIGKILL every process of node `node`; how many there were."""
        self.killed.add(node)
        killed = kill_session(self.nodes[node].pid)
        self.nodes[node].wait(timeout=60)
        return killed

    def shutdown(self, timeout_s: float = 20.0) -> None:
        """Kill every node, then every process still naming this cluster's temp dir (a
        worker the raylet was starting when its node died), and wait until none is left."""
        for node in reversed(self.live):  # the head last
            self.kill(node)
        deadline = time.monotonic() + timeout_s
        while (stragglers := processes_naming(str(self.temp))) and time.monotonic() < deadline:
            for pid in stragglers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


def hang_dump(root: Path, name: str, pids: list[int]) -> str | None:
    """Python stacks of the processes (py-spy dump) into root/name; None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    path = root / name
    with open(path, "w") as out:
        for pid in pids:
            try:
                title = repr(Path(f"/proc/{pid}/cmdline").read_bytes()[:120])
            except OSError:
                title = "gone"
            out.write(f"==== pid {pid}: {title}\n")
            out.flush()
            try:
                subprocess.run([spy, "dump", "--pid", str(pid)], stdout=out, stderr=subprocess.STDOUT, timeout=60)
            except subprocess.TimeoutExpired:
                out.write("(py-spy dump timed out)\n")
    return str(path)


def hang_where(dump: str, pid: int) -> str:
    """Where the main thread of process `pid` waits, by a py-spy dump: its facefleet
    frames, innermost first ("" when none)."""
    frames, section, main_thread = [], False, False
    for line in Path(dump).read_text(errors="replace").splitlines():
        if line.startswith("==== pid "):
            section = line.startswith(f"==== pid {pid}:")
        elif line.startswith("Thread "):
            main_thread = section and '"MainThread"' in line
        elif main_thread and "(facefleet/" in line:
            frames.append(line.strip())
    return " < ".join(frames[:4])


def done_chunks(state: Path) -> int:
    if not (state / "facefleet.db").exists():
        return 0
    try:
        with JobStore(state, readonly=True) as store:
            return sum(1 for job in store.jobs() for c in store.chunks(job.job_id) if c.state == "done")
    except Exception:  # being created or migrated by a controller starting up
        return 0


def leftovers(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if TMP_MARK in path.name or path.name.startswith(".facefleet-") or path.suffix == ".tmp":
                found.append(str(path))
            elif path.parent.name == "work" and path.parent.parent == root:
                found.append(str(path))  # a job's work dir left in the state dir
    return sorted(found)


def make_inputs(root: Path, jobs: int, frames: int) -> dict[str, Path]:
    data = ROOT / "tests" / "data"
    videos = root / "videos"
    videos.mkdir(parents=True)
    inputs = {}
    for i in range(jobs):
        path = videos / f"clip{i}.mp4"
        make_sample_video(path, data, SampleSpec(width=320, height=240, frames=frames + 8 * (i % 3), gop=8, seed=i))
        inputs[f"clip{i}"] = path
    bad = videos / "notavideo.mp4"
    bad.write_text("this is not a video\n")
    inputs["notavideo"] = bad
    full = videos / "diskfull.mp4"
    full.write_bytes(inputs["clip0"].read_bytes())
    inputs["diskfull"] = full
    return inputs


def reference(root: Path, inputs: list[Path], workers: int, timeout_s: float) -> dict[str, str]:
    """Output checksums of a fault-free one-shot run of the same videos (its own state dir,
    so that it runs the same whether `facefleet run` keeps runs in a store or not)."""
    out = root / "reference"
    ran = subprocess.run(
        [*FACEFLEET, "run", *map(str, inputs), "-o", str(out), "--chunk-frames", str(CHUNK_FRAMES), "--workers", str(workers),
         "--state-dir", str(root / "reference-state"), "-q"],
        capture_output=True, text=True, timeout=timeout_s, env=os.environ | {"RAY_ADDRESS": "local"},
    )
    if ran.returncode != 0:
        raise SystemExit(f"the fault-free run failed:\n{ran.stderr}")
    return {p.name: sha256(p) for p in out.glob("*.mp4")}


def fault_plan(rng: random.Random, faults: int, total_chunks: int, node_kills: int = 0) -> list[tuple[str, int, float]]:
    """(kind, inject once this many chunks are done, then after this many seconds).
    `node_kills` of the `faults` are node kills (the same plan as before without them)."""
    kinds = []
    others = max(0, faults - node_kills)
    while len(kinds) < others:
        cycle = list(KINDS)
        rng.shuffle(cycle)
        kinds += cycle
    kinds = kinds[:others]
    if node_kills:
        kinds += [NODE_KILLED] * node_kills
        rng.shuffle(kinds)
    last = max(1, int(total_chunks * 0.8))
    moments = sorted(rng.randint(1, last) for _ in kinds)
    return [(kind, at, round(rng.uniform(0.0, 0.5), 2)) for kind, at in zip(kinds, moments)]


def fault_run(
    root: Path, seed: int = 1, jobs: int = 6, faults: int = 9, frames: int = 48, workers: int = 2,
    stall_timeout_s: float = 5.0, timeout_s: float = 900.0, nodes: int = 1, stuck_s: float = 120.0,
    simulated: bool = True,
) -> dict:
    """The bench (see the module's docstring). `simulated`: also the simulated jobs (a
    stalling chunk, a GPU returning errors)."""
    t_start = time.monotonic()
    root = Path(root)
    rng = random.Random(seed)
    if nodes > 1 and workers % nodes:
        raise SystemExit(f"--workers {workers} must be a multiple of --nodes {nodes} (one GPU per worker)")
    inputs = make_inputs(root, jobs, frames)
    videos = [inputs[f"clip{i}"] for i in range(jobs)]
    ref = reference(root, videos, workers, timeout_s)

    state, out = root / "state", root / "out"
    kinds: dict[str, str] = {}  # job id -> kind
    options = {"chunk_frames": CHUNK_FRAMES}
    requests = [(build_request([str(p)], str(out), options, output_root=""), "video") for p in videos]
    requests.append((build_request([str(inputs["notavideo"])], str(out), options, output_root=""), "bad input"))
    requests.append((build_request([str(inputs["diskfull"])], str(out), options, output_root=""), "disk full (output)"))
    if simulated:
        requests.append((build_request([simulated_uri(40, 5.0, hang=1, hang_tries=1)], str(out / "sim"), {"chunk_frames": 10}, output_root=""), "stalling chunk (simulated)"))
    if simulated and workers >= 2:
        requests.append((build_request([simulated_uri(80, 2.0, bad_worker=1)], str(out / "sim"), {"chunk_frames": 10}, output_root=""), "GPU errors (simulated)"))
    for request, kind in requests:
        Inbox(state).put("submit", request.payload())
        kinds[request.job_id] = kind
    total_chunks = sum(-(-(frames + 8 * (i % 3)) // CHUNK_FRAMES) for i in range(jobs))

    env = os.environ | {
        "FACEFLEET_STALL_TIMEOUT_S": str(stall_timeout_s),
        FAULT_ENOSPC_ENV: f"{out}/diskfull.mp4",
    }
    cluster = None
    serve_args = ["--workers", str(workers)]
    if nodes > 1:
        # Ray's processes (workers included) get their environment from `ray start`
        env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"} | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        cluster = LoopbackCluster(root, nodes, gpus=workers // nodes, cpus=max(1, workers // nodes), env=env)
        env = cluster.env
        # one worker per GPU (each node has as many CPUs as GPUs): after a node kill, a new life fits the GPUs left
        serve_args = ["--address", cluster.address, "--gpu-share", "1"]
    else:
        env = env | {"RAY_ADDRESS": "local"}  # always an embedded Ray of its own
    lives: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        log = open(root / f"controller-{len(lives) + 1}.log", "wb")
        proc = subprocess.Popen(
            [*FACEFLEET, "serve", "--state-dir", str(state), "--gpu-backend", "simulated", *serve_args, "--until-idle"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        log.close()
        lives.append(proc)
        return proc

    deadline = time.monotonic() + timeout_s
    last_fault_at = None  # wall clock, as the store's attempts
    injected: Counter[str] = Counter()
    log_lines: list[str] = []
    plan = fault_plan(rng, faults, total_chunks, node_kills=nodes - 1 if nodes > 1 else 0)
    hung = False
    dumps: list[str] = []
    progress = {"done": -1, "since": time.monotonic()}

    def stuck() -> bool:
        """No chunk done for stuck_s while the controller runs (or past the deadline)."""
        done, now = done_chunks(state), time.monotonic()
        if done != progress["done"]:
            progress["done"], progress["since"] = done, now
        return now >= deadline or now - progress["since"] > stuck_s

    def worker_pids(killed_nodes: set[int]) -> list[int]:
        if cluster is None:
            return session_processes(controller.pid, PROCESS_TITLES["worker killed"])
        return [pid for node in cluster.live if node not in killed_nodes
                for pid in cluster.processes(node, PROCESS_TITLES["worker killed"])]

    try:
        if cluster is not None:
            cluster.start()
        controller = start()
        worker_kills_this_life = 0
        workers_killed_on: set[int] = set()  # nodes whose worker was killed in this controller life
        for kind, at, delay in plan:
            while done_chunks(state) < at and controller.poll() is None and not stuck():
                time.sleep(0.05)
            if controller.poll() is not None or stuck():
                break  # the jobs ended (or stopped moving) before this fault's moment
            time.sleep(delay)
            if kind == "worker killed" and worker_kills_this_life >= workers:
                kind = "reporter killed"  # keep Ray's restart budget (2 per worker) for stalls
            if kind == NODE_KILLED and (cluster is None or len(cluster.live) < 2):
                kind = "reporter killed"
            if kind == "worker killed" and cluster is not None and not worker_pids(workers_killed_on):
                kind = "reporter killed"  # one per node and life, for the same reason
            what = ""
            if kind == "controller killed":
                kill_controller(controller)
                controller = start()
                worker_kills_this_life = 0
                workers_killed_on = set()
            elif kind == NODE_KILLED:
                node = rng.choice(cluster.live[1:])  # never the head: its GCS is the cluster
                what = f": node {node}, {cluster.kill(node)} processes"
            else:
                pids: list[int] = []
                while not pids and controller.poll() is None and not stuck():
                    if kind == "worker killed":
                        pids = worker_pids(workers_killed_on)
                    elif cluster is None:
                        pids = session_processes(controller.pid, PROCESS_TITLES[kind])
                    else:
                        pids = [pid for node in cluster.live for pid in cluster.processes(node, PROCESS_TITLES[kind])]
                    if not pids:
                        time.sleep(0.1)
                if not pids:
                    break
                pid = rng.choice(pids)
                try:
                    sid = os.getsid(pid)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                if cluster is not None:
                    node = next(n for n in cluster.live if cluster.nodes[n].pid == sid)
                    what = f": on node {node}"
                if kind == "worker killed":
                    worker_kills_this_life += 1
                    if cluster is not None:
                        workers_killed_on.add(node)
            injected[kind] += 1
            last_fault_at = time.time()
            log_lines.append(f"{time.monotonic() - t_start:7.1f} s  {kind}{what} (after {at} chunks done + {delay} s)")
        while controller.poll() is None and not stuck():
            time.sleep(0.2)
        if controller.poll() is None:
            hung = True
            why = f"past the run's limit ({timeout_s:.0f} s)" if time.monotonic() >= deadline else f"no chunk done for {time.monotonic() - progress['since']:.0f} s"
            log_lines.append(f"{time.monotonic() - t_start:7.1f} s  hung: {why}; controller killed")
            ray_pids = [pid for node in cluster.live for pid in cluster.processes(node, b"ray::")] if cluster else session_processes(controller.pid, b"ray::")
            dump = hang_dump(root, "hang-stacks.txt", [controller.pid, *ray_pids])
            if dump:
                dumps.append(dump)
                where = hang_where(dump, controller.pid)
                log_lines.append(f"{'':9}  the controller waits in {where or '(no facefleet frame)'}")
            kill_controller(controller)
    finally:
        for proc in lives:
            if proc.poll() is None:
                kill_controller(proc)
        if cluster is not None:
            cluster.shutdown()
    exits = [proc.returncode for proc in lives]
    lives_out = []
    for i, proc in enumerate(lives, 1):
        text = (root / f"controller-{i}.log").read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        lives_out.append({"life": i, "exit": proc.returncode, "first_line": lines[0] if lines else "",
                          "last_line": lines[-1] if lines else "", "traceback": "Traceback" in text})

    jobs_out = []
    attempts_by_worker: dict[int, Counter[str]] = {}  # worker -> its chunk attempts' states
    workers_after: set[int] = set()  # workers that finished a chunk started a second or more after the last fault
    gpus_by_worker: dict[int, set[str]] = {}  # the GPUs (so the nodes: a simulated GPU's UUID names its node) of its attempts
    gpus_after: set[str] = set()  # GPUs where such a chunk finished
    with JobStore(state, readonly=True) as store:
        integrity = store.integrity_check()
        for job in store.jobs():
            kind = kinds.get(job.job_id, "?")
            [row] = store.inputs(job.job_id)
            output = Path(row.output_uri)
            identical = None
            if job.state == "done":
                if kind == "video":
                    identical = output.is_file() and ref.get(output.name) == sha256(output)
                    outcome = "done" if identical else "lost"  # a done job with wrong bytes counts as lost
                else:
                    outcome = "done"
            elif job.state == "failed" and job.error:
                outcome = "lost" if output.exists() else "failed with reason"  # nothing half-written may be left
            else:
                outcome = "lost"
            attempts = store.attempts(job.job_id)
            for a in attempts:
                attempts_by_worker.setdefault(a.worker, Counter())[a.state] += 1
                if a.gpu_uuid:
                    gpus_by_worker.setdefault(a.worker, set()).add(a.gpu_uuid)
            if last_fault_at is not None:
                after = [a for a in attempts if a.state == "done" and a.started and a.started > last_fault_at + 1]
                workers_after |= {a.worker for a in after}
                gpus_after |= {a.gpu_uuid for a in after if a.gpu_uuid}
            jobs_out.append({
                "job_id": job.job_id, "kind": kind, "input": Path(row.input_uri).name if "://" not in row.input_uri else row.input_uri,
                "state": job.state, "outcome": outcome, "identical": identical, "error": job.error,
                "attempts": len(attempts), "stalled": sum(1 for a in attempts if (a.error or "").startswith("stalled")),
                "gpu_errors": sum(1 for a in attempts if "simulated GPU fault" in (a.error or "")),
                "worker_out": sum(1 for e in store.events(job.job_id) if e.kind == "worker-out"),
                "workers_out": sorted({e.message for e in store.events(job.job_id) if e.kind == "worker-out"}),
            })
    # faults that come from the inputs: counted as they happened (a controller kill can
    # cut a hang short before its stall timeout: the chunk's attempt is then "lost")
    injected["chunk stalled, its worker restarted (simulated hang)"] = sum(j["stalled"] for j in jobs_out)
    injected["disk full (output)"] = sum(1 for j in jobs_out if j["kind"] == "disk full (output)")
    injected["chunk failed on a GPU returning errors (simulated)"] = sum(j["gpu_errors"] for j in jobs_out)
    workers_out = sorted({line for j in jobs_out for line in j["workers_out"]})
    injected["worker taken out of rotation (reported)"] = len(workers_out)
    outcomes = Counter(j["outcome"] for j in jobs_out)
    return {
        "seed": seed, "jobs_asked": jobs, "faults_asked": faults, "workers": workers, "nodes": nodes, "frames": frames,
        "stall_timeout_s": stall_timeout_s, "plan": plan, "log": log_lines,
        "injected": dict(injected), "controller_lives": len(lives), "controller_exits": exits, "lives": lives_out, "jobs": jobs_out,
        "workers_out": workers_out, "attempts_by_worker": {w: dict(c) for w, c in sorted(attempts_by_worker.items())},
        "workers_done_after_last_fault": sorted(workers_after),
        "gpus_by_worker": {w: sorted(g) for w, g in sorted(gpus_by_worker.items())},
        "gpus_done_after_last_fault": sorted(gpus_after),
        "done": outcomes["done"], "failed": outcomes["failed with reason"], "lost": outcomes["lost"] + hung,
        "hung": hung, "hang_dumps": dumps, "ray_temp": str(cluster.temp) if cluster else None, "integrity": integrity, "leftovers": leftovers(out, state),
        "seconds": round(time.monotonic() - t_start, 1),
    }


def describe_ray(report: dict) -> str:
    nodes = report.get("nodes", 1)
    if nodes > 1:
        return (f"a Ray cluster of {nodes} nodes on 127.0.0.1 started by the bench, {report['workers'] // nodes} fake GPU(s) "
                f"each; {report['workers']} worker(s) running on the CPU with simulated GPU metrics")
    return f"{report['workers']} CPU worker(s) with simulated GPU metrics, embedded Ray"


def run_section(report: dict, command: str, heading: str) -> list[str]:
    """One run: its figures, faults as injected, the controller's lives and the jobs."""
    kinds = ["video", "bad input", "disk full (output)", "stalling chunk (simulated)", "GPU errors (simulated)"]
    lines = [
        heading,
        "",
        f"Produced by `{command}` (2 CPU cores, no GPU; {describe_ray(report)}): {report['seconds']} s, "
        f"{report['controller_lives']} controller lives, stall timeout {report['stall_timeout_s']} s, "
        f"hung: {'yes' if report['hung'] else 'no'}, store integrity check: "
        f"{'clean' if not report['integrity'] else '; '.join(report['integrity'])}, temporary files left: {len(report['leftovers'])}.",
        "",
        "| fault | injected |",
        "|---|---:|",
    ]
    for kind, count in report["injected"].items():
        lines.append(f"| {kind} | {count} |")
    lines += ["", "| jobs (kind) | jobs | done (output identical to the fault-free run) | failed with reason | lost |", "|---|---:|---:|---:|---:|"]
    for kind in kinds:
        mine = [j for j in report["jobs"] if j["kind"] == kind]
        if mine:
            count = Counter(j["outcome"] for j in mine)
            lines.append(f"| {kind} | {len(mine)} | {count['done']} | {count['failed with reason']} | {count['lost']} |")
    lines.append(f"| **all** | **{len(report['jobs'])}** | **{report['done']}** | **{report['failed']}** | **{report['lost']}** |")
    lines += ["", "Faults as injected (seconds since the bench started):", "", "```", *report["log"], "```"]
    if report.get("lives"):
        lines += ["", "Controller lives (exit code, -9: killed by the bench; the first line of its log, and the last after an error):", ""]
        for life in report["lives"]:
            last = f"; last line: {life['last_line']}" if life["exit"] not in (0, -9) and life.get("last_line") else ""
            lines.append(f"{life['life']}. exit {life['exit']}: {life['first_line']}{last}" + ("; a traceback in its log" if life["traceback"] else ""))
    if report.get("workers_out"):
        lines += ["", "Workers taken out of rotation (the controller's words):", "", *[f"- {line}" for line in report["workers_out"]]]
    lines += ["", "Jobs:", "", "| kind | input | state | attempts | reason |", "|---|---|---|---:|---|"]
    for j in report["jobs"]:
        reason = (j["error"] or "").replace("|", "\\|")
        lines.append(f"| {j['kind']} | {j['input']} | {j['state']} | {j['attempts']} | {reason} |")
    return lines


def markdown(reports: list[dict], command: str, commands: list[str]) -> str:
    """The whole result: one run as before; several with a summary table first."""
    if len(reports) == 1:
        return "\n".join(run_section(reports[0], commands[0], "# Faults in a multi-job run")) + "\n"
    lines = [
        "# Faults in a multi-job run",
        "",
        f"Produced by `{command}` (2 CPU cores, no GPU): {len(reports)} runs, one per line; each one's details below.",
        "",
        "| nodes | faults | seed | s | faults injected: node / worker / reporter / controller | controller lives | jobs | done | failed with reason | lost | hung | store | temporary files left |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in reports:
        inj = r["injected"]
        faults = " / ".join(str(inj.get(k, 0)) for k in (NODE_KILLED, "worker killed", "reporter killed", "controller killed"))
        lines.append(
            f"| {r['nodes']} | {r['faults_asked']} | {r['seed']} | {r['seconds']} | {faults} | {r['controller_lives']} | {len(r['jobs'])} | {r['done']} | "
            f"{r['failed']} | {r['lost']} | {'yes' if r['hung'] else 'no'} | {'sound' if not r['integrity'] else 'NOT sound'} | {len(r['leftovers'])} |"
        )
    for r, cmd in zip(reports, commands):
        lines += ["", *run_section(r, cmd, f"## {r['nodes']} node(s), {r['faults_asked']} faults, seed {r['seed']}")]
    return "\n".join(lines) + "\n"


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def listed(values: list[int]) -> str:
    return ",".join(map(str, values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int_list, default=[1], help="a seed, or several (1,2,3): one run each")
    parser.add_argument("--jobs", type=int, default=6, help="video jobs (plus a bad input, a full disk and simulated ones)")
    parser.add_argument("--faults", type=int_list, default=[9], help="kills of a worker, the reporter, the controller or (--nodes 2+) a node; several (9,1): one run each")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nodes", type=int_list, default=[1],
                        help="1: embedded Ray; 2+: a loopback cluster of this many nodes, nodes-1 of them killed; several (1,2): one run each")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--stall-timeout-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=1200.0, help="limit of one run")
    parser.add_argument("--stuck-s", type=float, default=120.0, help="hung: no chunk done this long while the controller runs")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "faults")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "faults.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # stop what it started (finally blocks)

    shutil.rmtree(args.work, ignore_errors=True)
    base = f"python bench/faults.py --jobs {args.jobs} --workers {args.workers}"
    if args.frames != 48:
        base += f" --frames {args.frames}"
    combos = [(n, f, seed) for n in args.nodes for f in args.faults for seed in args.seed]
    reports, commands = [], []
    for nodes, faults, seed in combos:
        root = args.work if len(combos) == 1 else args.work / f"nodes{nodes}-faults{faults}-seed{seed}"
        reports.append(fault_run(root, seed, args.jobs, faults, args.frames, args.workers, args.stall_timeout_s,
                                 args.timeout_s, nodes, args.stuck_s))
        commands.append(f"{base} --faults {faults} --seed {seed}" + (f" --nodes {nodes}" if nodes > 1 else ""))
        r = reports[-1]
        print(f"nodes {nodes}, faults {faults}, seed {seed}: {r['done']} done, {r['failed']} failed with reason, "
              f"{r['lost']} lost, hung: {r['hung']} ({r['seconds']} s)", flush=True)
    command = f"{base} --faults {listed(args.faults)} --seed {listed(args.seed)}" + (f" --nodes {listed(args.nodes)}" if args.nodes != [1] else "")
    text = markdown(reports, command, commands)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "runs": reports}, indent=1, default=str))
    print(text)
    bad = any(r["lost"] or r["hung"] or r["integrity"] or r["leftovers"] for r in reports)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
