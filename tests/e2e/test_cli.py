"""The README's commands, run as a user would: the `mesh` CLI in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import mesh_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_up_deploy_invoke_runs_down(env: dict[str, str], tmp_path: Path) -> None:
    up = mesh_cli(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    record = json.loads((Path(env["MESH_DATA_DIR"]) / "cluster.json").read_text())

    status = mesh_cli(env, "status")
    assert status.returncode == 0, status.stderr
    assert "cloud" in status.stdout and "fog" in status.stdout
    assert status.stdout.count(" 0/1 ") == 2  # CPU used/total per node, nothing running

    deployed = mesh_cli(env, "deploy", "functions/demo.py")
    assert deployed.returncode == 0, deployed.stderr
    listed = mesh_cli(env, "functions")
    assert "collect_counts" in listed.stdout and "signal_plan" in listed.stdout

    out_dir = tmp_path / "counts"
    invoked = mesh_cli(
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

    bad = mesh_cli(env, "invoke", "collect_counts", "--arg", "site=j9")
    assert bad.returncode == 1
    assert "missing required argument 'out_dir'" in bad.stderr

    runs = mesh_cli(env, "runs")
    assert runs.returncode == 0
    assert runs.stdout.count("collect_counts") == 1 and "succeeded" in runs.stdout

    down = mesh_cli(env, "down")
    assert down.returncode == 0, down.stderr
    assert f"stopped the cluster process {record['pid']}" in down.stdout
    assert not (Path(env["MESH_DATA_DIR"]) / "cluster.json").exists()


def test_demo_pipeline_quick(env: dict[str, str]) -> None:
    demo = mesh_cli(env, "demo", "--pipeline", "--quick", timeout=600)
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
    runs = mesh_cli(env, "runs", "--limit", "100")
    assert "failed" not in runs.stdout and "running" not in runs.stdout
