"""SQLite helpers shared by every store (runs, placements, registry, edge records).

One opener (WAL, ``synchronous=NORMAL``, schema applied) and one write
transaction (``BEGIN IMMEDIATE`` under a lock, rolled back on any error).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mesh.core._errors import StoreError

__all__ = ["open_sqlite", "write_transaction"]


def open_sqlite(path: str, schema: str, *, named_rows: bool = True) -> sqlite3.Connection:
    """A WAL-mode connection to ``path`` (its folder created) with ``schema`` applied.

    Shared by the run, placement and registry stores. WAL + ``synchronous=NORMAL``
    survives a process crash (not a power cut) and skips an fsync per commit,
    which matters on the invocation path. Rows come back as ``sqlite3.Row``
    unless ``named_rows`` is False (plain tuples).

    Raises:
        sqlite3.Error: the file cannot be opened or the schema applied.
    """
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=10.0, isolation_level=None)
    if named_rows:
        db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
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
