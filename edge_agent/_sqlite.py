"""Versioned SQLite schemas: the one helper of the agent's and the mesh's stores.

Each store declares a :class:`Schema`: its name, the script creating its
version 1 tables, and migration steps (step ``n`` takes version ``n`` to
``n + 1``; a SQL script or a function of the connection).
:func:`apply_schema` brings a file to the store's version in one transaction
and refuses a file a newer version wrote, with a message saying what to do.

Several stores share one file (the control plane keeps runs, placements,
models and agents in ``mesh.db``) while SQLite has one ``PRAGMA
user_version`` per file, so the versions live in a table::

    PRAGMA user_version = 1        this file keeps its stores' versions in schema_versions
    schema_versions(store, version)    one row per store

``user_version`` 0 is a file from before versions: its tables are adopted as
version 1 (the ``create`` script only adds what is missing: ``IF NOT
EXISTS``) and migrated from there; a fresh file goes the same way.

It lives in ``edge_agent`` because the agent must not import ``mesh`` and
both need it; ``mesh.core._sqlite`` opens the mesh's stores with it.

Example:
    >>> import sqlite3
    >>> db = sqlite3.connect(":memory:", isolation_level=None)
    >>> notes = Schema("notes", "CREATE TABLE IF NOT EXISTS notes (text TEXT);",
    ...                migrations=("ALTER TABLE notes ADD COLUMN at REAL;",))
    >>> apply_schema(db, notes, path=":memory:")
    2
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["FILE_FORMAT", "Migration", "Schema", "SchemaVersionError", "apply_schema"]

logger = logging.getLogger(__name__)

#: The ``user_version`` of a file whose stores' versions are in ``schema_versions``.
FILE_FORMAT = 1

#: A migration step: a SQL script, or a function of the connection (inside the transaction).
Migration = str | Callable[[sqlite3.Connection], None]

_FILE = "file"  # SchemaVersionError.store when user_version itself is too new
_DEFAULT_REMEDY = (
    "upgrade fogmesh (pip install -U fogmesh) to open it, or point the data folder "
    "elsewhere to start afresh"
)


@dataclass(frozen=True, slots=True)
class Schema:
    """A store's tables and how each version becomes the next.

    Attributes:
        name: the store (one row in ``schema_versions``), e.g. ``"runs"``.
        create: the script creating version 1; every statement ``IF NOT
            EXISTS``, so it also adopts a file from before versions.
        migrations: ``migrations[n - 1]`` takes version ``n`` to ``n + 1``.
            Append only: a released step never changes.
    """

    name: str
    create: str
    migrations: tuple[Migration, ...] = ()

    @property
    def version(self) -> int:
        """The version this code writes: 1 plus one per migration step."""
        return 1 + len(self.migrations)


class SchemaVersionError(Exception):
    """A file was written by a newer version than this one knows.

    Attributes:
        path: the file.
        store: the store (``"file"`` for ``user_version`` itself).
        found: the version in the file.
        known: the highest version this code knows.
    """

    def __init__(self, path: str, store: str, found: int, known: int, remedy: str) -> None:
        """Say which file, which store, both versions, and what to do."""
        self.path, self.store, self.found, self.known = path, store, found, known
        what = "version bookkeeping (PRAGMA user_version)" if store == _FILE else f"{store} schema"
        super().__init__(
            f"{path}: its {what} is version {found}, but this fogmesh "
            f"({_fogmesh_version()}) knows versions up to {known}, so a newer fogmesh "
            f"wrote it; {remedy}"
        )


def _fogmesh_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fogmesh")
    except PackageNotFoundError:
        return "unknown version"


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script``, one by one (``executescript`` would commit first)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement at the end of the script: {pending!r}")


def _run(db: sqlite3.Connection, step: Migration) -> None:
    if isinstance(step, str):
        for statement in _statements(step):
            db.execute(statement)
    else:
        step(db)


def _read(db: sqlite3.Connection, schema: Schema) -> tuple[int, int | None]:
    """The file's ``user_version`` and the store's version in it (None: not there)."""
    file_format = int(db.execute("PRAGMA user_version").fetchone()[0])
    if file_format < FILE_FORMAT:
        return file_format, None
    row = db.execute(
        "SELECT version FROM schema_versions WHERE store = ?", (schema.name,)
    ).fetchone()
    return file_format, None if row is None else int(row[0])


def _refuse_newer(
    path: str, schema: Schema, file_format: int, stored: int | None, remedy: str
) -> None:
    if file_format > FILE_FORMAT:
        raise SchemaVersionError(path, _FILE, file_format, FILE_FORMAT, remedy)
    if stored is not None and stored > schema.version:
        raise SchemaVersionError(path, schema.name, stored, schema.version, remedy)


def apply_schema(
    db: sqlite3.Connection, schema: Schema, *, path: str, remedy: str = _DEFAULT_REMEDY
) -> int:
    """Bring ``schema``'s tables in ``db`` to ``schema.version``; returns that version.

    Creates them in a fresh file, adopts them as version 1 in a file from
    before versions, and runs the missing migration steps, all in one
    transaction (a failed step leaves the file as it was). A file already at
    the version is only read.

    Args:
        db: an open connection in autocommit mode (``isolation_level=None``).
        schema: the store's schema.
        path: the file, for messages.
        remedy: what the user should do about a newer file.

    Raises:
        SchemaVersionError: the file (or this store in it) was written by a
            newer version; nothing is changed.
        sqlite3.Error: SQLite failed (the transaction is rolled back).
        ValueError: ``db`` is inside a transaction, or a script is incomplete.
    """
    if db.in_transaction:
        raise ValueError(f"{path}: apply_schema needs a connection outside a transaction")
    file_format, stored = _read(db, schema)
    _refuse_newer(path, schema, file_format, stored, remedy)
    if file_format == FILE_FORMAT and stored == schema.version:
        return schema.version
    db.execute("BEGIN IMMEDIATE")
    try:
        file_format, stored = _read(db, schema)  # another process may have been first
        _refuse_newer(path, schema, file_format, stored, remedy)
        if file_format < FILE_FORMAT:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions "
                "(store TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            db.execute(f"PRAGMA user_version = {FILE_FORMAT}")
        if stored is None:
            _run(db, schema.create)
            stored = 1
        for number in range(stored, schema.version):
            _run(db, schema.migrations[number - 1])
            logger.info("%s: %s schema migrated to version %d", path, schema.name, number + 1)
        db.execute(
            "INSERT INTO schema_versions(store, version) VALUES(?, ?) "
            "ON CONFLICT(store) DO UPDATE SET version = excluded.version",
            (schema.name, schema.version),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return schema.version
