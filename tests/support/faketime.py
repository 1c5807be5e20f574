"""Processes whose wall clock is skewed: libfaketime (Debian package ``faketime``).

A host minutes off the control plane is played by a process started with
libfaketime preloaded: its ``time.time()`` (``CLOCK_REALTIME``) reads ``offset_s``
off, its monotonic clock stays true (timeouts and asyncio are untouched, as on
a real host whose wall clock is wrong). Import explicitly::

    from tests.support.faketime import require_faketime, skewed_env

Python processes also load ``tests/support/faketime_site/sitecustomize.py``,
which works around libfaketime 0.9.10's broken ``time.sleep`` under Python 3.11
(the reason is there). Without libfaketime the tests that need it skip with the
reason, unless ``MESH_REQUIRE_SERVICES=1``, which turns the skip into a failure
(as :func:`tests.support.brokers.require_mosquitto` does).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

__all__ = ["PACKAGE", "require_faketime", "skewed_env"]

#: The Debian package that installs the library (``apt-get install faketime``).
PACKAGE = "faketime"

_ROOT = Path(__file__).resolve().parents[2]
_SITE = Path(__file__).resolve().with_name("faketime_site")

_PATTERNS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",  # thread-safe: replicas run several threads
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)


def _library() -> str | None:
    for pattern in _PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def skewed_env(offset_s: float) -> dict[str, str]:
    """The environment that runs a process with its wall clock ``offset_s`` off (whole s).

    Raises:
        RuntimeError: libfaketime is not installed (call :func:`require_faketime` first).
    """
    library = _library()
    if library is None:
        raise RuntimeError(f"libfaketime is not installed (apt-get install {PACKAGE})")
    path = [str(_SITE), str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        "LD_PRELOAD": library,
        "FAKETIME": f"{round(offset_s):+d}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timeouts and asyncio keep the true pace
        "FAKETIME_NO_CACHE": "1",
        "PYTHONPATH": os.pathsep.join(path),
    }


def require_faketime(offset_s: float = 300.0) -> None:
    """Skip (fail under MESH_REQUIRE_SERVICES=1) unless libfaketime shifts a Python child.

    Checked once per call with a real child process: a library that is installed
    but does not move ``time.time()`` (a static Python, a hardened loader) would
    let a skew test pass without any skew.
    """
    if _library() is None:
        _unavailable(f"libfaketime is not installed (apt-get install {PACKAGE})")
    probe = [sys.executable, "-c", "import time; time.sleep(0.01); print(time.time())"]
    before = time.time()
    out = subprocess.run(
        probe,
        env={**os.environ, **skewed_env(offset_s)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    after = time.time()
    try:
        child = float(out.stdout.strip())
    except ValueError:
        child = float("nan")
    if not before + offset_s - 1.0 <= child <= after + offset_s + 1.0:
        _unavailable(
            f"libfaketime does not shift this Python's clock by {offset_s:+.0f} s "
            f"(the child read {child - before:+.1f} s; {out.stderr.strip()[:200]})"
        )
