"""The fault-free reference of bench/faults.py, for the tests that run its short form.

`fault_run` starts with `reference()`: a one-shot `facefleet run` of the bench's videos
(its own embedded Ray, about 12 s on the 2-core machine) whose outputs' checksums the
faulted run's outputs must equal. The tests give it `local_reference` instead: the same
jobs (the same chunks, 8 frames each, the same pipeline and encoding) run in this process
without Ray, as tests/localrun.py does, and kept for the session by the inputs' bytes, so
that the two tests that run the bench on the same videos (test_faults.py, one worker;
test_faults_bench.py, two workers on two nodes) compute it once. A segment is the same
bytes wherever its chunk runs (encoder threads are fixed, tests/test_determinism.py), so
these are the checksums the command gives (checked on 2026-12-07: equal for 1 and 2
workers); were they ever not, the faulted run's video jobs would count as lost and the
test would fail, not pass. `reference_meanwhile` computes it in a thread while the faulted
run goes on (the run reads it only once its controller has ended).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from localrun import run_local

from facefleet.jobs.spec import JobSpec

_references: dict[tuple, dict[str, str]] = {}


def local_reference(root: Path, inputs: list[Path], workers: int, timeout_s: float) -> dict[str, str]:
    """What faults.reference returns (output name -> sha256) for these inputs, computed in
    this process; `workers` and `timeout_s` do not change a fault-free run's bytes."""
    from faults import CHUNK_FRAMES, sha256

    key = (CHUNK_FRAMES, tuple((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in inputs))
    if key not in _references:
        out = Path(tempfile.mkdtemp(prefix="reference-", dir=root))
        try:
            sums = {}
            for path in inputs:
                output = out / path.name
                run_local(JobSpec(f"reference-{path.stem}", str(path), str(output), chunk_frames=CHUNK_FRAMES))
                sums[output.name] = sha256(output)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        _references[key] = sums
    return dict(_references[key])


class _Later:
    """The reference's checksums once its thread is done (faults.fault_run reads them with
    .get, at the end); the thread's error, if any, is raised there."""

    def __init__(self, future: Future):
        self._future = future

    def get(self, name: str, default=None):
        return self._future.result().get(name, default)


@contextmanager
def reference_meanwhile(monkeypatch) -> Iterator[None]:
    """faults.reference is local_reference, run in a thread of its own; waited for on exit."""
    import faults

    with ThreadPoolExecutor(1, thread_name_prefix="fault-reference") as pool:

        def reference(root: Path, inputs: list[Path], workers: int, timeout_s: float) -> _Later:
            return _Later(pool.submit(local_reference, Path(root), list(inputs), workers, timeout_s))

        monkeypatch.setattr(faults, "reference", reference)
        yield
