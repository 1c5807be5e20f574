"""Running the `mesh` CLI as a user would, in subprocesses, with a throwaway data dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.edge.broker._broker import free_port
from mesh.runtime._daemon import pid_alive

ROOT = Path(__file__).resolve().parents[2]


def mesh_cli(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``mesh ARGS`` from the repository root with ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the CLI; stops whatever `mesh up` started, by its recorded pid."""
    data = tmp_path / "data"
    values = {
        **os.environ,
        "MESH_DATA_DIR": str(data),
        "RAY_AUTH_MODE": "disabled",
        "COLUMNS": "200",
        "RAY_USAGE_STATS_ENABLED": "0",
        # `mesh up` starts the control plane: keep its gateway and broker off fixed ports.
        "MESH_GATEWAY_PORT": str(free_port()),
        "MESH_EMBEDDED_BROKER_PORT": "0",
    }
    values.pop("MESH_BROKER_URL", None)
    yield values
    stop_recorded_daemon(data)


def stop_recorded_daemon(data: Path) -> None:
    """SIGTERM the `mesh up` daemon recorded in ``data/cluster.json`` and wait (60 s at most)."""
    record = data / "cluster.json"
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
