"""A store's integrity, checked before a control plane opens it, and its backups.

`mesh up` calls :func:`check_store` before anything opens ``mesh.db``: SQLite's
``PRAGMA quick_check`` (every page and index readable, in order; not the
slower cross-check of indexes against tables) on a connection of its own,
closed before the stores open theirs (a close drops this process's POSIX locks
on the file: none may be held yet). A damaged file is refused with a
:class:`StoreDamagedError` naming it and the newest backup. A sound one is
copied with SQLite's online backup API to ``<data>/backups/mesh-<UTC time>.db``
(:func:`back_up_store`, owner-only), and only the newest ``keep`` copies stay.

Example:
    >>> check_store(data / "mesh.db", data / "backups")  # doctest: +SKIP
    >>> back_up_store(data / "mesh.db", data / "backups")  # doctest: +SKIP
    PosixPath('.../backups/mesh-20261206T110304Z.db')
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from mesh.core._errors import StoreError

__all__ = ["StoreDamagedError", "back_up_store", "check_store", "latest_backup"]

logger = logging.getLogger(__name__)

_PREFIX = "mesh-"


class StoreDamagedError(StoreError):
    """A store's file failed SQLite's integrity check; the message names it and a backup.

    Attributes:
        path: the damaged file.
        backup: the newest backup, or None when there is none.
    """

    def __init__(self, path: Path, problem: str, backup: Path | None) -> None:
        self.path = path
        self.backup = backup
        remedy = (
            f"the newest backup is {backup}: move the damaged file aside "
            f"(with its -wal and -shm files) and copy the backup to {path}"
            if backup is not None
            else "no backup exists: move the damaged file aside to start with an empty store"
        )
        super().__init__(f"the store {path} is damaged ({problem}); {remedy}")


def check_store(path: Path, backups: Path) -> None:
    """Refuse a damaged store at ``path``; a missing one is fine (it will be created).

    Raises:
        StoreDamagedError: the file is not a database or fails ``PRAGMA quick_check``.
    """
    if not path.exists():
        return
    problem = _problem(path)
    if problem is not None:
        raise StoreDamagedError(path, problem, latest_backup(backups))


def _problem(path: Path) -> str | None:
    """What ``quick_check`` found wrong with ``path`` (None: sound, or it could not look).

    A file that is locked or cannot be opened is not called damaged (the stores
    will say why they cannot open it); only what SQLite reports as corruption is.
    """
    try:
        db = sqlite3.connect(path, timeout=10.0)
        try:
            rows = [r[0] for r in db.execute("PRAGMA quick_check(5)").fetchall()]
        finally:
            db.close()
    except sqlite3.OperationalError as exc:  # locked, busy, cannot open: not corruption
        logger.warning("could not check the store %s: %s", path, exc)
        return None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        return str(exc)
    return None if rows == ["ok"] else "; ".join(str(r) for r in rows)


def back_up_store(path: Path, backups: Path, *, keep: int = 3) -> Path | None:
    """Copy a sound store to ``backups/mesh-<UTC time>.db``; keep the newest ``keep``.

    Returns the new copy (None when there is no store yet). A failed copy is
    logged and removed; it never stops a start.

    Raises:
        ValueError: ``keep`` is below 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    if not path.exists():
        return None
    backups.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = backups / f"{_PREFIX}{stamp}.db"
    n = 1
    while target.exists():  # two starts within a second
        target = backups / f"{_PREFIX}{stamp}-{n}.db"
        n += 1
    try:
        source = sqlite3.connect(path, timeout=10.0)
        try:
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
        os.chmod(target, 0o600)  # the store holds password hashes and token digests
    except (sqlite3.Error, OSError) as exc:
        logger.warning("could not back up %s to %s: %s", path, target, exc)
        with contextlib.suppress(OSError):
            target.unlink()
        return None
    for old in _backups(backups)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return target


def latest_backup(backups: Path) -> Path | None:
    """The newest backup in ``backups`` (None when there is none)."""
    found = _backups(backups)
    return found[-1] if found else None


def _backups(backups: Path) -> list[Path]:
    """Backups, oldest first (their names sort by time)."""
    if not backups.is_dir():
        return []
    found = [p for p in backups.glob(f"{_PREFIX}*.db") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))
