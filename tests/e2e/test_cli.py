"""The README's commands, run as a user would: the `mesh` CLI in subprocesses."""

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

from mesh._broker import free_port
from mesh._daemon import pid_alive

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _mesh(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
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
    yield values
    # Whatever happens in the test, stop the cluster process it started (by its pid).
    record = data / "cluster.json"
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)


def test_up_deploy_invoke_runs_down(env: dict[str, str], tmp_path: Path) -> None:
    up = _mesh(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    record = json.loads((Path(env["MESH_DATA_DIR"]) / "cluster.json").read_text())

    status = _mesh(env, "status")
    assert status.returncode == 0, status.stderr
    assert "cloud" in status.stdout and "fog" in status.stdout
    assert status.stdout.count(" 0/1 ") == 2  # CPU used/total per node, nothing running

    deployed = _mesh(env, "deploy", "functions/demo.py")
    assert deployed.returncode == 0, deployed.stderr
    listed = _mesh(env, "functions")
    assert "collect_counts" in listed.stdout and "signal_plan" in listed.stdout

    out_dir = tmp_path / "counts"
    invoked = _mesh(
        env,
        "invoke",
        "collect_counts",
        "--arg",
        "site=j9",
        "--arg",
        f"out_dir={out_dir}",
        "--arg",
        "minutes=30",
        "--json",
    )
    assert invoked.returncode == 0, invoked.stderr
    path = json.loads(invoked.stdout)
    assert Path(path).is_file() and "j9" in path

    bad = _mesh(env, "invoke", "collect_counts", "--arg", "site=j9")
    assert bad.returncode == 1
    assert "missing required argument 'out_dir'" in bad.stderr

    runs = _mesh(env, "runs")
    assert runs.returncode == 0
    assert runs.stdout.count("collect_counts") == 1 and "succeeded" in runs.stdout

    down = _mesh(env, "down")
    assert down.returncode == 0, down.stderr
    assert f"stopped the cluster process {record['pid']}" in down.stdout
    assert not (Path(env["MESH_DATA_DIR"]) / "cluster.json").exists()


def test_demo_quick(env: dict[str, str]) -> None:
    demo = _mesh(env, "demo", "--quick", timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo finished" in demo.stdout
    for function in (
        "collect_counts",
        "demand_profiles",
        "tune_forecaster",
        "fit_forecaster",
        "signal_plan",
    ):
        assert function in demo.stdout
    runs = _mesh(env, "runs", "--limit", "100")
    assert "failed" not in runs.stdout and "running" not in runs.stdout
