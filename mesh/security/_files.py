"""Files that hold a secret or a hash: which they are, and whether only their owner reads them.

Under ``MESH_DATA_DIR`` they are every key (``keys/*`` but public keys: the token
secret, the artifact signing and URL keys, Ray's token), the SQLite store
(``mesh.db`` and its WAL files: agents' password hashes and token digests), the
Mosquitto password file, the control plane's broker credentials and agents'
password files. The mesh creates each with mode 0600;
:func:`check_secret_files` runs at control-plane start-up and warns, naming the
file, its mode and the fix, about any that others may read (copied in, restored
from a backup, or written by an older fogmesh).

Example:
    >>> check_secret_files(Path("/nonexistent"))
    []
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_secret_files", "secret_files"]

logger = logging.getLogger(__name__)

_PUBLIC_SUFFIXES = (".pub", ".pub.pem")


def secret_files(data_dir: Path, also: Iterable[Path] = ()) -> list[Path]:
    """The secret-holding files that exist under ``data_dir``, plus those of ``also`` that exist."""
    found: list[Path] = []
    keys = data_dir / "keys"
    if keys.is_dir():
        found += [
            p
            for p in sorted(keys.iterdir())
            if p.is_file() and not p.name.endswith(_PUBLIC_SUFFIXES)
        ]
    found += sorted(data_dir.glob("*.db")) + sorted(data_dir.glob("*.db-wal"))
    found += sorted(data_dir.glob("*.db-shm"))
    found += [data_dir / "mqtt" / "passwd", data_dir / "mqtt" / "control-plane.json"]
    found += sorted(data_dir.glob("agents/*/mqtt-password"))
    found += list(also)
    unique: dict[Path, None] = {}
    for path in found:
        if path.is_file():
            unique.setdefault(path, None)
    return list(unique)


def check_secret_files(
    data_dir: Path, *, also: Iterable[Path] = (), group_readable: Iterable[Path] = ()
) -> list[str]:
    """Warn about each secret file others may read; returns the warnings.

    Args:
        data_dir: the mesh's data dir.
        also: more secret files (e.g. a password file kept elsewhere).
        group_readable: files whose group may read them too (the Mosquitto password
            file, where Mosquitto runs as its own user in the file's group).
    """
    allowed_group = {Path(p) for p in group_readable}
    warnings: list[str] = []
    for path in secret_files(data_dir, also):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        loose = mode & (0o007 if path in allowed_group else 0o077)
        if loose:
            limit = "0640" if path in allowed_group else "0600"
            message = (
                f"secret file {path} has mode {mode:04o}: others may read it; "
                f"run `chmod {limit} {path}`"
            )
            logger.warning("%s", message)
            warnings.append(message)
    return warnings
