"""Damaged storage is moved aside, never fatal: the agent starts afresh and keeps the file.

A device loses power mid-write, its flash wears out, someone truncates a file:
an agent that exits on a damaged outbox or cache state restarts into the same
damage forever (``Restart=always``). Instead the file (with SQLite's ``-wal``,
``-shm`` and ``-journal`` companions) is renamed to
``<name>.corrupt-<UTC time>`` beside it, kept for inspection, reported in the
heartbeat (``faults.quarantined``), and a fresh one is created.

Also here: which SQLite errors mean "damaged" and which "disk full", by the
extended error code Python 3.11 attaches (``sqlite_errorcode``), not by message.

Example:
    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "outbox.db"
    >>> _ = bad.write_bytes(b"not a database")
    >>> moved = quarantine(bad, "file is not a database", now=0.0)
    >>> moved.name, bad.exists()
    ('outbox.db.corrupt-19700101T000000Z', False)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["DamagedStoreError", "is_corruption", "is_disk_full", "quarantine", "quick_check"]

logger = logging.getLogger(__name__)

_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
_COMPANIONS = ("-wal", "-shm", "-journal")


class DamagedStoreError(Exception):
    """A store's file failed SQLite's integrity check (``PRAGMA quick_check``)."""


def _primary(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corruption(exc: BaseException) -> bool:
    """Whether ``exc`` says the file is damaged or not a database (not: locked, unopenable)."""
    if isinstance(exc, DamagedStoreError):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and _primary(exc) in (
        _SQLITE_CORRUPT,
        _SQLITE_NOTADB,
    )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the database's page limit) is full."""
    if isinstance(exc, OSError):
        return exc.errno == 28  # ENOSPC
    return isinstance(exc, sqlite3.Error) and _primary(exc) == _SQLITE_FULL


def quick_check(db: sqlite3.Connection, path: Path) -> None:
    """Run ``PRAGMA quick_check`` (O(size), no index cross-checks).

    Raises:
        DamagedStoreError: it found damage (the message has its first finding).
        sqlite3.DatabaseError: the file could not be read at all.
    """
    rows = db.execute("PRAGMA quick_check(1)").fetchall()
    if rows != [("ok",)]:
        raise DamagedStoreError(f"{path}: integrity check failed: {rows[0][0] if rows else '?'}")


def quarantine(path: Path, reason: str, *, now: float | None = None) -> Path:
    """Move ``path`` and its SQLite companions aside; returns where ``path`` went.

    The new name is ``<name>.corrupt-<UTC time>`` (a number is appended when
    that exists already). Companion files follow with the same suffix.

    Raises:
        OSError: the file could not be renamed (the caller cannot start afresh).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for n in range(1, 1000):  # bounded: a thousand damaged files in one second is absurd
        if not target.exists():
            break
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for companion in _COMPANIONS:
        side = path.with_name(path.name + companion)
        if side.exists():
            os.replace(side, target.with_name(target.name + companion))
    if path.exists():
        os.replace(path, target)
    logger.error("%s is damaged (%s): moved aside to %s, starting afresh", path, reason, target)
    return target
