"""The run store: every invocation and every deployed function, in SQLite.

SQLite in WAL mode is the default store (DESIGN §3); the :class:`Store`
Protocol is the seam a PostgreSQL store would implement later. A run is
written twice: once when it starts (after its arguments were validated and a
node was found, so bad input never leaves a row) and once when it ends.

Run writes go through one writer thread that commits whatever has queued up
in one transaction (group commit): an invocation costs a queue put instead of
two commits, and a burst of runs costs one commit. Every read waits for the
queue to drain first, so a reader always sees its own writes.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from mesh.core._errors import StoreError
from mesh.core._sqlite import Schema, open_sqlite, write_transaction

logger = logging.getLogger(__name__)

_BATCH = 512
_LINGER_S = 0.005

__all__ = [
    "Deployment",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Store",
]


class RunStatus(StrEnum):
    """Where a run is in its life."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the run has ended."""
        return self is not RunStatus.RUNNING


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One invocation of a function."""

    id: str
    function: str
    app: str
    kind: str
    args_digest: str
    args_preview: str
    tier: str
    status: RunStatus
    started_at: float
    node_id: str | None = None
    node_labels: Mapping[str, str] = field(default_factory=dict)
    duration_s: float | None = None
    result_ref: str | None = None
    error: str | None = None
    trigger: str | None = None
    """The trigger that fired the run (``mesh triggers``); None when invoked."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """A function registered with the control plane by `mesh deploy`."""

    function: str
    app: str
    kind: str
    source: str
    tier: str
    spec_json: str
    deployed_at: float


class Store(Protocol):
    """Persistent state of the control plane."""

    def start_run(self, record: RunRecord) -> None:
        """Record a run that has started."""
        ...

    def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        duration_s: float,
        node_id: str | None = None,
        node_labels: Mapping[str, str] | None = None,
        result_ref: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record how a run ended."""
        ...

    def get_run(self, run_id: str) -> RunRecord:
        """One run by id (a unique prefix is enough)."""
        ...

    def list_runs(
        self, *, function: str | None = None, trigger: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The newest runs first."""
        ...

    def put_deployment(self, deployment: Deployment) -> Deployment | None:
        """Record a deployed function; returns the one it replaced, if any."""
        ...

    def list_deployments(self) -> list[Deployment]:
        """Deployed functions by name."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


# Version 1 is the tables as they were before versions; a change is a new migration step.
_SCHEMA = Schema(
    "runs",
    """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    args_preview TEXT NOT NULL,
    tier TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    node_id TEXT,
    node_labels TEXT NOT NULL DEFAULT '{}',
    duration_s REAL,
    result_ref TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_function ON runs(function, started_at);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs(started_at);
CREATE TABLE IF NOT EXISTS deployments (
    function TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    tier TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    deployed_at REAL NOT NULL
);
""",
    migrations=(
        # 1 -> 2: a run names the trigger that fired it; an old row was invoked.
        """
ALTER TABLE runs ADD COLUMN trigger TEXT;
CREATE INDEX IF NOT EXISTS runs_by_trigger ON runs(trigger, started_at);
""",
    ),
)


class SQLiteStore:
    """The :class:`Store` on one SQLite file (WAL, one connection, thread-safe).

    Example:
        >>> store = SQLiteStore(":memory:")
        >>> store.list_runs()
        []
    """

    def __init__(self, path: str | Path) -> None:
        """Open (and create) the store at ``path``; ``":memory:"`` for a throwaway one."""
        self.path = str(path)
        try:
            self._db = open_sqlite(self.path, _SCHEMA, named_rows=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the run store at {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._open_runs: set[str] = set()
        self._failure: StoreError | None = None
        self._closed = False
        self._writer = threading.Thread(target=self._drain, name="mesh-store-writer", daemon=True)
        self._writer.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock, f"run store ({self.path})")

    def _enqueue(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise StoreError(f"the run store {self.path} is closed")
        self._queue.put((sql, params))

    def _drain(self) -> None:
        while True:
            batch = [self._queue.get()]
            if isinstance(batch[0], tuple):
                # Linger briefly so writes arriving together share one commit; sleeping
                # (rather than waking per queued item) keeps this thread off the GIL
                # while invocations run. Reads wait at most this long for a flush.
                time.sleep(_LINGER_S)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = [op for op in batch if isinstance(op, tuple)]
            if writes:
                try:
                    with self._write() as db:
                        for sql, params in writes:
                            db.execute(sql, params)
                except StoreError as exc:
                    logger.error("run store %s: lost %d writes: %s", self.path, len(writes), exc)
                    self._failure = exc
            for op in batch:
                if isinstance(op, threading.Event):
                    op.set()
            if any(op is None for op in batch):
                return

    def flush(self) -> None:
        """Wait until every queued write is committed.

        Raises:
            StoreError: a queued write failed.
        """
        if not self._writer.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        if self._failure is not None:
            raise self._failure

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        self.flush()
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return list(cursor.fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"run store read failed ({self.path}): {exc}") from exc

    def start_run(self, record: RunRecord) -> None:
        """Record a run that has started (queued; committed within milliseconds)."""
        self._enqueue(
            "INSERT INTO runs (id, function, app, kind, args_digest, args_preview, tier, "
            "status, started_at, node_id, node_labels, duration_s, result_ref, error, trigger) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.function,
                record.app,
                record.kind,
                record.args_digest,
                record.args_preview,
                record.tier,
                record.status.value,
                record.started_at,
                record.node_id,
                json.dumps(dict(record.node_labels)) if record.node_labels else "{}",
                record.duration_s,
                record.result_ref,
                record.error,
                record.trigger,
            ),
        )
        self._open_runs.add(record.id)

    def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        duration_s: float,
        node_id: str | None = None,
        node_labels: Mapping[str, str] | None = None,
        result_ref: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record how a run ended (queued; committed within milliseconds).

        Raises:
            StoreError: no such run.
        """
        if run_id not in self._open_runs and not self._read(
            "SELECT 1 FROM runs WHERE id = ?", (run_id,)
        ):
            raise StoreError(f"no run {run_id!r} to finish in {self.path}")
        self._open_runs.discard(run_id)
        self._enqueue(
            "UPDATE runs SET status = ?, duration_s = ?, node_id = COALESCE(?, node_id), "
            "node_labels = COALESCE(?, node_labels), result_ref = ?, error = ? WHERE id = ?",
            (
                status.value,
                duration_s,
                node_id,
                json.dumps(dict(node_labels)) if node_labels is not None else None,
                result_ref,
                error,
                run_id,
            ),
        )

    def get_run(self, run_id: str) -> RunRecord:
        """One run by id or unique id prefix."""
        rows = self._read("SELECT * FROM runs WHERE id LIKE ? LIMIT 2", (run_id + "%",))
        if len(rows) != 1:
            what = "no run" if not rows else "more than one run"
            raise StoreError(f"{what} matches {run_id!r} in {self.path}")
        return _run(rows[0])

    def list_runs(
        self, *, function: str | None = None, trigger: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The newest runs first, optionally of one function, or fired by one trigger."""
        where, params = [], []
        for column, value in (("function", function), ("trigger", trigger)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._read(
            f"SELECT * FROM runs {clause}ORDER BY started_at DESC LIMIT ?", (*params, limit)
        )
        return [_run(row) for row in rows]

    def put_deployment(self, deployment: Deployment) -> Deployment | None:
        """Record a deployed function; returns the deployment it replaced, if any."""
        self.flush()
        with self._write() as db:
            cursor = db.execute(
                "SELECT * FROM deployments WHERE function = ?", (deployment.function,)
            )
            cursor.row_factory = sqlite3.Row
            previous = cursor.fetchone()
            db.execute(
                "INSERT OR REPLACE INTO deployments (function, app, kind, source, tier, "
                "spec_json, deployed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    deployment.function,
                    deployment.app,
                    deployment.kind,
                    deployment.source,
                    deployment.tier,
                    deployment.spec_json,
                    deployment.deployed_at,
                ),
            )
        return Deployment(**dict(previous)) if previous is not None else None

    def list_deployments(self) -> list[Deployment]:
        """Deployed functions by name."""
        return [
            Deployment(**dict(row))
            for row in self._read("SELECT * FROM deployments ORDER BY function")
        ]

    def close(self) -> None:
        """Commit what is queued and close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        atexit.unregister(self.close)
        with self._lock:
            self._db.close()


def _run(row: sqlite3.Row) -> RunRecord:
    values = dict(row)
    values["status"] = RunStatus(values["status"])
    values["node_labels"] = json.loads(values["node_labels"] or "{}")
    return RunRecord(**values)
