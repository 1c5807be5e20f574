r"""Send what libraries write to stderr into a log file, keeping stdout for the story.

Ray's C++ core worker writes straight to file descriptor 2 (``core_worker.cc:…``),
Ray's, uvicorn's and amqtt's Python loggers write to ``sys.stderr`` (whose
descriptor is 2), and processes started meanwhile (raylets, workers) inherit
descriptor 2. :func:`stderr_to_file` points descriptor 2 at a log file for the
duration, so all of those land there, and with ``stdout=True`` what is
printed to ``sys.stdout`` too, while the command's own progress goes to the
terminal through a stream it holds. Descriptor 2 is put back on the way out,
Ctrl-C included, so an error the command reports after the block
(``mesh/cli/_output.py · errors``) reaches the terminal.

Example:
    >>> import os, sys, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run.log")
    >>> with stderr_to_file(path):
    ...     _ = os.write(2, b"core_worker.cc: noise\n")
    >>> open(path).read()
    'core_worker.cc: noise\n'
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["stderr_to_file"]


@contextlib.contextmanager
def stderr_to_file(path: str | os.PathLike[str], *, stdout: bool = False) -> Iterator[Path]:
    """Descriptor 2 writes to ``path`` (started afresh) inside the block.

    ``stdout``: ``sys.stdout`` writes there too. Ray's driver prints the errors
    it hears of (a raylet that died, with 40 lines of its ``[state-dump]``) with
    ``print`` to ``sys.stdout``; a caller that tells its own story on stdout
    keeps a stream of its own for that (a rich ``Console`` with its ``file`` set).

    Yields:
        The log file's path (its directory is made when missing).
    """
    log = Path(path)
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    previous = sys.stdout
    try:
        os.dup2(fd, 2)
        os.close(fd)
        if stdout:
            sys.stdout = open(log, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        yield log
    finally:
        if sys.stdout is not previous:
            stream, sys.stdout = sys.stdout, previous
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
