"""The durable job store: jobs, their inputs and chunks, events and answers, in SQLite.

One writer, the controller, and any number of readers (status, list, logs) in other
processes. submit, cancel and retry reach the controller through the `Inbox`: JSON
request files renamed into `state_dir/inbox/`. The schema, states, transitions and the
durability choices are described in docs/job-store.md.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facefleet.errors import FacefleetError

SCHEMA_VERSION = 2
DB_NAME = "facefleet.db"
INBOX_DIR = "inbox"
BUSY_TIMEOUT_S = 10.0  # a reader may briefly hold a lock the writer needs (WAL checkpoint), and back
PREFIX_MIN = 4  # shortest job id prefix accepted by JobStore.job
LOST = "the controller stopped while it ran"

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
INPUT_STATES = ("pending", "running", "done", "failed", "cancelled")
CHUNK_STATES = ("pending", "running", "done", "failed")
# one send of a chunk to a worker: running, then done, failed, stopped (called off: another
# copy finished first, or its job ended) or lost (the controller stopped while it ran)
ATTEMPT_STATES = ("running", "done", "failed", "stopped", "lost")
FINAL_JOB_STATES = ("done", "failed", "cancelled")
RETRYABLE = ("failed", "cancelled")
# set_job_state's transitions; failed|cancelled -> queued only through retry(), which also resets chunks
JOB_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "cancelled", "failed"),
    "running": ("done", "failed", "cancelled", "queued"),
    "done": (),
    "failed": (),
    "cancelled": (),
}


class StoreError(FacefleetError):
    """The job store or the inbox cannot do what was asked; the message is one line."""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str
    spec: dict
    state: str
    priority: int
    created: float
    started: float | None
    finished: float | None
    error: str | None
    seq: int  # submission order


@dataclass(frozen=True)
class InputRow:
    job_id: str
    index: int
    input_uri: str
    output_uri: str
    state: str  # one of INPUT_STATES
    frames: int
    error: str | None


@dataclass(frozen=True)
class ChunkRow:
    job_id: str
    input_index: int
    index: int
    start: int
    frames: int
    state: str
    attempts: int
    worker: int | None
    node: str | None
    gpu_uuid: str | None
    started: float | None
    ended: float | None
    seconds: dict
    segment_uri: str
    checksum: str | None
    error: str | None
    faces: int = 0  # faces found in the chunk's frames (when done)
    stage_times: dict = field(default_factory=dict)  # stage -> [first, last] wall-clock time it worked on the chunk


@dataclass(frozen=True)
class AttemptRow:
    """One send of a chunk to a worker (schema version 2)."""

    job_id: str
    input_index: int
    index: int
    attempt: int  # 1 for the first send
    worker: int | None
    node: str | None
    gpu_uuid: str | None
    started: float | None
    ended: float | None
    state: str  # one of ATTEMPT_STATES
    error: str | None


@dataclass(frozen=True)
class EventRow:
    id: int
    job_id: str
    time: float
    kind: str
    message: str


@dataclass(frozen=True)
class Request:
    request_id: str
    kind: str
    payload: dict
    time: float
    path: Path


# --- schema ------------------------------------------------------------------------------

SCHEMA_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        error TEXT)""",
    "CREATE INDEX jobs_dispatch ON jobs (priority DESC, seq)",
    """CREATE TABLE inputs (
        job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        input_uri TEXT NOT NULL,
        output_uri TEXT NOT NULL,
        state TEXT NOT NULL,
        frames INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        PRIMARY KEY (job_id, idx)) WITHOUT ROWID""",
    """CREATE TABLE chunks (
        job_id TEXT NOT NULL,
        input_index INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        start INTEGER NOT NULL,
        frames INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        worker INTEGER,
        node TEXT,
        gpu_uuid TEXT,
        started REAL,
        ended REAL,
        seconds TEXT NOT NULL DEFAULT '{}',
        segment_uri TEXT NOT NULL,
        checksum TEXT,
        error TEXT,
        faces INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, input_index, idx),
        FOREIGN KEY (job_id, input_index) REFERENCES inputs (job_id, idx) ON DELETE CASCADE) WITHOUT ROWID""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL)""",
    "CREATE INDEX events_job ON events (job_id, id)",
    """CREATE TABLE answers (
        request_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        job_id TEXT,
        ok INTEGER NOT NULL,
        message TEXT NOT NULL,
        time REAL NOT NULL)""",
)


def _create_v1(db: sqlite3.Connection) -> None:
    """Version 0 is a store with no schema yet (a new or empty file)."""
    for statement in SCHEMA_V1:
        db.execute(statement)


SCHEMA_V2 = (
    "ALTER TABLE chunks ADD COLUMN stage_times TEXT NOT NULL DEFAULT '{}'",
    """CREATE TABLE attempts (
        job_id TEXT NOT NULL,
        input_index INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        worker INTEGER,
        node TEXT,
        gpu_uuid TEXT,
        started REAL,
        ended REAL,
        state TEXT NOT NULL,
        error TEXT,
        PRIMARY KEY (job_id, input_index, idx, attempt),
        FOREIGN KEY (job_id, input_index, idx) REFERENCES chunks (job_id, input_index, idx) ON DELETE CASCADE)
        WITHOUT ROWID""",
    # a version 1 store knew only each chunk's last send: it becomes that chunk's one attempt row
    """INSERT INTO attempts (job_id, input_index, idx, attempt, worker, node, gpu_uuid, started, ended, state, error)
        SELECT job_id, input_index, idx, attempts, worker, node, gpu_uuid, started, ended,
               CASE state WHEN 'done' THEN 'done' WHEN 'running' THEN 'running' WHEN 'failed' THEN 'failed'
                          ELSE 'lost' END,
               error
        FROM chunks WHERE attempts > 0""",
)


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Version 2: every send of a chunk (table attempts) and each stage's first and last
    time on a chunk (chunks.stage_times)."""
    for statement in SCHEMA_V2:
        db.execute(statement)


# version -> the step that upgrades a store at that version to the next one
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create_v1, 1: _v1_to_v2}

JOB_COLUMNS = "job_id, name, spec, state, priority, created, started, finished, error, seq"
INPUT_COLUMNS = "job_id, idx, input_uri, output_uri, state, frames, error"
CHUNK_COLUMNS = (
    "job_id, input_index, idx, start, frames, state, attempts, worker, node, gpu_uuid, "
    "started, ended, seconds, segment_uri, checksum, error, faces, stage_times"
)
ATTEMPT_COLUMNS = "job_id, input_index, idx, attempt, worker, node, gpu_uuid, started, ended, state, error"
EVENT_COLUMNS = "id, job_id, time, kind, message"
CHUNK_KEY = "job_id = ? AND input_index = ? AND idx = ?"


def _job_row(row: tuple) -> JobRow:
    return JobRow(row[0], row[1], json.loads(row[2]), *row[3:])


def _chunk_row(row: tuple) -> ChunkRow:
    return ChunkRow(*row[:12], json.loads(row[12]), *row[13:17], json.loads(row[17]))


def _schema_version(db: sqlite3.Connection, path: Path) -> int:
    """The store's schema version: 0 for a file without any table."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise StoreError(f"{path} is not a facefleet job store (it has tables {', '.join(sorted(tables))})")
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


# --- errors as one line --------------------------------------------------------------------

def _read_only_fs(path: Path) -> bool:
    """Whether the filesystem holding PATH (or its nearest existing parent) is mounted read-only."""
    for candidate in (path, *path.parents):
        with suppress(OSError):
            return bool(os.statvfs(candidate).f_flag & os.ST_RDONLY)
    return False


def _problem(state_dir: Path, exc: BaseException) -> str:
    """Why the state dir could not be used, as one line that says what to do."""
    if isinstance(exc, OSError):
        code, detail = exc.errno, exc.strerror or str(exc)
        full = code in (errno.ENOSPC, errno.EDQUOT)
        read_only = code == errno.EROFS
        denied = code in (errno.EACCES, errno.EPERM)
    else:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = getattr(exc, "sqlite_errorname", "") or detail.upper()  # Python 3.10 has no error names
        full = "FULL" in name
        read_only = "READONLY" in name
        denied = "PERM" in name or "AUTH" in name
        if "BUSY" in name or "LOCKED" in name:
            return f"the job store in {state_dir} is locked ({detail}); is a second controller running?"
        if "CORRUPT" in name or "NOTADB" in name:
            return f"the job store {state_dir / DB_NAME} is damaged ({detail}); move it aside or restore a copy"
    if not full and _read_only_fs(state_dir):  # SQLite says "unable to open database file" there
        return f"state dir {state_dir} is read-only (its filesystem is mounted read-only)"
    if read_only:
        return f"state dir {state_dir} is read-only ({detail})"
    if full:
        return f"the disk holding {state_dir} is full ({detail}); free some space and try again"
    if denied:
        return f"no permission to write in state dir {state_dir} ({detail})"
    return f"the job store in {state_dir} failed: {detail}"


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} cannot be stored as JSON ({exc})") from None


# --- the store -----------------------------------------------------------------------------

class JobStore:
    """Jobs, inputs, chunks, events and answers in state_dir/facefleet.db.

    WAL journal (readers never block the writer), synchronous=FULL (a commit is on disk
    before the controller acts on it), foreign keys on. Every write is one transaction.
    With `readonly` the file is opened with mode=ro and nothing is ever written.
    """

    def __init__(self, state_dir: str | Path, readonly: bool = False, *, clock: Callable[[], float] = time.time):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.readonly = readonly
        self._clock = clock
        self._lock = threading.RLock()  # one connection, shared by the threads of one process
        self._db = self._open_reader() if readonly else self._open_writer()

    # --- opening and closing

    def _connect(self, target: str | Path, uri: bool = False) -> sqlite3.Connection:
        with self._translated():
            return sqlite3.connect(
                target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )

    def _open_writer(self) -> sqlite3.Connection:
        with self._translated():
            private_dir(self.state_dir)
            # SQLite gives its -wal and -shm files the database file's mode
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = self._connect(self.path)
        try:
            with self._translated():
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"the job store {self.path} cannot use a WAL journal (got {mode})")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise
        return self._db

    def _migrate(self) -> None:
        """Bring the store to SCHEMA_VERSION, all steps in one transaction (all or nothing)."""
        with self._write() as db:
            version = found = _schema_version(db, self.path)
            self._check_not_newer(version)
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](db)
                version += 1
            if version != found:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))

    def _check_not_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the job store {self.path} has schema version {version}, newer than this facefleet's "
                f"({SCHEMA_VERSION}): upgrade facefleet or use another state dir"
            )

    def _open_reader(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"no job store in {self.state_dir}: nothing was submitted there yet")
        self._db = self._connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            with self._translated():
                version = _schema_version(self._db, self.path)
        except StoreError:
            self._db.close()
            if _read_only_fs(self.state_dir):
                raise StoreError(
                    f"cannot read the job store in {self.state_dir}: its filesystem is read-only and SQLite "
                    f"(WAL) needs to create {DB_NAME}-shm beside it; read it where the state dir is writable"
                ) from None
            raise
        if version == 0 and not self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            # the file exists, its tables not yet: a controller is creating the store
            self._db.close()
            raise StoreError(f"no job store in {self.state_dir} yet: a controller is creating it")
        if version != SCHEMA_VERSION:
            self._db.close()
            self._check_not_newer(version)
            raise StoreError(
                f"the job store {self.path} has schema version {version}, older than this facefleet's "
                f"({SCHEMA_VERSION}): start the controller once (it upgrades the store)"
            )
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def cap_pages(self, pages: int) -> int:
        """Cap the database at PAGES pages (never below its size): a write that would grow it
        fails as on a full disk. For tests; returns the cap in force."""
        with self._lock, self._translated():
            return self._db.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0]

    # --- transactions

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLite and OS errors become one-line StoreErrors."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(_problem(self.state_dir, exc)) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole, or rolled back and raised."""
        if self.readonly:
            raise StoreError(
                f"the job store in {self.state_dir} is open read-only: "
                "only the controller (facefleet serve) writes to it"
            )
        with self._lock, self._translated():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself after some errors (full disk)
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state (e.g. a job with its inputs and chunks)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            with self._translated():
                self._db.execute("BEGIN")
            try:
                yield
            finally:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock, self._translated():
            return self._db.execute(sql, args).fetchall()

    def _log(self, db: sqlite3.Connection, job_id: str, kind: str, message: str) -> None:
        db.execute(
            "INSERT INTO events (job_id, time, kind, message) VALUES (?, ?, ?, ?)",
            (job_id, self._clock(), kind, message),
        )

    @staticmethod
    def _job_state(db: sqlite3.Connection, job_id: str) -> str:
        row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id}")
        return row[0]

    @staticmethod
    def _not_done(db: sqlite3.Connection, job_id: str) -> int:
        return db.execute("SELECT COUNT(*) FROM chunks WHERE job_id = ? AND state != 'done'", (job_id,)).fetchone()[0]

    @staticmethod
    def _check_input(db: sqlite3.Connection, job_id: str, input_index: int) -> None:
        if db.execute("SELECT 1 FROM inputs WHERE job_id = ? AND idx = ?", (job_id, input_index)).fetchone() is None:
            raise StoreError(f"job {job_id} has no input {input_index}")

    @staticmethod
    def _chunk_state(db: sqlite3.Connection, job_id: str, input_index: int, index: int) -> str:
        row = db.execute(f"SELECT state FROM chunks WHERE {CHUNK_KEY}", (job_id, input_index, index)).fetchone()
        if row is None:
            raise StoreError(f"job {job_id} has no chunk {index} of input {input_index}")
        return row[0]

    # --- writes (the controller only)

    def add_job(self, job_id: str, name: str, spec: dict, priority: int, inputs: list[tuple[str, str]]) -> None:
        """A new queued job with its (input uri, output uri) pairs, all pending."""
        spec_json = _to_json(spec, f"the spec of job {job_id}")
        with self._write() as db:
            if db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise StoreError(f"job {job_id} already exists")
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute(
                "INSERT INTO jobs (job_id, seq, name, spec, state, priority, created) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (job_id, seq, name, spec_json, priority, self._clock()),
            )
            db.executemany(
                "INSERT INTO inputs (job_id, idx, input_uri, output_uri, state) VALUES (?, ?, ?, ?, 'pending')",
                [(job_id, i, source, target) for i, (source, target) in enumerate(inputs)],
            )
            self._log(db, job_id, "submitted", f"{len(inputs)} input(s), priority {priority}")

    def plan_input(self, job_id: str, input_index: int, frames: int, chunks: list[tuple[int, int, str]]) -> None:
        """Record an input's chunks as (start, frames, segment uri); a replan replaces them
        only while none is done."""
        with self._write() as db:
            self._check_input(db, job_id, input_index)
            done = db.execute(
                "SELECT COUNT(*) FROM chunks WHERE job_id = ? AND input_index = ? AND state = 'done'",
                (job_id, input_index),
            ).fetchone()[0]
            if done:
                raise StoreError(
                    f"input {input_index} of job {job_id} has {done} done chunk(s); it cannot be planned again"
                )
            db.execute("DELETE FROM chunks WHERE job_id = ? AND input_index = ?", (job_id, input_index))
            db.executemany(
                "INSERT INTO chunks (job_id, input_index, idx, start, frames, state, segment_uri) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                [(job_id, input_index, i, start, count, uri) for i, (start, count, uri) in enumerate(chunks)],
            )
            db.execute("UPDATE inputs SET frames = ? WHERE job_id = ? AND idx = ?", (frames, job_id, input_index))
            self._log(db, job_id, "planned", f"input {input_index}: {len(chunks)} chunk(s), {frames} frame(s)")

    def chunk_started(
        self, job_id: str, input_index: int, index: int, worker: int, node: str, gpu_uuid: str | None
    ) -> int:
        """A worker took the chunk (a running chunk may start again as a duplicate copy).
        Returns the attempt's number (1 for the first send)."""
        with self._write() as db:
            state = self._chunk_state(db, job_id, input_index, index)
            if state not in ("pending", "running"):
                raise StoreError(f"chunk {index} of input {input_index} of job {job_id} is {state}; it cannot start")
            now = self._clock()
            db.execute(
                "UPDATE chunks SET state = 'running', attempts = attempts + 1, worker = ?, node = ?, gpu_uuid = ?, "
                f"started = ?, ended = NULL, error = NULL WHERE {CHUNK_KEY}",
                (worker, node, gpu_uuid, now, job_id, input_index, index),
            )
            attempt = db.execute(f"SELECT attempts FROM chunks WHERE {CHUNK_KEY}", (job_id, input_index, index)).fetchone()[0]
            db.execute(
                f"INSERT OR REPLACE INTO attempts ({ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 'running', NULL)",
                (job_id, input_index, index, attempt, worker, node, gpu_uuid, now),
            )
        return attempt

    @staticmethod
    def _end_attempt(
        db: sqlite3.Connection, key: tuple[str, int, int], worker: int | None, state: str, error: str | None, now: float
    ) -> None:
        """The latest running attempt of the chunk (by `worker`, when given) ends in `state`."""
        row = db.execute(
            f"SELECT MAX(attempt) FROM attempts WHERE {CHUNK_KEY} AND state = 'running' AND (? IS NULL OR worker = ?)",
            (*key, worker, worker),
        ).fetchone()
        if row[0] is not None:
            db.execute(
                f"UPDATE attempts SET state = ?, ended = ?, error = ? WHERE {CHUNK_KEY} AND attempt = ?",
                (state, now, error, *key, row[0]),
            )

    @staticmethod
    def _running_attempts(db: sqlite3.Connection, key: tuple[str, int, int]) -> int:
        return db.execute(f"SELECT COUNT(*) FROM attempts WHERE {CHUNK_KEY} AND state = 'running'", key).fetchone()[0]

    def chunk_done(
        self,
        job_id: str,
        input_index: int,
        index: int,
        segment_uri: str,
        checksum: str,
        seconds: dict,
        worker: int,
        node: str,
        gpu_uuid: str | None,
        started: float,
        ended: float,
        faces: int = 0,
        stage_times: dict | None = None,
    ) -> None:
        """The chunk's segment is durable with this checksum. A chunk already done keeps its
        first result (a duplicate copy finished second). `worker`'s attempt is done; other
        copies still running are recorded as stopped (they are called off)."""
        if not checksum:
            raise StoreError(
                f"chunk {index} of input {input_index} of job {job_id} has no checksum: "
                "a chunk is done only with its segment's checksum recorded"
            )
        seconds_json = _to_json(seconds, "chunk timings")
        times_json = _to_json(stage_times or {}, "stage times")
        key = (job_id, input_index, index)
        with self._write() as db:
            if self._chunk_state(db, *key) == "done":
                self._end_attempt(db, key, worker, "stopped", "another copy finished first", self._clock())
                return
            db.execute(
                "UPDATE chunks SET state = 'done', segment_uri = ?, checksum = ?, seconds = ?, worker = ?, node = ?, "
                f"gpu_uuid = ?, started = ?, ended = ?, faces = ?, stage_times = ?, error = NULL WHERE {CHUNK_KEY}",
                (segment_uri, checksum, seconds_json, worker, node, gpu_uuid, started, ended, faces, times_json) + key,
            )
            now = self._clock()
            self._end_attempt(db, key, worker, "done", None, now)
            db.execute(
                f"UPDATE attempts SET state = 'stopped', ended = ?, error = 'another copy finished first' "
                f"WHERE {CHUNK_KEY} AND state = 'running'",
                (now, *key),
            )

    def chunk_failed(
        self,
        job_id: str,
        input_index: int,
        index: int,
        error: str,
        final: bool,
        worker: int | None = None,
        stopped: bool = False,
    ) -> None:
        """An attempt of the chunk failed (`worker`'s latest, else the latest running one):
        the chunk fails for good (`final`) or waits to run again (back to pending; running
        while another copy still runs). `stopped`: the attempt was called off, not a failure
        (no event). A chunk already done stays done."""
        key = (job_id, input_index, index)
        with self._write() as db:
            state = self._chunk_state(db, *key)
            now = self._clock()
            self._end_attempt(db, key, worker, "stopped" if stopped else "failed", error, now)
            if state == "done":
                return
            if final and not stopped:
                new = "failed"
            else:
                new = "running" if self._running_attempts(db, key) else "pending"
            db.execute(
                f"UPDATE chunks SET state = ?, error = ?, ended = ? WHERE {CHUNK_KEY}",
                (new, error, now if new != "running" else None, *key),
            )
            if not stopped:
                kind = "chunk-failed" if new == "failed" else "chunk-retry"
                self._log(db, job_id, kind, f"chunk {index} of input {input_index}: {error}")

    def reset_chunk(self, job_id: str, input_index: int, index: int, reason: str) -> None:
        """A done chunk runs again: its segment is missing or does not match its checksum."""
        with self._write() as db:
            job_state = self._job_state(db, job_id)
            state = self._chunk_state(db, job_id, input_index, index)
            if state != "done" or job_state == "done":
                what = f"job {job_id} is done" if job_state == "done" else f"it is {state}"
                raise StoreError(f"chunk {index} of input {input_index} of job {job_id} cannot be reset: {what}")
            db.execute(
                f"UPDATE chunks SET state = 'pending', checksum = NULL, error = ? WHERE {CHUNK_KEY}",
                (reason, job_id, input_index, index),
            )
            self._log(db, job_id, "chunk-reset", f"chunk {index} of input {input_index}: {reason}")

    def set_input_state(
        self, job_id: str, input_index: int, state: str, error: str | None = None, frames: int | None = None
    ) -> None:
        if state not in INPUT_STATES:
            raise StoreError(f"unknown input state {state!r} (one of {', '.join(INPUT_STATES)})")
        with self._write() as db:
            self._check_input(db, job_id, input_index)
            db.execute(
                "UPDATE inputs SET state = ?, error = ?, frames = COALESCE(?, frames) WHERE job_id = ? AND idx = ?",
                (state, error, frames, job_id, input_index),
            )
            self._log(db, job_id, f"input-{state}", f"input {input_index}" + (f": {error}" if error else ""))

    def set_job_state(self, job_id: str, state: str, error: str | None = None) -> None:
        """Move a job along JOB_TRANSITIONS (the same state again changes nothing)."""
        if state not in JOB_STATES:
            raise StoreError(f"unknown job state {state!r} (one of {', '.join(JOB_STATES)})")
        with self._write() as db:
            row = db.execute("SELECT state, started FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}")
            old, started = row
            if old == state:
                return
            if state not in JOB_TRANSITIONS[old]:
                hint = " (retry queues it again)" if old in RETRYABLE and state == "queued" else ""
                raise StoreError(f"job {job_id} is {old}; it cannot become {state}{hint}")
            if state == "done":
                left = self._not_done(db, job_id)
                if left:
                    raise StoreError(f"job {job_id} cannot be done: {left} of its chunks are not done")
            now = self._clock()
            if state == "running" and started is None:
                started = now
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, started = ?, finished = ? WHERE job_id = ?",
                (state, error, started, now if state in FINAL_JOB_STATES else None, job_id),
            )
            self._log(db, job_id, state, f"{old} -> {state}" + (f": {error}" if error else ""))

    def event(self, job_id: str, kind: str, message: str) -> None:
        with self._write() as db:
            self._job_state(db, job_id)
            self._log(db, job_id, kind, message)

    def recover(self) -> list[str]:
        """After a crash: running chunks go back to pending. Returns the unfinished (queued
        or running) jobs in dispatch order."""
        with self._write() as db:
            lost = db.execute("SELECT job_id, COUNT(*) FROM chunks WHERE state = 'running' GROUP BY job_id").fetchall()
            db.execute("UPDATE chunks SET state = 'pending', error = ? WHERE state = 'running'", (LOST,))
            db.execute(
                "UPDATE attempts SET state = 'lost', error = ?, ended = ? WHERE state = 'running'", (LOST, self._clock())
            )
            for job_id, count in lost:
                self._log(db, job_id, "recovered", f"{count} chunk(s) that were running will run again ({LOST})")
            rows = db.execute(
                "SELECT job_id FROM jobs WHERE state IN ('queued', 'running') ORDER BY priority DESC, seq"
            ).fetchall()
        return [job_id for (job_id,) in rows]

    def retry(self, job_id: str) -> int:
        """Queue a failed or cancelled job again; its chunks not done will run. Returns how many."""
        with self._write() as db:
            old = self._job_state(db, job_id)
            if old not in RETRYABLE:
                raise StoreError(f"job {job_id} is {old}; only failed or cancelled jobs can be retried")
            db.execute(
                "UPDATE chunks SET state = 'pending', error = NULL WHERE job_id = ? AND state IN ('failed', 'running')",
                (job_id,),
            )
            db.execute(
                "UPDATE attempts SET state = 'stopped', error = 'the job was retried', ended = ? "
                "WHERE job_id = ? AND state = 'running'",
                (self._clock(), job_id),
            )
            db.execute(
                "UPDATE inputs SET state = 'pending', error = NULL WHERE job_id = ? AND state != 'done'", (job_id,)
            )
            db.execute(
                "UPDATE jobs SET state = 'queued', error = NULL, started = NULL, finished = NULL WHERE job_id = ?",
                (job_id,),
            )
            again = self._not_done(db, job_id)
            self._log(db, job_id, "retried", f"{old} -> queued; {again} chunk(s) to run")
        return again

    def answer(self, request_id: str, kind: str, job_id: str | None, ok: bool, message: str) -> None:
        """The controller's answer to an inbox request (a later answer replaces it)."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO answers (request_id, kind, job_id, ok, message, time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, kind, job_id, int(ok), message, self._clock()),
            )

    # --- reads (any process)

    def job(self, job_ref: str) -> JobRow | None:
        """A job by its full id or a unique prefix of at least PREFIX_MIN characters."""
        rows = self._rows(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_ref,))
        if not rows and len(job_ref) >= PREFIX_MIN:
            rows = self._rows(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE substr(job_id, 1, ?) = ? ORDER BY seq LIMIT 6",
                (len(job_ref), job_ref),
            )
            if len(rows) > 1:
                ids = ", ".join(row[0] for row in rows[:5]) + (", ..." if len(rows) > 5 else "")
                raise StoreError(f"job id {job_ref} is ambiguous ({ids}); give more of it")
        return _job_row(rows[0]) if rows else None

    def jobs(self, state: str | None = None, since: float | None = None) -> list[JobRow]:
        """Jobs in dispatch order (priority, highest first, then submission order)."""
        if state is not None and state not in JOB_STATES:
            raise StoreError(f"unknown job state {state!r} (one of {', '.join(JOB_STATES)})")
        rows = self._rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE (? IS NULL OR state = ?) AND (? IS NULL OR created >= ?) "
            "ORDER BY priority DESC, seq",
            (state, state, since, since),
        )
        return [_job_row(row) for row in rows]

    def inputs(self, job_id: str) -> list[InputRow]:
        rows = self._rows(f"SELECT {INPUT_COLUMNS} FROM inputs WHERE job_id = ? ORDER BY idx", (job_id,))
        return [InputRow(*row) for row in rows]

    def chunks(self, job_id: str, input_index: int | None = None) -> list[ChunkRow]:
        rows = self._rows(
            f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = ? AND (? IS NULL OR input_index = ?) "
            "ORDER BY input_index, idx",
            (job_id, input_index, input_index),
        )
        return [_chunk_row(row) for row in rows]

    def chunk(self, job_id: str, input_index: int, index: int) -> ChunkRow | None:
        rows = self._rows(f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE {CHUNK_KEY}", (job_id, input_index, index))
        return _chunk_row(rows[0]) if rows else None

    def attempts(self, job_id: str, input_index: int | None = None, index: int | None = None) -> list[AttemptRow]:
        """Every send of the job's chunks (of one input, of one chunk), in chunk and send order."""
        rows = self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ? AND (? IS NULL OR input_index = ?) "
            "AND (? IS NULL OR idx = ?) ORDER BY input_index, idx, attempt",
            (job_id, input_index, input_index, index, index),
        )
        return [AttemptRow(*row) for row in rows]

    def chunk_counts(self, job_id: str) -> dict[str, int]:
        """Chunks per state; every state in CHUNK_STATES is a key."""
        counts = dict.fromkeys(CHUNK_STATES, 0)
        counts.update(self._rows("SELECT state, COUNT(*) FROM chunks WHERE job_id = ? GROUP BY state", (job_id,)))
        return counts

    def events(self, job_id: str, after_id: int = 0) -> list[EventRow]:
        rows = self._rows(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id)
        )
        return [EventRow(*row) for row in rows]

    def answer_of(self, request_id: str) -> tuple[bool, str, str | None] | None:
        """(ok, message, job id) once the controller answered the request, else None."""
        rows = self._rows("SELECT ok, message, job_id FROM answers WHERE request_id = ?", (request_id,))
        return (bool(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def integrity_check(self) -> list[str]:
        """What is wrong with the store ([] when sound): SQLite's own checks and ours."""
        unknown = (
            ("jobs", JOB_STATES), ("inputs", INPUT_STATES), ("chunks", CHUNK_STATES), ("attempts", ATTEMPT_STATES)
        )
        with self.snapshot():
            problems = [line for (line,) in self._rows("PRAGMA integrity_check") if line != "ok"]
            for table, _, parent, _ in self._rows("PRAGMA foreign_key_check"):
                problems.append(f"a {table} row refers to a missing {parent} row")
            for table, states in unknown:
                marks = ", ".join("?" * len(states))
                for (state,) in self._rows(f"SELECT DISTINCT state FROM {table} WHERE state NOT IN ({marks})", states):
                    problems.append(f"{table}: unknown state {state!r}")
            for job_id, input_index, index in self._rows(
                "SELECT job_id, input_index, idx FROM chunks WHERE state = 'done' AND COALESCE(checksum, '') = ''"
            ):
                problems.append(f"chunk {index} of input {input_index} of job {job_id} is done without a checksum")
            for job_id, left in self._rows(
                "SELECT jobs.job_id, COUNT(*) FROM jobs JOIN chunks ON chunks.job_id = jobs.job_id "
                "WHERE jobs.state = 'done' AND chunks.state != 'done' GROUP BY jobs.job_id"
            ):
                problems.append(f"job {job_id} is done but {left} of its chunks are not")
        return problems


# --- the inbox -----------------------------------------------------------------------------

def private_dir(path: Path) -> None:
    """Create a directory only its owner can enter (0700); tighten one this user owns.

    The state dir holds job specs, logs and reports of other people's videos."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_synced(path: Path, data: bytes) -> None:
    """Write a new file and fsync it (fails if PATH exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_request(path: Path) -> Request:
    """Parse one request file; ValueError when it is not a well-formed request."""
    data = json.loads(path.read_bytes().decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    request_id, kind, payload, when = (data.get(k) for k in ("request_id", "kind", "payload", "time"))
    if request_id != path.stem or not isinstance(kind, str) or not kind or not isinstance(payload, dict):
        raise ValueError("missing or mistyped fields")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise ValueError("no time")
    return Request(request_id, kind, payload, float(when), path)


class Inbox:
    """Requests to the controller (the only writer of the store) as files in state_dir/inbox/.

    A request is JSON written under a temporary name, fsynced, then renamed to
    `<request id>.json`: a reader sees a whole file or none.
    """

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / INBOX_DIR
        self.bad_dir = self.dir / "bad"

    def put(self, kind: str, payload: dict) -> str:
        """Leave a request for the controller; returns its id."""
        request_id = uuid.uuid4().hex
        request = {"request_id": request_id, "kind": kind, "payload": payload, "time": time.time()}
        body = _to_json(request, "the request")
        tmp = self.dir / f".{request_id}.tmp"
        try:
            private_dir(self.state_dir)
            private_dir(self.dir)
            _write_synced(tmp, body.encode("utf-8"))
            os.replace(tmp, self.dir / f"{request_id}.json")
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StoreError(_problem(self.state_dir, exc)) from None
        with suppress(OSError):  # the request is in place; this only hastens its survival of a power cut
            _sync_dir(self.dir)
        return request_id

    def _read(self, set_aside: bool) -> list[Request]:
        try:
            paths = list(self.dir.glob("*.json")) if self.dir.is_dir() else []
        except OSError as exc:
            raise StoreError(_problem(self.state_dir, exc)) from None
        requests = []
        for path in paths:
            try:
                requests.append(_read_request(path))
            except FileNotFoundError:  # taken meanwhile
                continue
            except (OSError, ValueError):
                if set_aside:
                    with suppress(OSError):
                        self.bad_dir.mkdir(exist_ok=True)
                        os.replace(path, self.bad_dir / path.name)
        return sorted(requests, key=lambda r: (r.time, r.request_id))

    def take(self) -> list[Request]:
        """The requests waiting, in arrival order; garbled files are moved to inbox/bad/."""
        return self._read(set_aside=True)

    def pending(self) -> list[Request]:
        """The requests waiting, in arrival order, for readers (status, list): moves nothing."""
        return self._read(set_aside=False)

    def done(self, request: Request) -> None:
        """Remove a request the controller has answered."""
        try:
            request.path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(_problem(self.state_dir, exc)) from None
