"""Attacks on the Ray cluster that `mesh up` starts: joining it without its token, or from afar.

Before issue 14 the embedded cluster ran ``RAY_AUTH_MODE=disabled`` with its
GCS, raylets and agents on all interfaces: one ``ray.init(address=...)`` from
any process that could reach the host ran code as the mesh's user, which can
read every key under ``<data_dir>/keys``.

The cluster here is started by ``mesh up`` itself (one 1-CPU cloud node and one
1-CPU fog node) and stopped by ``mesh down`` (or SIGTERM to its recorded pid).
Each attacker is a separate process with a bounded wait (``_ATTACK_TIMEOUT_S``):
a refusal must be an answer, not a hang.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from tests.support.listeners import non_loopback, tcp_listeners

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# Generous: a refused ray.init returns in ~20 s on a loaded 2-core machine;
# an accepted one in ~10 s. Only a hang reaches this.
_ATTACK_TIMEOUT_S = 150

_ATTACKER = """
import os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)

@ray.remote(num_cpus=0)
def steal(path):
    with open(path, "rb") as handle:
        return os.getuid(), len(handle.read())

print("RAN", ray.get(steal.remote(sys.argv[2]), timeout=60), flush=True)
"""


def _attacker_env(home: Path, **extra: str) -> dict[str, str]:
    """An outsider's environment: none of the mesh's Ray credentials, an empty HOME."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("RAY_AUTH", "MESH_"))
    }
    # An empty HOME: no ~/.ray/auth_token to fall back on.
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), **extra)
    return env


def _attack(address: str, secret: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", _ATTACKER, address, str(secret)],
            env=env,
            capture_output=True,
            text=True,
            timeout=_ATTACK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"ray.init({address!r}) neither joined nor was refused in {_ATTACK_TIMEOUT_S} s "
            f"(a hang, not a refusal): {exc.stderr!s:.2000}"
        )


def _outward_ip() -> str | None:
    """This host's address as others see it (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        except OSError:
            return None
        ip = str(probe.getsockname()[0])
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, id="wrong-token"),
    ],
)
def test_a_process_without_the_token_cannot_join_the_cluster(
    mesh_up: dict[str, Any], tmp_path: Path, credentials: dict[str, str]
) -> None:
    """A local process that knows the address but not the token is refused by the GCS."""
    secret = mesh_up["data_dir"] / "keys" / "token-secret"
    # Best placed attacker: on this host, and told to keep a loopback address as given.
    env = _attacker_env(tmp_path, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **credentials)

    result = _attack(mesh_up["address"], secret, env)

    assert "RAN" not in result.stdout, f"an outsider ran a task on the cluster: {result.stdout}"
    assert result.returncode != 0
    assert "AuthenticationError" in result.stderr or "InvalidAuthToken" in result.stderr, (
        f"refused, but not by authentication:\n{result.stderr[-3000:]}"
    )


def test_the_ray_token_is_kept_beside_the_other_keys_owner_only(mesh_up: dict[str, Any]) -> None:
    """`mesh up` generated the cluster's token at <data_dir>/keys/ray-token, mode 0600."""
    token = mesh_up["data_dir"] / "keys" / "ray-token"

    assert token.is_file(), f"no Ray token at {token}"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 32


def test_no_ray_process_listens_beyond_loopback(mesh_up: dict[str, Any]) -> None:
    """Every listener of the Ray processes `mesh up` started is on loopback.

    Those are the daemon's descendants (GCS, raylets, dashboard and runtime-env
    agents, workers) and the daemon's own driver sockets; the gateway and the
    broker the daemon also serves (other parts) are left out by port.
    """
    others = {
        int(mesh_up[key].rpartition(":")[2].rstrip("/"))
        for key in ("gateway_url", "broker_url")
        if mesh_up.get(key)
    }
    listeners = [
        item
        for item in tcp_listeners([mesh_up["pid"]])
        if not (item.pid == mesh_up["pid"] and item.port in others)
    ]

    assert any(item.port == int(mesh_up["address"].rpartition(":")[2]) for item in listeners), (
        f"the GCS was not among the listeners found: {[str(item) for item in listeners]}"
    )
    exposed = non_loopback(listeners)
    assert exposed == [], "Ray listens beyond loopback: " + ", ".join(map(str, exposed))


def test_the_gcs_cannot_be_reached_from_the_hosts_outward_address(
    mesh_up: dict[str, Any],
) -> None:
    """A connection to the GCS port on the host's network address is refused."""
    ip = _outward_ip()
    if ip is None:
        pytest.skip("this host has no non-loopback IPv4 address to attack from")
    port = int(mesh_up["address"].rpartition(":")[2])

    with pytest.raises(OSError), socket.create_connection((ip, port), timeout=10):
        pass


def test_mesh_refuses_a_token_cluster_without_a_token_and_names_what_to_set(
    mesh_up: dict[str, Any], tmp_path: Path
) -> None:
    """Joining a token cluster with no token is a clear error, not a Ray traceback or a hang."""
    env = _attacker_env(tmp_path)
    env.update(
        MESH_DATA_DIR=str(tmp_path / "other"),
        MESH_RAY_ADDRESS=mesh_up["address"],
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    code = (
        "from mesh import MeshSettings\n"
        "from mesh.ray._backend import RayBackend\n"
        "RayBackend.connect(MeshSettings())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=_ATTACK_TIMEOUT_S,
        cwd=ROOT,
    )

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "BackendError" in last and "MESH_RAY_TOKEN_FILE" in last, result.stderr[-3000:]
