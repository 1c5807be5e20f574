"""The mesh on the test bed's hosts, set up as README's "Across machines" says (issue 16).

:func:`running_mesh` starts, in ``cloud``, the Ray head (``ray start --head
--labels mesh.tier=cloud``, token auth, on the cloud host's address) and ``mesh
up`` against it (``MESH_RAY_ADDRESS``, the gateway on ``MESH_GATEWAY_HOST``,
the embedded broker), joins ``fog-0`` and ``fog-1`` with ``mesh node join``,
and on exit runs ``mesh down`` and ``mesh node leave``, after which no process
may run in a fog host (checked). The test bed itself ends the head's processes
(``ray start`` leaves them running) and removes the hosts.

:func:`in_host` and :func:`mesh_in` run a command, or the ``mesh`` CLI, in a
host with only the test's own cluster, broker and token variables.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mesh.compute._backend import TIER_LABEL
from mesh.edge.broker._broker import free_port
from tests.support.testbed import TestBed, _netns, links_of
from tests.support.testbed._bed import ROOT

__all__ = ["FOG", "Mesh", "in_host", "mesh_in", "running_mesh"]

RAY = str(Path(sys.executable).with_name("ray"))
FOG = ("fog-0", "fog-1")

#: Unset in every host: the cluster, broker and token come from the test's own variables.
_UNSET = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MESH_BROKER_URL",
          "MESH_RAY_ADDRESS", "MESH_RAY_TOKEN_FILE", "MESH_DATA_DIR")  # fmt: skip


@dataclass
class Mesh:
    """The running mesh: the bed, the head's address, each host's environment."""

    bed: TestBed
    head: str
    cloud_env: dict[str, str]
    gateway_url: str
    work: Path
    fog_envs: dict[str, dict[str, str]] = field(default_factory=dict)


def in_host(
    bed: TestBed, host: str, env: dict[str, str], argv: Sequence[str], *, timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``host`` with ``env`` on top of this process's environment."""
    prefix = ["env", *(f"-u{name}" for name in _UNSET), *(f"{k}={v}" for k, v in env.items())]
    return bed.run(host, [*prefix, *argv], timeout_s=timeout_s, check=False)


def mesh_in(bed: TestBed, host: str, env: dict[str, str], *args: str) -> str:
    """``mesh ARGS`` in ``host``; its output (the test fails with it on a non-zero exit)."""
    done = in_host(bed, host, env, [sys.executable, "-m", "mesh.cli", *args])
    assert done.returncode == 0, f"mesh {' '.join(args)} in {host}:\n{done.stdout}{done.stderr}"
    return done.stdout


@contextmanager
def running_mesh(work: Path, *, cloud_extra: dict[str, str] | None = None) -> Iterator[Mesh]:
    """Head and control plane in cloud, both fog hosts joined; torn down as README says.

    Args:
        work: a fresh directory for the hosts' data directories and the Ray token.
        cloud_extra: more variables for the control plane's host (``mesh up`` and the CLI).
    """
    token_file = work / "ray-token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    with TestBed(links=links_of(ROOT / "scenarios" / "traffic.yaml")) as bed:
        cloud_ip = bed.address("cloud")
        port = free_port()
        head = f"{cloud_ip}:{port}"
        common = {"RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
        fog_envs = {host: {**common, "MESH_DATA_DIR": str(work / host)} for host in FOG}
        cloud_env = {
            **common,
            "MESH_DATA_DIR": str(work / "cloud"),
            "MESH_RAY_ADDRESS": head,
            "MESH_RAY_TOKEN_FILE": str(token_file),
            "MESH_GATEWAY_HOST": cloud_ip,
            "MESH_GATEWAY_PORT": str(free_port()),
            "MESH_EMBEDDED_BROKER_PORT": "0",
            "MESH_REPLICA_START_TIMEOUT_S": "180",
            **(cloud_extra or {}),
        }
        started = in_host(
            bed,
            "cloud",
            {**common, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)},
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                f"--node-ip-address={cloud_ip}",
                f"--labels={TIER_LABEL}=cloud",
                "--num-cpus=1",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-port={free_port()}",
                "--disable-usage-stats",
            ],
        )
        assert started.returncode == 0, started.stdout + started.stderr
        for host in FOG:
            joined = mesh_in(bed, host, fog_envs[host], "node", "join", head, "--tier", "fog",
                             "--site", host, "--cpus", "1", "--node-ip", bed.address(host),
                             "--token-file", str(token_file))  # fmt: skip
            assert f"mesh.tier=fog, mesh.site={host}" in joined, joined
        mesh_in(bed, "cloud", cloud_env, "up")
        record = json.loads((work / "cloud" / "cluster.json").read_text())
        yield Mesh(bed, head, cloud_env, str(record["gateway_url"]), work, fog_envs)
        mesh_in(bed, "cloud", cloud_env, "down")
        for host in FOG:
            mesh_in(bed, host, fog_envs[host], "node", "leave")
        # `leave` ended the node's processes and their workers: nothing runs in fog now.
        running = {h: [p for p in _netns.pids(bed.namespace(h)) if _netns.alive(p)] for h in FOG}
        assert running == {h: [] for h in FOG}
