"""The controller under load and races, with real processes and a real store.

One `facefleet serve --gpu-backend simulated` process (embedded Ray on 127.0.0.1, one CPU
worker running two chunks at once) serves every test of this module from one state dir;
each test waits for its own jobs to end, so the next one finds the controller idle.
Jobs reach it as `facefleet submit` does (build_request + Inbox.put, or the CLI itself);
what they did is read back from the store (JobStore(readonly=True)) and the CLI.

`simulated://FRAMES?ms=MS` inputs are fake videos whose chunks sleep MS per frame and write
nothing; the cancel race uses a real 20-frame video so that its output file and its work
dir are real.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import psutil
import pytest

from facefleet.jobs.store import Inbox, JobStore
from facefleet.jobs.submit import build_request, wait_for_answer

DATA = Path(__file__).parent / "data"
FACEFLEET = str(Path(sys.executable).with_name("facefleet"))
FINAL = ("done", "failed", "cancelled")
ENV = {k: v for k, v in os.environ.items() if k not in ("FACEFLEET_STATE", "FACEFLEET_OUTPUT_ROOT")}


# --- the controller -------------------------------------------------------------------------

class Serve:
    def __init__(self, state: Path, process: subprocess.Popen, log: Path):
        self.state, self.process, self.log = state, process, log

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> None:
        assert self.process.poll() is None, f"the controller exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}"


def _default_sigint() -> None:
    # a shell without job control starts background commands with SIGINT ignored, and Python
    # keeps it ignored: restore it so that serve's own Ctrl-C path (KeyboardInterrupt) runs
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _session_processes(sid: int) -> list[psutil.Process]:
    """The processes of the session the serve process leads: Ray's workers get process
    groups of their own, but stay in this session."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def stop_serve(serve: Serve) -> None:
    """Ctrl-C, then SIGKILL to its process group and to whatever is left of its session."""
    pid = serve.pid
    if serve.process.poll() is None:
        serve.process.send_signal(signal.SIGINT)
        try:
            serve.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for proc in _session_processes(pid):
        try:
            proc.kill()
        except psutil.Error:
            pass
    serve.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _session_processes(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p.pid for p in _session_processes(pid)]
    assert not left, f"processes of the controller's session still running: {left}"


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    state, log = root / "state", root / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [FACEFLEET, "serve", "--state-dir", str(state), "--gpu-backend", "simulated"],
            cwd=root, env=ENV, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_default_sigint,
        )
    server = Serve(state, process, log)
    try:
        deadline = time.monotonic() + 90
        while "controller on" not in log.read_text():
            server.alive()
            assert time.monotonic() < deadline, f"the controller did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield server
        server.alive()
    finally:
        stop_serve(server)
    text = log.read_text()
    assert "controller stopped" in text, text[-3000:]  # it stopped through its own Ctrl-C path
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture
def store(serve):
    reader = JobStore(serve.state, readonly=True)
    yield reader
    reader.close()


# --- helpers -----------------------------------------------------------------------------

def submit(state: Path, uri: str, outdir: Path, chunk_frames: int, priority: int = 0, name: str | None = None) -> str:
    """What `facefleet submit` does, minus the process start: returns the job id."""
    request = build_request([uri], str(outdir), {"chunk_frames": chunk_frames}, priority, name, output_root="")
    Inbox(state).put("submit", request.payload())
    return request.job_id


def cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run([FACEFLEET, *args], env=ENV, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done, time.monotonic() - t0


def wait_until(predicate, timeout: float, what: str, serve: Serve | None = None, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if serve is not None:
            serve.alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def job_state(store: JobStore, job_id: str) -> str | None:
    row = store.job(job_id)
    return row.state if row else None


def wait_final(store: JobStore, serve: Serve, job_id: str, timeout: float = 60) -> str:
    return wait_until(lambda: job_state(store, job_id) in FINAL and job_state(store, job_id), timeout, f"job {job_id} to end", serve)


def done_chunks(store: JobStore, job_id: str):
    return [c for c in store.chunks(job_id) if c.state == "done"]


def work_dirs(state: Path, job_id: str) -> list[Path]:
    return sorted((state / "work").glob(f"{job_id}-*"))


def describe(store: JobStore, state: Path, job_id: str) -> str:
    """A job's events, chunks and work dirs, for a failure message."""
    lines = [f"job {job_id}: {job_state(store, job_id)}"]
    lines += [f"  event {e.time:.3f} {e.kind}: {e.message}" for e in store.events(job_id)]
    lines += [f"  chunk {c.index}: {c.state} started {c.started} ended {c.ended}" for c in store.chunks(job_id)]
    for path in work_dirs(state, job_id):
        lines.append(f"  work dir {path.name}: {sorted((p.name, p.stat().st_mtime) for p in path.iterdir())} (dir mtime {path.stat().st_mtime:.3f})")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> Path:
    """A real 20-frame 160x96 video, one face, no audio: one job of it runs in about 0.5 s."""
    from facefleet.samples import SampleSpec, make_sample_video

    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    make_sample_video(path, DATA, SampleSpec(width=160, height=96, frames=20, faces=1, audio=False, gop=10, bframes=0, fps=Fraction(25)))
    return path


# --- 1. many small jobs at once -----------------------------------------------------------

JOBS = 200
THREADS = 8
CLI_JOBS = 4
STATUS_LIMIT_S = 1.0
# RSS growth of the serve process from the first job done to the end of the burst (by then
# all 204 jobs were taken and planned: the controller takes the whole inbox in one step, so
# what grows afterwards is what each finished job leaves behind). Measured on this 2-core
# machine: +0.9 to +1.4 MB over six runs, about 5 kB per job (the runner's outcome and the
# dispatcher's bookkeeping of every chunk, SQLite's page cache). 20 MB is ~15 times that:
# room for allocator noise (Ray's driver threads, pyarrow's pool after 204 job reports),
# and it still catches a leak of 100 kB per job (a report table or a plan kept per job).
RSS_GROWTH_LIMIT = 20 * 2**20


def test_200_jobs_at_once_status_answers_fast_memory_bounded(serve, store, tmp_path):
    out = tmp_path / "out"
    uri = "simulated://20?ms=1"
    rss: list[tuple[float, int]] = []
    sampling = threading.Event()
    process = psutil.Process(serve.pid)

    def sample():
        while not sampling.is_set():
            rss.append((time.time(), process.memory_info().rss))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ids: list[list[str]] = [[] for _ in range(THREADS)]

    def submitter(k: int):
        for n in range(JOBS // THREADS):
            ids[k].append(submit(serve.state, uri, out, 10, name=f"load-{k}-{n}"))

    t0 = time.time()
    clis = [
        subprocess.Popen(
            [FACEFLEET, "submit", uri, "--chunk-frames", "10", "-o", str(out), "--state-dir", str(serve.state), "--wait", "60", "--name", f"cli-{n}"],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        for n in range(CLI_JOBS)
    ]
    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.time() - t0
    all_ids = [job for chunk in ids for job in chunk]
    assert len(set(all_ids)) == JOBS

    # while it works through them: `facefleet status` of a job, now and then (once the CLI
    # submits were answered: four interpreters starting at once are not the controller's load)
    latencies: list[float] = []
    targets = [all_ids[0], all_ids[-1], all_ids[JOBS // 2], ids[3][5], ids[5][-1]]
    first_done = None
    done_at_status = []
    while True:
        done = {j.job_id for j in store.jobs("done")}
        if done and first_done is None:
            first_done = time.time()
        if len(done) >= JOBS + CLI_JOBS:
            break
        serve.alive()
        assert time.time() - t0 < 120, f"only {len(done)} of {JOBS + CLI_JOBS} jobs done after 120 s"
        target = targets[len(latencies) % len(targets)]
        answered = all(p.poll() is not None for p in clis)
        if answered and job_state(store, target) is not None and len(latencies) < 10:
            result, took = cli("status", target, "--state-dir", str(serve.state))
            assert result.returncode == 0, result.stderr
            assert f"job {target}" in result.stdout
            latencies.append(took)
            done_at_status.append(len(done))
            time.sleep(0.25)
        else:
            time.sleep(0.1)
    elapsed = time.time() - t0
    time.sleep(1.0)  # a second of the idle controller after the last job
    sampling.set()
    sampler.join()

    for p in clis:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        assert "queued job" in stdout, stdout
    jobs = store.jobs()
    load = [j for j in jobs if j.name.startswith(("load-", "cli-"))]
    assert len(load) == JOBS + CLI_JOBS
    assert {j.state for j in load} == {"done"}
    assert all(store.chunk_counts(j.job_id) == {"pending": 0, "running": 0, "done": 2, "failed": 0} for j in load)
    assert not Inbox(serve.state).pending()
    assert store.integrity_check() == []

    assert len(latencies) >= 5, f"status asked only {len(latencies)} times in {elapsed:.1f} s"
    assert max(latencies) < STATUS_LIMIT_S, (latencies, done_at_status)
    after = [r for t, r in rss if t >= first_done]
    growth = after[-1] - after[0]
    peak = max(r for _, r in rss)
    print(
        f"\n{JOBS + CLI_JOBS} jobs: submitted in {submitted:.2f} s, all done after {elapsed:.1f} s; "
        f"status {len(latencies)}x: max {max(latencies):.3f} s, mean {sum(latencies) / len(latencies):.3f} s "
        f"(jobs done then: {done_at_status}, load average {os.getloadavg()[0]:.1f}); "
        f"serve RSS idle {rss[0][1] / 2**20:.1f} MB, at the first job done {after[0] / 2**20:.1f} MB, at the end "
        f"{after[-1] / 2**20:.1f} MB (growth {growth / 2**20:+.1f} MB, "
        f"peak {peak / 2**20:.1f} MB, {len(rss)} samples)"
    )
    assert growth < RSS_GROWTH_LIMIT, f"serve RSS grew {growth / 2**20:.1f} MB"


# --- 2. two submits racing ------------------------------------------------------------------

def test_two_submit_processes_racing(serve, store, tmp_path):
    uri = "simulated://40?ms=2"
    commands = [
        [FACEFLEET, "submit", uri, "--chunk-frames", "10", "-o", str(tmp_path / f"out{n}"), "--state-dir", str(serve.state), "--wait", "30"]
        for n in range(2)
    ]
    go = threading.Barrier(2)
    results: list[subprocess.CompletedProcess | None] = [None, None]

    def run(n: int):
        go.wait()
        results[n] = subprocess.run(commands[n], env=ENV, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = []
    for result in results:
        assert result is not None and result.returncode == 0, result and result.stderr
        job_id, rest = result.stdout.strip().split(" ", 1)
        assert rest.startswith(f"queued job {job_id}"), result.stdout
        ids.append(job_id)
    assert ids[0] != ids[1]
    for job_id in ids:
        assert wait_final(store, serve, job_id) == "done"
        assert len(done_chunks(store, job_id)) == 4
    assert store.integrity_check() == []


# --- 3. cancel racing completion --------------------------------------------------------------

def test_cancel_racing_completion(serve, store, tmp_path, tiny_video):
    """Each cancel lands before, around or after the job's end: the job is either cancelled
    (no output, no work dir) or was already done (output there) — nothing in between."""
    # how long one job takes, inbox to done, on this machine
    t0 = time.monotonic()
    first = submit(serve.state, str(tiny_video), tmp_path / "first", 10)
    assert wait_final(store, serve, first) == "done"
    took = time.monotonic() - t0
    assert (tmp_path / "first" / "tiny.mp4").stat().st_size > 0
    outcomes = []
    # cancel sent that long (x the time one job takes) after the submit; None: once it is done
    for n, fraction in enumerate([0.0, 0.5, 0.8, 0.9, 1.0, 1.1, 1.25, None]):
        outdir = tmp_path / f"out{n}"
        output = outdir / "tiny.mp4"
        job_id = submit(serve.state, str(tiny_video), outdir, 10)
        if fraction is None:
            assert wait_final(store, serve, job_id) == "done"
            result, _ = cli("cancel", job_id, "--state-dir", str(serve.state))
            assert result.returncode == 1, result.stdout + result.stderr
            ok, message = False, result.stdout.strip()
        else:
            time.sleep(fraction * took)
            request = Inbox(serve.state).put("cancel", {"job": job_id})
            answer = wait_for_answer(serve.state, request, 30)
            assert answer is not None, "the controller did not answer the cancel"
            ok, message, _ = answer
        state = wait_final(store, serve, job_id)
        if state == "cancelled":
            assert ok, message
            assert not output.exists(), f"cancelled job {job_id} left its output"
            assert [i.state for i in store.inputs(job_id)] == ["cancelled"]
            # the work dir goes once the chunks called off have returned: one may still have
            # been writing its segment when the job was recorded cancelled
            try:
                wait_until(lambda: not work_dirs(serve.state, job_id), 5, f"the work dir of {job_id} to go")
            except AssertionError:
                raise AssertionError(f"cancel at {fraction} x {took:.2f} s: {describe(store, serve.state, job_id)}") from None
        else:
            assert state == "done", f"job {job_id} ended {state}: {store.job(job_id).error}"
            assert not ok and message == f"job {job_id} is already done", message
            assert output.stat().st_size > 0
            assert not work_dirs(serve.state, job_id)
        outcomes.append((fraction, state, len(done_chunks(store, job_id))))
        assert store.integrity_check() == []
    print(f"\none job takes {took:.2f} s; cancel at fraction of it -> outcome (chunks done): {outcomes}")
    states = [state for _, state, _ in outcomes]
    assert states[0] == "cancelled" and states[-1] == "done", outcomes


# --- 4. cancel in the middle ------------------------------------------------------------------

def test_cancel_in_the_middle_of_a_long_job(serve, store, tmp_path):
    total = 40
    job_id = submit(serve.state, "simulated://2000?ms=5", tmp_path / "out", 50)  # 40 chunks of 0.25 s
    wait_until(lambda: len(done_chunks(store, job_id)) >= 3, 30, "3 chunks done", serve)
    result, _ = cli("cancel", job_id, "--state-dir", str(serve.state))
    answered = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cancelled" in result.stdout
    assert wait_final(store, serve, job_id, timeout=5) == "cancelled"
    ended = time.time()
    requested = next(e.time for e in store.events(job_id) if e.kind == "cancel")
    time.sleep(1.5)
    chunks = store.chunks(job_id)
    done = [c for c in chunks if c.state == "done"]
    assert 3 <= len(done) < total
    assert all(c.ended <= requested + 1.0 for c in done), [(c.index, c.ended - requested) for c in done]
    assert store.chunk_counts(job_id)["done"] == len(done)  # nothing more, a second and a half later
    assert store.job(job_id).error == "cancelled"
    assert not work_dirs(serve.state, job_id)
    assert store.integrity_check() == []
    print(
        f"\ncancelled after {len(done)}/{total} chunks; cancelled state {ended - answered:+.2f} s after the CLI's answer; "
        f"last chunk ended {max(c.ended for c in done) - requested:+.2f} s from the cancel"
    )


# --- 5. fair share and priority -----------------------------------------------------------------

def test_small_job_shares_with_a_huge_one_and_priority_goes_first(serve, store, tmp_path):
    huge = submit(serve.state, "simulated://4000?ms=2", tmp_path / "huge", 20, name="huge")  # 200 chunks of 40 ms
    wait_until(lambda: len(done_chunks(store, huge)) >= 2, 30, "the huge job to run", serve)
    small_at = time.time()
    small = submit(serve.state, "simulated://20?ms=1", tmp_path / "small", 10, name="small")
    assert wait_final(store, serve, small, timeout=30) == "done"
    first_small = min(c.ended for c in store.chunks(small))
    huge_meanwhile = [c for c in done_chunks(store, huge) if small_at < c.ended < first_small]
    # two huge chunks in flight and two handed to the dispatcher (feed 2) when the small job
    # arrives, then the two jobs take turns; one or two more end while its request is taken.
    # First come, first served would make it wait for the ~200 chunks left.
    assert len(huge_meanwhile) <= 8, f"{len(huge_meanwhile)} chunks of the huge job ended before the small job's first"

    urgent_at = time.time()
    urgent = submit(serve.state, "simulated://100?ms=2", tmp_path / "urgent", 10, priority=5, name="urgent")  # 10 chunks
    assert wait_final(store, serve, urgent, timeout=30) == "done"
    urgent_chunks = store.chunks(urgent)
    urgent_start, urgent_end = min(c.started for c in urgent_chunks), max(c.ended for c in urgent_chunks)
    interleaved = [c for c in done_chunks(store, huge) if urgent_start < c.started < urgent_end]
    huge_left = len(store.chunks(huge)) - len(done_chunks(store, huge))
    cancel, _ = cli("cancel", huge, "--state-dir", str(serve.state))
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert wait_final(store, serve, huge) == "cancelled"
    assert store.integrity_check() == []
    print(
        f"\nsmall job: first chunk {first_small - small_at:.2f} s after its submit, {len(huge_meanwhile)} huge chunk(s) ended meanwhile; "
        f"priority 5 job: first chunk started {urgent_start - urgent_at:.2f} s after its submit, all 10 done in "
        f"{urgent_end - urgent_start:.2f} s, {len(interleaved)} huge chunk(s) started in between; {huge_left} huge chunks still pending then"
    )
    assert huge_left > 50  # the huge job still had plenty pending when the urgent one ran
    # at most the chunks already handed to the dispatcher (feed: workers x chunks per worker = 2)
    assert len(interleaved) <= 2, [(c.index, c.started - urgent_start) for c in interleaved]


# --- 6. retry of a permanent failure -------------------------------------------------------------

def test_retry_runs_only_chunks_not_done_and_a_permanent_failure_fails_again(serve, store, tmp_path):
    job_id = submit(serve.state, "simulated://100?ms=1&fail=3", tmp_path / "out", 10)  # chunk 3 always fails
    assert wait_final(store, serve, job_id) == "failed"
    job = store.job(job_id)
    assert job.error.startswith("chunk 3 (frames 30-39) failed 3 times"), job.error
    assert "simulated failure of chunk 3" in job.error
    before = {c.index: c.ended for c in done_chunks(store, job_id)}
    assert 3 not in before and before

    result, _ = cli("retry", job_id, "--state-dir", str(serve.state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"job {job_id} queued again: {10 - len(before)} chunk(s) to run"
    retried = next(e.time for e in store.events(job_id) if e.kind == "retried")
    assert wait_final(store, serve, job_id) == "failed"
    after = {c.index: c.ended for c in done_chunks(store, job_id)}
    assert {i: after[i] for i in before} == before  # done chunks did not run again
    assert all(after[i] > retried for i in after.keys() - before.keys())  # the rest ran after the retry
    assert 3 not in after

    job = store.job(job_id)
    assert job.error.startswith("chunk 3 (frames 30-39) failed 3 times"), job.error
    assert [(i.state, i.error) for i in store.inputs(job_id)] == [("failed", job.error)]
    kinds = [e.kind for e in store.events(job_id)]
    assert kinds.count("failed") == 2 and kinds.count("retried") == 1, kinds
    # The store says the failure is permanent through the job's and the input's error ("failed
    # 3 times"), twice. Not through chunk 3's row: the controller records neither chunk starts
    # nor chunk failures (chunk_started/chunk_failed), so that row stays pending, attempts 0.
    chunk3 = store.chunks(job_id)[3]
    assert chunk3.state != "done"
    assert store.integrity_check() == []
    print(f"\nretry: {len(before)} chunks kept, {len(after) - len(before)} ran again; chunk 3 in the store: {chunk3.state}, attempts {chunk3.attempts}")


# --- 7. a state dir that cannot be written ---------------------------------------------------------

NAMESPACE_SCRIPT = r"""
set -u
mkdir -p "$MNT"
mount -t tmpfs -o size=256k tmpfs "$MNT" || exit 97
mkdir "$MNT/state"
case "$HOW" in
  readonly) mount -o remount,ro "$MNT" || exit 98 ;;
  full) dd if=/dev/zero of="$MNT/filler" bs=4k 2>/dev/null; true ;;
esac
"$FACEFLEET" submit 'simulated://20?ms=1' -o "$OUT" --state-dir "$MNT/state" --wait 0 >"$MNT.stdout" 2>"$MNT.stderr"
echo "$?" >"$MNT.rc"
find "$MNT/state" >"$MNT.left"
"""


@pytest.mark.parametrize("how", ["readonly", "full"])
def test_submit_into_a_state_dir_that_cannot_be_written(tmp_path, how):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    mnt = tmp_path / "mnt"
    env = {**ENV, "MNT": str(mnt), "HOW": how, "FACEFLEET": FACEFLEET, "OUT": str(tmp_path / "out")}
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    probe = subprocess.run([*command, 'mkdir -p "$MNT" && mount -t tmpfs tmpfs "$MNT"'], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    run = subprocess.run([*command, NAMESPACE_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rc = int(Path(f"{mnt}.rc").read_text())
    stderr = Path(f"{mnt}.stderr").read_text()
    stdout = Path(f"{mnt}.stdout").read_text()
    left = Path(f"{mnt}.left").read_text().split()
    assert rc == 2, (rc, stdout, stderr)
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    expected = "is read-only" if how == "readonly" else "is full"
    assert expected in stderr and f"{mnt}/state" in stderr, stderr
    queued = [p for p in left if p.endswith(".json") or ".tmp" in p]
    assert queued == [], left  # nothing queued, no temporary file left
    print(f"\n{how}: {stderr.strip()}")
