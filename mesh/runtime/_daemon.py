"""`mesh up` / `mesh down`: the long-running local cluster process.

`mesh up` starts ``python -m mesh.runtime`` in its own session; that
process starts the embedded Ray cluster (a cloud head and fog nodes), the MQTT
broker, the serving manager and the HTTP gateway, writes ``cluster.json`` in
the data directory (with ``gateway_url`` and ``broker_url``) once all are
ready, and holds them until it gets SIGTERM. `mesh down` sends SIGTERM to that
pid, and only that pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.core._errors import BackendError, ClusterNotRunningError
from mesh.core._settings import MeshSettings
from mesh.core._sqlite_check import check_store

__all__ = ["cluster_down", "cluster_up", "pid_alive", "read_cluster_file"]


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_cluster_file(settings: MeshSettings) -> dict[str, Any] | None:
    """The running cluster's record, or None when none is up (stale files are ignored)."""
    path = settings.cluster_file
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    return info


def cluster_up(
    settings: MeshSettings,
    *,
    wait_s: float = 180.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start the local cluster process unless one is up; returns its record.

    Raises:
        StoreDamagedError: the data dir's ``mesh.db`` failed its integrity check
            (nothing started; the message names the file and the newest backup).
        BackendError: the process died or did not come up within ``wait_s``;
            the message ends with the tail of its log.
    """
    running = read_cluster_file(settings)
    if running is not None:
        return running
    # Checked here too (the process checks again and backs up) for a plain message.
    check_store(settings.store_path, settings.data_dir / "backups")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.cluster_file.unlink(missing_ok=True)
    log_path = settings.data_dir / "cluster.log"
    env = {
        **os.environ,
        "MESH_DATA_DIR": str(settings.data_dir),
        "MESH_RAY_AUTH_MODE": settings.ray_auth_mode,
        "MESH_RAY_NODE_IP": settings.ray_node_ip,
        "RAY_AUTH_MODE": settings.ray_auth_mode,
    }
    if settings.ray_token_file is not None:
        env["MESH_RAY_TOKEN_FILE"] = str(settings.ray_token_file)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mesh.runtime"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=str(settings.data_dir),
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = read_cluster_file(settings)
        if info is not None and info.get("pid") == process.pid:
            return info
        if process.poll() is not None:
            raise BackendError(
                f"the cluster process exited with code {process.returncode} before it was "
                f"ready; last lines of {log_path}:\n{_tail(log_path)}"
            )
        if progress is not None:
            progress(f"starting the local cluster ({time.monotonic() - deadline + wait_s:.0f} s)")
        time.sleep(0.25)
    process.terminate()
    raise BackendError(
        f"the cluster did not come up within {wait_s:g} s; last lines of {log_path}:\n"
        f"{_tail(log_path)}"
    )


def cluster_down(settings: MeshSettings, *, wait_s: float = 60.0) -> int:
    """Stop the cluster started by :func:`cluster_up`; returns the pid stopped.

    Raises:
        ClusterNotRunningError: no cluster is up (a stale record is removed).
        BackendError: the process did not exit within ``wait_s`` after SIGTERM.
    """
    info = read_cluster_file(settings)
    if info is None:
        settings.cluster_file.unlink(missing_ok=True)
        raise ClusterNotRunningError(f"no cluster is up (no live record in {settings.data_dir})")
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise BackendError(f"the cluster process {pid} did not stop within {wait_s:g} s")
        time.sleep(0.2)
    settings.cluster_file.unlink(missing_ok=True)
    return pid


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
