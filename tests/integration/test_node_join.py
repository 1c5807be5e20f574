"""`mesh node join` / `leave` against a real head started with `ray start --head`, token auth on.

The head is started as README's "Across machines" starts it on a cloud host
(labelled ``mesh.tier=cloud``, ``RAY_AUTH_MODE=token``), here on loopback with
its own ports; the node joins with the token file, a driver sees its labels, and
``leave`` ends the node's processes and nothing else. Every Ray process the test
started is ended by pid at the end (those naming the head's GCS port).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mesh.compute._backend import SITE_LABEL, TIER_LABEL
from mesh.edge.broker._broker import free_port
from tests.support.cli import mesh_cli

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

RAY = str(Path(sys.executable).with_name("ray"))


def _ray_processes(port: int) -> list[psutil.Process]:
    """This host's processes of the cluster whose GCS is on ``port`` (and their children)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(
            part.endswith(f":{port}") or part == f"--gcs_server_port={port}" for part in cmdline
        ):
            found[proc.pid] = proc
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in proc.children(recursive=True)})
    return list(found.values())


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def head(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Ray head on loopback with token auth and the cloud label; ended by pid afterwards."""
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    # A loopback driver's "single host" switch (set by earlier tests) would keep nodes out.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    started = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--labels={TIER_LABEL}=cloud",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-port={free_port()}",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"address": f"127.0.0.1:{port}", "port": port, "token": token, "env": env}
    finally:
        procs = _ray_processes(port)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)


def _labels_of_alive_nodes(head: dict[str, Any]) -> list[dict[str, str]]:
    script = (
        "import json, ray\n"
        f"ray.init(address={head['address']!r}, logging_level='ERROR')\n"
        "print(json.dumps([n.get('Labels', {}) for n in ray.nodes() if n['Alive']]))\n"
    )
    env = {**head["env"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    labels: list[dict[str, str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return labels


def test_a_fog_host_joins_with_its_labels_and_leaves(head: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "MESH_DATA_DIR": str(tmp_path / "fog-data"), "COLUMNS": "200"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    head_before = _ray_processes(head["port"])
    joined = mesh_cli(env, "node", "join", head["address"], "--tier", "fog", "--site", "plant-3",
                      "--cpus", "1", "--node-ip", "127.0.0.1",
                      "--token-file", str(head["token"]))  # fmt: skip
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "mesh.tier=fog, mesh.site=plant-3" in joined.stdout
    fog = [lab for lab in _labels_of_alive_nodes(head) if lab.get(TIER_LABEL) == "fog"]
    assert [lab.get(SITE_LABEL) for lab in fog] == ["plant-3"]
    record = json.loads((tmp_path / "fog-data" / "node.json").read_text())
    node_pids = {int(pid) for pid in record["pids"]}
    assert node_pids and not node_pids & {p.pid for p in head_before}, record

    again = mesh_cli(env, "node", "join", head["address"], "--tier", "fog",
                     "--token-file", str(head["token"]))  # fmt: skip
    assert again.returncode == 1 and "mesh node leave" in again.stderr, again.stderr

    left = mesh_cli(env, "node", "leave")
    assert left.returncode == 0, left.stdout + left.stderr
    assert not [lab for lab in _labels_of_alive_nodes(head) if lab.get(TIER_LABEL) == "fog"]
    assert not [pid for pid in node_pids if _running(pid)], node_pids
    # The head's own processes are untouched (the driver above may have started more).
    assert all(p.is_running() for p in head_before), head_before


def test_a_join_without_the_token_names_what_to_pass(head: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "MESH_DATA_DIR": str(tmp_path / "fog-data"), "COLUMNS": "200"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("MESH_RAY_TOKEN_FILE", None)
    joined = mesh_cli(env, "node", "join", head["address"], "--tier", "fog", timeout=60)
    assert joined.returncode == 1
    assert "requires a token" in joined.stderr and "--token-file" in joined.stderr
