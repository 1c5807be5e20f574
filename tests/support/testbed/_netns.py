"""Network namespaces by ``ip``: make, configure, list, empty and delete them; sweep leftovers.

Every name this harness makes starts with :data:`PREFIX` and carries its owner's
pid (``fmtb-<pid>-<hex4>-<host>``), so :func:`sweep` can tell a leftover (its
owner is gone: a test killed with ``kill -9``) from a test bed still in use.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "PREFIX",
    "NetnsError",
    "add",
    "alive",
    "delete",
    "empty",
    "ip",
    "ip_batch",
    "list_namespaces",
    "pids",
    "sweep",
    "workdirs",
    "write_sysctls",
]

PREFIX = "fmtb-"
"""Every namespace and work directory of the test bed starts with this."""

_NAME = re.compile(r"^fmtb-(\d+)-([0-9a-f]{4})(?:-(.+))?$")
_POLLS = 30  # per phase (SIGTERM, then SIGKILL): bounded


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message has the command and its stderr."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return its stdout; NetnsError with stderr when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def ip_batch(netns: str | None, commands: Sequence[str]) -> None:
    """Run many ``ip`` commands in one process (``ip [-n NS] -batch -``), stopping at a failure."""
    head = ["ip", *(("-n", netns) if netns else ()), "-batch", "-"]
    done = subprocess.run(
        head,
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(head)} ({netns}): {done.stderr.strip() or done.returncode}")


def add(name: str) -> None:
    """Make namespace ``name`` with its loopback up."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Set ``/proc/sys/<key>`` values inside namespace ``name`` (``net/ipv4/ip_forward``: ``1``).

    Written by ``sh`` inside the namespace: ``/proc/sys/net`` shows the writer's
    namespace, and ``sh`` is everywhere while ``sysctl`` (procps) may not be.
    """
    script = "\n".join(f"echo {v} > /proc/sys/{k}" for k, v in values.items())
    done = subprocess.run(
        ["ip", "netns", "exec", name, "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise NetnsError(f"sysctls in {name}: {done.stderr.strip() or done.returncode}")


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    """Names of the namespaces starting with ``prefix`` (``ip netns list``)."""
    names = (line.split()[0] for line in ip("netns", "list").splitlines() if line.strip())
    return sorted(n for n in names if n.startswith(prefix))


def pids(name: str) -> list[int]:
    """Pids of every process in namespace ``name`` (``ip netns pids``); [] when it is gone."""
    return [int(p) for p in ip("netns", "pids", name, check=False).split() if p.isdigit()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and waiting to be reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def empty(name: str, *, grace_s: float = 3.0) -> None:
    """End every process in namespace ``name``: SIGTERM, then SIGKILL after ``grace_s``.

    Raises:
        NetnsError: processes still run ``grace_s`` after SIGKILL.
    """
    _signal_all(name, signal.SIGTERM)
    if _emptied(name, grace_s, None):
        return
    if _emptied(name, grace_s, signal.SIGKILL):  # a process forked meanwhile is killed too
        return
    left = [p for p in pids(name) if alive(p)]
    raise NetnsError(f"namespace {name}: processes {left} still run after SIGKILL")


def _signal_all(name: str, sig: signal.Signals) -> None:
    for pid in pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _emptied(name: str, within_s: float, sig: signal.Signals | None) -> bool:
    """Whether namespace ``name`` has no live process within ``within_s`` (sending ``sig`` each poll)."""
    for _ in range(_POLLS):
        if sig is not None:
            _signal_all(name, sig)
        if not [p for p in pids(name) if alive(p)]:
            return True
        time.sleep(within_s / _POLLS)
    return False


def delete(name: str) -> None:
    """End every process in namespace ``name``, then delete it (its links go with it)."""
    empty(name)
    if name in list_namespaces():
        ip("netns", "del", name)


def owner(name: str) -> int | None:
    """The pid of the process that made test bed name ``name``, or None if not one of ours."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def workdirs(prefix: str = PREFIX) -> list[Path]:
    """The test beds' work directories (``$TMPDIR/fmtb-<pid>-<hex4>``)."""
    return sorted(p for p in Path(tempfile.gettempdir()).glob(f"{prefix}*") if p.is_dir())


def sweep(*, force: bool = False) -> list[str]:
    """Delete the test beds whose owner process is gone; ``force``: every test bed.

    Ends the processes in each leftover namespace, deletes the namespace (with its
    veths, bridge and TUN devices) and removes its work directory.

    Returns:
        The names removed (namespaces and directories).
    """
    removed: list[str] = []
    for name in list_namespaces():
        pid = owner(name)
        if pid is not None and (force or not alive(pid)):
            delete(name)
            removed.append(name)
    for path in workdirs():
        pid = owner(path.name)
        if pid is not None and (force or not alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed
