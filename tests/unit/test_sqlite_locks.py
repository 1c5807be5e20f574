"""Opening a store never drops the locks another store of this process holds on the file.

POSIX locks belong to the process: closing *any* descriptor of a file releases
every lock the process holds on it. A store opened while another one writes the
same file (mesh.db holds several) must not open and close the file itself: the
first store's lock on the database file goes, and another process may then, for
example, take the file out of WAL mode under it ("database disk image is
malformed", seen under the traffic scenario).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from edge_agent._sqlite import Schema
from mesh.core._sqlite import open_sqlite

_SCHEMA = Schema("locks", "CREATE TABLE IF NOT EXISTS t (v INTEGER);")

_OTHER_PROCESS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
except sqlite3.OperationalError as exc:
    print("LOCKED" if "locked" in str(exc) else f"OTHER {exc}")
else:
    print(f"SWITCHED TO {mode}")
"""


def _other_process_leaves_wal(path: Path) -> str:
    """What another process gets asking to take the file out of WAL mode."""
    return subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()


def test_opening_a_second_store_keeps_the_first_ones_lock(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    first = open_sqlite(str(path), _SCHEMA)
    first.execute("BEGIN")  # a read transaction: its lock keeps the file in WAL mode
    first.execute("SELECT * FROM t").fetchall()
    assert _other_process_leaves_wal(path) == "LOCKED"

    second = open_sqlite(str(path), _SCHEMA)  # another store of this process, same file

    try:
        assert _other_process_leaves_wal(path) == "LOCKED"
    finally:
        first.execute("COMMIT")
        first.close()
        second.close()


def test_a_new_store_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    old = os.umask(0o022)
    try:
        open_sqlite(str(path), _SCHEMA).close()
    finally:
        os.umask(old)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
