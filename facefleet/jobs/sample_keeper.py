"""The controller's GPU sample log, kept in a thread of its own.

Every few seconds the reporters' new samples are fetched and appended to the state dir's
sample log (report.tables.SampleLog, Parquet files written whole and renamed). That costs
a Ray round trip and a file write with its flush to disk; done in the controller's loop,
it held the loop for 0.4 s per 7 s job on the H100 machine. Here it runs beside the loop,
which never waits on it except in `flush` (at a job's end, before its report is written).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

EVERY_S = 5.0
FETCH_TIMEOUT_S = 5.0


class SampleKeeper:
    """Fetches the reporters' samples every `every_s` seconds into the sample log;
    `on_samples(samples)` sees each new batch (the Prometheus GPU series).

    `seconds`: CPU seconds spent keeping samples (the thread's CPU time, and the time
    of `flush` calls), for the job's monitoring cost."""

    def __init__(self, state_dir: Path, reporters: dict, every_s: float = EVERY_S, on_samples=None):
        from facefleet.report.tables import SampleLog

        self.reporters = reporters
        self.every_s = every_s
        self.on_samples = on_samples
        self.log = SampleLog(state_dir)
        self.seconds = 0.0
        self._since = time.time()
        self._lock = threading.Lock()  # one fetch-and-append at a time (the thread, or flush)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.reporters and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="facefleet-samples", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            t0 = time.thread_time()
            self._keep()
            self._count(time.thread_time() - t0)

    def flush(self) -> None:
        """Fetch and log what the reporters have now (waits for a fetch under way)."""
        if not self.reporters:
            return
        t0 = time.perf_counter()
        self._keep()
        self._count(time.perf_counter() - t0)

    def _count(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds

    def stop(self) -> None:
        """Stop the thread, then keep the last samples (once: later calls do nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=FETCH_TIMEOUT_S + 5)
            self._thread = None
        self.flush()

    def read(self, since: float, until: float):
        return self.log.read(since, until)

    def _keep(self) -> None:
        import ray

        with self._lock:
            try:
                batches = ray.get([r.samples.remote(self._since) for r in self.reporters.values()], timeout=FETCH_TIMEOUT_S)
            except Exception:
                return  # a reporter restarting: its samples come with the next fetch
            samples = [s for batch in batches for s in batch]
            if not samples:
                return
            self._since = max(s.time for s in samples)
            try:
                self.log.append(samples)
            except OSError:
                pass  # a full disk: the samples are lost, the jobs are not
            if self.on_samples is not None:
                self.on_samples(samples)
