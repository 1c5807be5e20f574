"""SQLite helpers shared by every store (runs, placements, registry, agent enrolments).

One opener (WAL, ``synchronous=NORMAL``, the store's versioned schema applied)
and one write transaction (``BEGIN IMMEDIATE`` under a lock, rolled back on any
error). Schema versions and migrations are :mod:`edge_agent._sqlite`'s (the
agent's outbox uses the same helper): every store passes a :class:`Schema`
whose ``create`` script makes version 1 and whose ``migrations`` each take
version ``n`` to ``n + 1``; a file a newer fogmesh wrote is refused with a
:class:`~mesh.core._errors.StoreError` saying what to do.

Example:
    >>> db = open_sqlite(":memory:", Schema("notes", "CREATE TABLE IF NOT EXISTS n (t TEXT);"))
    >>> db.execute("SELECT version FROM schema_versions").fetchone()[0]
    1
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_agent._sqlite import Migration, Schema, SchemaVersionError, apply_schema
from mesh.core._errors import StoreError

__all__ = ["Migration", "Schema", "open_sqlite", "write_transaction"]


def open_sqlite(path: str, schema: Schema, *, named_rows: bool = True) -> sqlite3.Connection:
    """A WAL-mode connection to ``path`` (its folder created), ``schema`` at its version.

    Shared by the run, placement, registry and enrolment stores (one file
    may hold several). WAL + ``synchronous=NORMAL`` survives a process crash
    (not a power cut) and skips an fsync per commit, which matters on the
    invocation path. Rows come back as ``sqlite3.Row`` unless ``named_rows``
    is False (plain tuples).

    Raises:
        StoreError: a newer fogmesh wrote the file (the message names the
            file, both versions and what to do).
        sqlite3.Error: the file cannot be opened or the schema applied.
    """
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=10.0, isolation_level=None)
    try:
        # Owner-only (SQLite gives its WAL files the same mode): stores hold
        # password hashes and token digests. chmod, never an open()/close() of
        # our own: closing any descriptor of the file drops every POSIX lock
        # this process holds on it, and another store's connection to the same
        # file would then write unlocked (measured: "database disk image is
        # malformed" under the traffic scenario).
        if path != ":memory:" and os.stat(path).st_mode & 0o077:
            with contextlib.suppress(PermissionError):  # not ours: warned at start-up
                os.chmod(path, 0o600)
        if named_rows:
            db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        apply_schema(db, schema, path=path)
    except SchemaVersionError as exc:
        db.close()
        raise StoreError(str(exc)) from exc
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def write_transaction(
    db: sqlite3.Connection, lock: threading.Lock | threading.RLock, what: str
) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under ``lock``; rolled back on any error.

    Raises:
        StoreError: SQLite failed (``what`` names the store in the message).
    """
    with lock:
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise StoreError(f"{what} write failed: {exc}") from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise
