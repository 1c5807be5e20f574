"""Every SQLite store carries a schema version; migrations run; newer files are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent._outbox import Outbox
from edge_agent._sqlite import FILE_FORMAT, Schema, SchemaVersionError, apply_schema
from mesh.compute._runs import _SCHEMA as RUNS_SCHEMA
from mesh.compute._runs import RunRecord, RunStatus, SQLiteStore
from mesh.control._store import PlacementStore
from mesh.core._errors import StoreError
from mesh.core._sqlite import open_sqlite
from mesh.edge._enrolment import EnrolmentStore
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.models._registry import ModelRegistry


def _versions(path: Path) -> tuple[int, dict[str, int]]:
    db = sqlite3.connect(path)
    try:
        user_version = db.execute("PRAGMA user_version").fetchone()[0]
        rows = dict(db.execute("SELECT store, version FROM schema_versions").fetchall())
    finally:
        db.close()
    return user_version, rows


def _record(run_id: str) -> RunRecord:
    return RunRecord(
        id=run_id,
        function="f",
        app="a",
        kind="function",
        args_digest="d",
        args_preview="{}",
        tier="fog",
        status=RunStatus.RUNNING,
        started_at=1.0,
    )


def _set(path: Path, sql: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(sql)
    finally:
        db.close()


# ---------------------------------------------------------------- fresh files


def test_a_fresh_file_gets_every_stores_current_version(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"  # the control plane's stores share one file
    SQLiteStore(path).close()
    PlacementStore(path).close()
    EnrolmentStore(path).close()
    ModelRegistry(path, ArtifactStore(tmp_path / "a"), ArtifactSigner.generate()).close()
    assert _versions(path) == (
        FILE_FORMAT,
        {"runs": 2, "placements": 3, "agents": 1, "models": 2},
    )
    box = Outbox(tmp_path / "agent" / "outbox.db")  # the agent's own file
    box.close()
    assert _versions(tmp_path / "agent" / "outbox.db") == (FILE_FORMAT, {"outbox": 1})


# ---------------------------------------------------------------- adoption


def test_an_unversioned_file_is_adopted_as_version_1(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    old = sqlite3.connect(path)  # what a fogmesh from before versions wrote
    old.executescript(RUNS_SCHEMA.create)
    old.execute(
        "INSERT INTO runs(id, function, app, kind, args_digest, args_preview, tier, status,"
        " started_at) VALUES('r1', 'f', 'a', 'function', 'd', '{}', 'fog', 'running', 1.0)"
    )
    old.commit()
    old.close()
    assert _versions_or_none(path) is None

    store = SQLiteStore(path)
    try:
        [run] = store.list_runs()  # the data is kept
        assert (run.id, run.trigger) == ("r1", None)
    finally:
        store.close()
    assert _versions(path) == (FILE_FORMAT, {"runs": 2})  # adopted as 1, then migrated


def _versions_or_none(path: Path) -> tuple[int, dict[str, int]] | None:
    try:
        return _versions(path)
    except sqlite3.OperationalError:  # no schema_versions table
        return None


def test_an_unversioned_agent_outbox_is_adopted_with_its_events(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.put("t", b"kept")
    box.close()
    _set(path, "DROP TABLE schema_versions")  # as an agent from before versions left it
    _set(path, "PRAGMA user_version = 0")
    box = Outbox(path)
    try:
        assert [i.payload for i in box.peek(10)] == [b"kept"]
    finally:
        box.close()
    assert _versions(path) == (FILE_FORMAT, {"outbox": 1})


# ---------------------------------------------------------------- migrations


def _v1() -> Schema:
    return Schema("notes", "CREATE TABLE IF NOT EXISTS notes (text TEXT NOT NULL);")


def test_migration_steps_run_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    db = open_sqlite(str(path), _v1())
    db.execute("INSERT INTO notes(text) VALUES('a;b'), ('c')")
    db.close()

    calls: list[int] = []

    def upper(conn: sqlite3.Connection) -> None:  # a step in Python
        calls.append(1)
        conn.execute("UPDATE notes SET text = upper(text)")

    v3 = Schema(
        "notes",
        _v1().create,
        migrations=(
            # A SQL step with a ';' inside a string and a trigger's body.
            "ALTER TABLE notes ADD COLUMN tag TEXT NOT NULL DEFAULT 'x;y';"
            "CREATE TRIGGER notes_tag AFTER INSERT ON notes BEGIN"
            " UPDATE notes SET tag = 'new' WHERE rowid = new.rowid; END;",
            upper,
        ),
    )
    assert v3.version == 3
    db = open_sqlite(str(path), v3)
    db.execute("INSERT INTO notes(text) VALUES('d')")
    rows = db.execute("SELECT text, tag FROM notes ORDER BY rowid").fetchall()
    db.close()
    assert [tuple(r) for r in rows] == [("A;B", "x;y"), ("C", "x;y"), ("d", "new")]
    assert _versions(path) == (FILE_FORMAT, {"notes": 3})

    open_sqlite(str(path), v3).close()  # at its version: nothing runs again
    assert calls == [1]


def test_a_fresh_file_runs_every_step(tmp_path: Path) -> None:
    v2 = Schema("notes", _v1().create, migrations=("ALTER TABLE notes ADD COLUMN at REAL;",))
    db = open_sqlite(str(tmp_path / "n.db"), v2)
    columns = [row[1] for row in db.execute("PRAGMA table_info(notes)")]
    db.close()
    assert columns == ["text", "at"]


def test_a_failed_step_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    open_sqlite(str(path), _v1()).close()

    def broken(conn: sqlite3.Connection) -> None:
        raise RuntimeError("step 2 is broken")

    v3 = Schema("notes", _v1().create, migrations=("ALTER TABLE notes ADD COLUMN at REAL;", broken))
    with pytest.raises(RuntimeError, match="step 2 is broken"):
        open_sqlite(str(path), v3)
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(notes)")]
    db.close()
    assert columns == ["text"]  # step 1 rolled back with it
    assert _versions(path) == (FILE_FORMAT, {"notes": 1})


def test_an_incomplete_script_is_refused() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    with pytest.raises(ValueError, match="incomplete SQL statement"):
        # a trigger without its END
        script = "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1;"
        apply_schema(db, Schema("bad", script), path=":memory:")


def test_a_connection_inside_a_transaction_is_refused() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("BEGIN")
    with pytest.raises(ValueError, match="outside a transaction"):
        apply_schema(db, _v1(), path=":memory:")


# ---------------------------------------------------------------- newer files


def test_a_store_written_by_a_newer_fogmesh_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    store = SQLiteStore(path)
    store.start_run(_record("r1"))
    store.close()
    _set(path, "UPDATE schema_versions SET version = 9 WHERE store = 'runs'")

    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "runs schema is version 9" in message
    assert "knows versions up to 2" in message and "a newer fogmesh wrote it" in message
    assert "upgrade fogmesh (pip install -U fogmesh)" in message
    assert _versions(path) == (FILE_FORMAT, {"runs": 9})  # nothing changed
    PlacementStore(path).close()  # the other stores in the file still open


def test_a_newer_file_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    PlacementStore(path).close()
    _set(path, f"PRAGMA user_version = {FILE_FORMAT + 1}")
    with pytest.raises(StoreError, match=r"PRAGMA user_version\) is version 2.*up to 1"):
        PlacementStore(path)


def test_a_newer_agent_outbox_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    _set(path, "UPDATE schema_versions SET version = 2 WHERE store = 'outbox'")
    with pytest.raises(SchemaVersionError) as info:
        Outbox(path)
    assert (info.value.store, info.value.found, info.value.known) == ("outbox", 2, 1)
    assert str(path) in str(info.value) and "upgrade the agent" in str(info.value)
