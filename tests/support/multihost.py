"""The mesh on the test bed's hosts, set up as README's "Across machines" says (issue 16).

:func:`running_mesh` starts, in ``cloud``, the Ray head (``ray start --head
--labels mesh.tier=cloud``, token auth, on the cloud host's address) and ``mesh
up`` against it (``MESH_RAY_ADDRESS``, the gateway on ``MESH_GATEWAY_HOST``,
the embedded broker), joins ``fog-0`` and ``fog-1`` with ``mesh node join``,
and on exit runs ``mesh down`` and ``mesh node leave``, after which no process
may run in a fog host (checked). The test bed itself ends the head's processes
(``ray start`` leaves them running) and removes the hosts.

With ``broker="mosquitto-tls"`` the broker is a real Mosquitto in ``cloud``
set up as ``deploy/mosquitto.conf``, TLS on the cloud address with a test CA
made at test time (:mod:`tests.support.multihost_broker`): ``mesh agents
enroll`` runs first for each edge host in ``agents`` (agent id and site the
host's name; it writes the password and ACL files Mosquitto reads), then
Mosquitto starts, and ``mesh up`` uses it (``MESH_BROKER_URL``,
``MESH_BROKER_CA_FILE``; devices are told ``MESH_AGENT_BROKER_URL``). Once the
control plane is up, each agent starts in its edge host with exactly the
command enrolment printed (:class:`EdgeAgent`; its cache directory from
``EDGE_AGENT_CACHE_DIR``). On exit the agents are stopped by pid before
``mesh down``, Mosquitto by pid after it, and no process may run in an edge
host either (checked).

:func:`in_host` and :func:`mesh_in` run a command, or the ``mesh`` CLI, in a
host with only the test's own cluster, broker and token variables.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mesh.compute._backend import TIER_LABEL
from mesh.edge.broker._broker import find_mosquitto, free_port
from tests.support.multihost_broker import HostMosquitto
from tests.support.processes import end_process
from tests.support.testbed import TestBed, _netns, links_of
from tests.support.testbed._bed import ROOT
from tests.support.tls import make_test_pki

__all__ = [
    "EDGE",
    "FOG",
    "EdgeAgent",
    "Mesh",
    "enrolled_command",
    "in_host",
    "mesh_in",
    "running_mesh",
]

RAY = str(Path(sys.executable).with_name("ray"))
FOG = ("fog-0", "fog-1")
EDGE = ("edge-1", "edge-2", "edge-3")
#: How long an agent may take to connect to the broker once started (generous: TLS
#: over the cloud-edge link on a shared machine; it retries every second or so).
AGENT_CONNECT_S = 90.0

#: Unset in every host: the cluster, broker and token come from the test's own variables.
_UNSET = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MESH_BROKER_URL",
          "MESH_RAY_ADDRESS", "MESH_RAY_TOKEN_FILE", "MESH_DATA_DIR", "MESH_BROKER_CA_FILE",
          "MESH_AGENT_BROKER_URL", "MESH_AGENT_CA_FILE", "MESH_ARTIFACT_BASE_URL")  # fmt: skip


@dataclass
class EdgeAgent:
    """An enrolled agent, run in its edge host with the command ``mesh agents enroll`` printed.

    Attributes:
        agent_id: its id (and site): the edge host's name.
        host: the edge host it runs in.
        command: the device command as enrolment printed it (argv).
        cache_dir: its cache directory (``EDGE_AGENT_CACHE_DIR``), under the test's work dir.
        log_path: its stdout and stderr.
        env: more variables for it (e.g. ``EDGE_AGENT_PIPELINES``), not in its command.
    """

    agent_id: str
    host: str
    command: list[str]
    cache_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started: list[int] = field(default_factory=list)  # every pid it ran as
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        """The running agent's pid, or None."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def log(self) -> str:
        """What it logged, over every start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout_s: float, *, since: int = 0) -> bool:
        """Whether ``needle`` shows in its log (after offset ``since``) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # bounded by the deadline
            if needle in self.log()[since:]:
                return True
            if self.pid is None:
                return needle in self.log()[since:]
            time.sleep(0.1)
        return False

    def start(self, bed: TestBed) -> None:
        """Run the printed command in its host (the executable from this interpreter's bin)."""
        assert self.pid is None, f"agent {self.agent_id} already runs as {self.pid}"
        # The printed command names the installed script; here it is this venv's.
        exe = shutil.which(self.command[0], path=str(Path(sys.executable).parent))
        assert exe is not None, f"{self.command[0]} is not installed next to {sys.executable}"
        env = {k: v for k, v in os.environ.items() if k not in _UNSET} | self.env
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        since = len(self.log())
        with self.log_path.open("ab") as log:
            # ``env NAME=value`` execs the agent (same pid) and shows the variable in
            # ``bed.ran``, which README's device command is checked against.
            argv = ["env", f"EDGE_AGENT_CACHE_DIR={self.cache_dir}", exe, *self.command[1:]]
            self.proc = bed.spawn(self.host, argv, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)  # fmt: skip
        self.started.append(self.proc.pid)
        connected = self.wait_log(" connected (MQTT", AGENT_CONNECT_S, since=since)
        assert connected, f"agent {self.agent_id} did not connect:\n{self.log()[since:][-3000:]}"

    def stop(self) -> int | None:
        """SIGTERM the running agent by its pid (SIGKILL past 20 s); its exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        return end_process(proc, 20)


@dataclass
class Mesh:
    """The running mesh: the bed, the head's address, each host's environment.

    ``broker`` is the cloud's Mosquitto (None with the embedded broker) and
    ``agents`` the running edge agents by id.
    """

    bed: TestBed
    head: str
    cloud_env: dict[str, str]
    gateway_url: str
    work: Path
    fog_envs: dict[str, dict[str, str]] = field(default_factory=dict)
    broker: HostMosquitto | None = None
    agents: dict[str, EdgeAgent] = field(default_factory=dict)


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


def enrolled_command(output: str) -> list[str]:
    """The device command in ``mesh agents enroll``'s output (the line it prints bare).

    Raises:
        AssertionError: the output has no such line, or more than one.
    """
    lines = [line for line in output.splitlines() if line.startswith("mesh-edge-agent ")]
    assert len(lines) == 1, f"no single device command in:\n{output}"
    return shlex.split(lines[0])


def _enroll(bed: TestBed, cloud_env: dict[str, str], work: Path, host: str) -> EdgeAgent:
    """``mesh agents enroll HOST --site HOST`` in cloud: the agent, not started."""
    out = mesh_in(bed, "cloud", cloud_env, "agents", "enroll", host, "--site", host)
    return EdgeAgent(host, host, enrolled_command(out), work / host / "agent-cache",
                     work / host / "agent.log")  # fmt: skip


@contextmanager
def running_mesh(
    work: Path,
    *,
    cloud_extra: dict[str, str] | None = None,
    broker: Literal["embedded", "mosquitto-tls"] = "embedded",
    agents: Sequence[str] = (),
    agent_env: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[Mesh]:
    """Head and control plane in cloud, both fog hosts joined; torn down as README says.

    Args:
        work: a fresh directory for the hosts' data directories and the Ray token.
        cloud_extra: more variables for the control plane's host (``mesh up`` and the CLI).
        broker: ``embedded`` (``mesh up``'s own, on cloud's loopback) or
            ``mosquitto-tls`` (Mosquitto in cloud, TLS on its address; see the module doc).
        agents: edge hosts to enrol and run an agent in (``mosquitto-tls`` only; one at least).
        agent_env: more variables for an agent, by host (e.g. its ``EDGE_AGENT_PIPELINES``).

    Raises:
        ValueError: agents without ``mosquitto-tls``, or ``mosquitto-tls`` without agents
            (enrolment writes the broker's password file), or an unknown edge host, or
            ``agent_env`` for a host with no agent.
    """
    if (broker == "mosquitto-tls") != bool(agents):
        raise ValueError(
            "agents need broker='mosquitto-tls' (the embedded broker is on cloud's loopback), "
            "and it needs one agent at least (enrolment writes its password file)"
        )
    unknown = sorted(set(agents) - set(EDGE))
    if unknown:
        raise ValueError(f"agents run in edge hosts {EDGE}, not in {unknown}")
    if not set(agent_env or {}) <= set(agents):
        raise ValueError(f"agent_env names hosts with no agent: {sorted(agent_env or {})}")
    mosquitto_exe = find_mosquitto() if agents else None
    if agents and mosquitto_exe is None:
        reason = "mosquitto is not installed (apt-get install mosquitto)"
        if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
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
        mosquitto = None
        enrolled: dict[str, EdgeAgent] = {}
        if mosquitto_exe is not None:
            data = work / "cloud"
            pki = make_test_pki(work / "pki", addresses=[cloud_ip])
            mosquitto = HostMosquitto(bed, "cloud", work / "mosquitto", pki=pki,
                                      password_file=data / "mqtt" / "passwd",
                                      acl_file=data / "mqtt" / "acl",
                                      executable=mosquitto_exe)  # fmt: skip
            del cloud_env["MESH_EMBEDDED_BROKER_PORT"]
            cloud_env |= {
                "MESH_BROKER_URL": mosquitto.control_url,
                "MESH_BROKER_CA_FILE": str(pki.ca),
                "MESH_AGENT_BROKER_URL": mosquitto.device_url,
            }
            # Enrolment writes the password and ACL files (the control plane's login too).
            enrolled = {host: _enroll(bed, cloud_env, work, host) for host in agents}
            for host, extra in (agent_env or {}).items():
                enrolled[host].env.update(extra)
            mosquitto.start()
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
        for agent in enrolled.values():
            agent.start(bed)
        yield Mesh(bed, head, cloud_env, str(record["gateway_url"]), work, fog_envs,
                   mosquitto, enrolled)  # fmt: skip
        stopped = {a.agent_id: a.stop() for a in enrolled.values()}
        assert all(code in (0, None) for code in stopped.values()), stopped
        mesh_in(bed, "cloud", cloud_env, "down")
        for host in FOG:
            mesh_in(bed, host, fog_envs[host], "node", "leave")
        if mosquitto is not None:
            assert mosquitto.stop() == 0, mosquitto.log_text()[-2000:]
        # `leave` ended the node's processes and their workers, each agent ended by its
        # pid: nothing runs in a fog or an edge host now.
        hosts = (*FOG, *agents)
        running = {h: [p for p in _netns.pids(bed.namespace(h)) if _netns.alive(p)] for h in hosts}
        assert running == {h: [] for h in hosts}
