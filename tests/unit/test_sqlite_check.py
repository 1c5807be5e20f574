"""`mesh up` checks mesh.db before it starts, backs a sound one up and refuses a damaged one."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from mesh.core._settings import MeshSettings
from mesh.core._sqlite_check import (
    StoreDamagedError,
    back_up_store,
    check_store,
    latest_backup,
)
from mesh.runtime._daemon import cluster_up

_PAGE = 4096


def _store(path: Path, rows: int = 2000) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA page_size={_PAGE}")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE INDEX t_v ON t(v)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"value-{i:06d}") for i in range(rows)])
    db.commit()
    db.close()


def _damage(path: Path, page: int = 3) -> None:
    """Overwrite one page in the middle with bytes that are no b-tree page."""
    with path.open("r+b") as f:
        f.seek(page * _PAGE)
        f.write(b"\xa5" * _PAGE)


def test_a_sound_store_passes_and_is_backed_up_owner_only(tmp_path: Path) -> None:
    path, backups = tmp_path / "mesh.db", tmp_path / "backups"
    _store(path)
    check_store(path, backups)

    copy = back_up_store(path, backups)

    assert copy is not None and copy.parent == backups and latest_backup(backups) == copy
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    db = sqlite3.connect(copy)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 2000
    db.close()


def test_no_store_yet_is_fine_and_has_no_backup(tmp_path: Path) -> None:
    check_store(tmp_path / "mesh.db", tmp_path / "backups")
    assert back_up_store(tmp_path / "mesh.db", tmp_path / "backups") is None
    assert latest_backup(tmp_path / "backups") is None


def test_only_the_newest_backups_are_kept(tmp_path: Path) -> None:
    path, backups = tmp_path / "mesh.db", tmp_path / "backups"
    _store(path, rows=10)
    copies = [back_up_store(path, backups, keep=2) for _ in range(4)]
    assert sorted(backups.iterdir()) == sorted(c for c in copies[-2:] if c is not None)
    assert latest_backup(backups) == copies[-1]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        back_up_store(path, backups, keep=0)


def test_a_damaged_store_is_refused_naming_it_and_the_newest_backup(tmp_path: Path) -> None:
    path, backups = tmp_path / "mesh.db", tmp_path / "backups"
    _store(path)
    good = back_up_store(path, backups)
    _damage(path)

    with pytest.raises(StoreDamagedError) as caught:
        check_store(path, backups)

    message = str(caught.value)
    assert str(path) in message and "is damaged" in message and str(good) in message
    assert caught.value.path == path and caught.value.backup == good


def test_a_file_that_is_no_database_is_refused_and_says_there_is_no_backup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mesh.db"
    path.write_bytes(b"not a database at all, " * 200)
    with pytest.raises(StoreDamagedError, match="no backup exists") as caught:
        check_store(path, tmp_path / "backups")
    assert "file is not a database" in str(caught.value) and caught.value.backup is None


def test_mesh_up_refuses_a_damaged_store_before_it_starts_anything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _store(data / "mesh.db")
    _damage(data / "mesh.db")

    with pytest.raises(StoreDamagedError, match="mesh.db is damaged"):
        cluster_up(MeshSettings(data_dir=data), wait_s=5)

    assert not (data / "cluster.log").exists()  # no control-plane process was started


def test_the_control_plane_process_refuses_it_in_one_line_without_starting(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "mesh.db").write_bytes(b"not a database at all, " * 200)
    env = {**os.environ, "MESH_DATA_DIR": str(data), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "mesh.runtime"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"the store {data / 'mesh.db'} is damaged" in done.stderr
    assert "Traceback" not in done.stderr and not (data / "cluster.json").exists()
