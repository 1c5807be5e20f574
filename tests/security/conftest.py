"""The security suite: each test is an attack on a running part, and must be refused.

Every test here failed on the code before the secure-by-default work (issue 14):
the part answered, crashed, leaked or grew. A test that needs a system service
skips with its reason, or fails under ``MESH_REQUIRE_SERVICES=1``.

``mesh_up`` is one `mesh up` for the whole suite, with its defaults (token auth,
loopback binds) and small CPU budgets: one 1-CPU cloud node and one 1-CPU fog
node, stopped by `mesh down` (or SIGTERM to its recorded pid) at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from mesh.edge.broker._broker import free_port
from tests.support.cli import mesh_cli, stop_recorded_daemon


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here ``security`` (``pytest -m security`` runs the suite alone)."""
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.security)


@pytest.fixture(scope="session")
def mesh_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`mesh up` with its defaults and small CPU budgets; yields its cluster record.

    The record (``cluster.json``) gains ``data_dir`` and ``env`` (the CLI's environment).
    """
    pytest.importorskip("ray")
    data = tmp_path_factory.mktemp("mesh-up-sec")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_AUTH", "MESH_RAY_", "MESH_BROKER_URL"))
    }
    env.update(
        MESH_DATA_DIR=str(data),
        MESH_CLOUD_CPUS="1",
        MESH_FOG_NODES="1",
        MESH_FOG_CPUS="1",
        MESH_OBJECT_STORE_MB="100",
        MESH_GATEWAY_PORT=str(free_port()),
        MESH_EMBEDDED_BROKER_PORT="0",
        RAY_USAGE_STATS_ENABLED="0",
        COLUMNS="200",
    )
    up = mesh_cli(env, "up", "--wait-s", "240", timeout=300)
    record = data / "cluster.json"
    try:
        assert up.returncode == 0, f"mesh up failed:\n{up.stdout}\n{up.stderr}"
        info: dict[str, Any] = json.loads(record.read_text())
        info["data_dir"] = data
        info["env"] = env
        yield info
    finally:
        mesh_cli(env, "down", timeout=120)
        stop_recorded_daemon(data)
