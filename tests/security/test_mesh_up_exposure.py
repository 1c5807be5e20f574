"""After `mesh up` and a deployment, nothing of the mesh listens beyond loopback.

Issue 14's "Done means": ``ss -ltnp`` after `mesh up` shows nothing on a
non-loopback address that answers without credentials. Before it, the GCS,
raylets, dashboard agents and every replica's OIP server listened on all
interfaces or the node's address, and replicas answered with no credential.

The listeners are those of the `mesh up` daemon's whole process family (the
control plane with its gateway and embedded broker, the Ray processes, the
replica's worker), read from ``/proc``; ``ss -ltnp`` is asked too where it is
installed, and both must agree that nothing is exposed.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from tests.support.cli import mesh_cli
from tests.support.listeners import family_pids, non_loopback, tcp_listeners

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

pytest.importorskip("onnx")


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _ss_listeners(pids: set[int]) -> list[str]:
    """``ss -ltnpH`` lines whose process is one of ``pids``."""
    out = subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]


def _ss_exposed(lines: list[str]) -> list[str]:
    """The lines whose local address is not loopback (``127.0.0.0/8`` or ``[::1]``)."""
    exposed = []
    for line in lines:
        local = line.split()[3]
        host = local.rpartition(":")[0].strip("[]")
        if not (host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")):
            exposed.append(line)
    return exposed


@pytest.fixture(scope="module")
def deployed(mesh_up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``mesh_up`` with one module deployed on the fog tier (one replica)."""
    from tests.support.agent_fixtures import build_cnn

    env = mesh_up["env"]
    model = build_cnn(tmp_path_factory.mktemp("exposure") / "counter.onnx")
    _ok(
        mesh_cli(
            env,
            "models",
            "register",
            "exposure-counter",
            str(model),
            "--code-version",
            "1",
            timeout=120,
        )
    )
    _ok(
        mesh_cli(
            env,
            "modules",
            "deploy",
            "exposure-counter",
            "--version",
            "v1",
            "--tier",
            "fog",
            "--replicas",
            "1",
            timeout=300,
        )
    )
    return mesh_up


def test_nothing_of_the_mesh_listens_beyond_loopback(deployed: dict[str, Any]) -> None:
    """Gateway, broker, Ray and the replica: every listening socket is on loopback."""
    pids = family_pids([deployed["pid"]])
    listeners = tcp_listeners(pids, children=False)
    ports = {item.port for item in listeners}
    for key in ("gateway_url", "broker_url"):
        port = int(deployed[key].rstrip("/").rpartition(":")[2])
        assert port in ports, f"the {key[:-4]} (port {port}) was not among {sorted(ports)}"
    assert len(listeners) > 3, f"too few listeners found to mean anything: {listeners}"

    exposed = non_loopback(listeners)

    assert exposed == [], "listening beyond loopback: " + ", ".join(map(str, exposed))


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_ss_agrees(deployed: dict[str, Any]) -> None:
    """``ss -ltnp``, as an operator would run it, shows the same: nothing exposed."""
    pids = family_pids([deployed["pid"]])
    lines = _ss_listeners(pids)
    assert lines, f"ss shows no listener of the mesh's processes {sorted(pids)}"

    assert _ss_exposed(lines) == [], "\n".join(_ss_exposed(lines))
