"""Ending a child process the tests started: SIGTERM, then SIGKILL past a grace period."""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["end_process"]


def end_process(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> int | None:
    """End ``proc`` (by its pid) if it still runs; its exit status.

    Example:
        >>> import sys
        >>> end_process(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        -15
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
