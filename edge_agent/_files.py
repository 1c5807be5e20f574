"""Atomic file writes: the one helper of the agent and the mesh.

A file written here is either its old self or its new self, never half of
either, after a crash or a power cut: the data goes to a temporary file in the
same folder, is flushed and fsynced, renamed over the target (``os.replace``
is atomic on POSIX and Windows) and the folder is fsynced so the rename
itself is durable. A failed write leaves no temporary file behind.

It lives in ``edge_agent`` because the agent must not import ``mesh`` and
both need it (agent state and cache; mesh artifacts, exports, cluster files).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> atomic_write(path, b"{}")
    >>> path.read_bytes()
    b'{}'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Make renames in folder ``path`` durable (where the filesystem allows it)."""
    with contextlib.suppress(OSError):  # not every filesystem allows opening a dir
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over it on success.

    Whatever the block writes to the yielded path (by any means: a library
    that takes a file name, say) becomes ``path`` with permissions ``mode``
    once the block ends without an error; on an error ``path`` is untouched
    and the temporary file removed.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "model.onnx"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_bytes(b"onnx")
        >>> target.read_bytes()
        b'onnx'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as written:  # durable before it becomes visible
            os.fsync(written.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (its folder created), with permissions ``mode``."""
    with atomic_path(path, mode=mode) as tmp, tmp.open("wb") as out:
        out.write(data)
