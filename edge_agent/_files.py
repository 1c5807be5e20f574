"""Atomic file writes: the one helper of the agent and the mesh.

A file written here is either its old self or its new self, never half of
either, after a crash or a power cut: the data goes to a temporary file in the
same folder, is flushed and fsynced, renamed over the target (``os.replace``
is atomic on POSIX and Windows) and the folder is fsynced so the rename
itself is durable. A failed write leaves no temporary file behind.

It lives in ``edge_agent`` because the agent must not import ``mesh`` and
both need it (agent state and cache; mesh artifacts, exports, cluster files).

So does the one check on strings that become file names (module names,
versions, artifact ids, agent ids): :func:`check_name` takes a single plain
name (no separators, no ``.``/``..``, no NUL, 1-128 characters) and
:func:`confined` joins names under a root and makes sure the result, resolved,
is still inside it (a symlink cannot lead out either). Both raise ValueError
naming what was expected; callers turn it into their 4xx.

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
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MAX_NAME_LENGTH", "atomic_path", "atomic_write", "check_name", "confined", "fsync_dir"]

#: The longest name :func:`check_name` accepts.
MAX_NAME_LENGTH = 128
_NAME = re.compile(r"^[A-Za-z0-9_@:+-][A-Za-z0-9_.@:+-]*$")


def check_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is safe as one file or folder name, else raise ValueError.

    Letters, digits and ``_.@:+-``, 1-128 of them, not starting with ``.`` (so
    neither ``.`` nor ``..``, nor a hidden file); no path separator, no NUL.

    Example:
        >>> check_name("vehicle-counter")
        'vehicle-counter'
        >>> check_name("../etc", "module name")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: invalid module name '../etc': use 1-128 of letters, digits and _.@:+- ...
    """
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME_LENGTH
        or not _NAME.match(value)
    ):
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "..."
        raise ValueError(
            f"invalid {what} {shown!r}: use 1-{MAX_NAME_LENGTH} of letters, digits and "
            "_.@:+- (not starting with '.')"
        )
    return value


def confined(root: Path, *names: str, what: str = "name") -> Path:
    """``root / names...``, each a :func:`check_name`, resolved inside ``root``.

    Raises:
        ValueError: a name is not one, or the path (symlinks resolved) leaves ``root``.

    Example:
        >>> confined(Path("/srv/cache"), "modules", "counter").as_posix()
        '/srv/cache/modules/counter'
    """
    for name in names:
        check_name(name, what)
    base = Path(os.path.abspath(root))
    path = base.joinpath(*names)
    real_base, real = base.resolve(), path.resolve()
    if real != real_base and real_base not in real.parents:
        raise ValueError(f"{what} {'/'.join(names)!r} leads outside {base}")
    return path


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
