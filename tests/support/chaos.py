"""A whole mesh under steady load, and the faults a chaos round injects into it (issue 15).

:class:`ChaosMesh` runs the mesh as a user does, through the CLI: ``mesh up``
(control plane, embedded Ray cluster with fog nodes, embedded broker), a model
registered and served as a fog module, an enrolled edge agent process serving
the same model as an edge module. :class:`Load` sends inference through the
gateway to both modules at a steady rate from its own threads and counts each
request as answered or failed, with the reason. A fault (:data:`FAULTS`) is a
``kill -9`` of one part (a replica process, the agent, the control plane,
the broker), followed by what an operator's supervisor does (``systemd
Restart=always``): the part is started again. After each fault the round waits
until every module answers again and records how long that took.

The broker is the embedded amqtt one inside the control-plane process
(``broker="embedded"``: killing the broker is killing the control plane), or a
real Mosquitto (``broker="mosquitto"``, :mod:`tests.support.chaos_mosquitto`)
set up as ``deploy/mosquitto.conf`` sets it up: the agent is enrolled first
(``mesh agents enroll`` writes the control plane's ``mesh-control`` login and
the agent's into ``<data>/mqtt/passwd`` and ``acl``), then Mosquitto starts on
those files, then ``mesh up`` with ``MESH_BROKER_URL`` on its control listener.

Requests sent while the gateway itself was down (the control plane killed)
cannot be answered by any replica and are counted apart as ``unavailable``,
with the reason, as the issue asks. Requests to a module served over MQTT (the
edge module) that fail between a broker kill and the moment that module answers
again (its clients reconnected) are counted apart as ``broker_outage``: no
message could reach the agent. Every other failure is a lost request. The agent
also runs a pipeline whose frames and events :mod:`tests.support.chaos_events`
counts the same way (``run_rounds``' ``events``).

Used by ``tests/chaos/`` (a few rounds, in CI) and ``bench/chaos.py`` (the soak).
Every process it starts is ended at :meth:`ChaosMesh.close`, by pid, including
the ones a killed control plane left behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from mesh.edge.broker._broker import free_port
from mesh.edge.broker._mosquitto import find_mosquitto
from tests.support.agent_fixtures import build_tiny_model
from tests.support.chaos_events import EventProbe, pipeline_env
from tests.support.chaos_faults import MORE_FAULTS, ChaosFaults
from tests.support.chaos_load import WIDTH, Load, Tally, request_body
from tests.support.chaos_mosquitto import ChaosMosquitto
from tests.support.cli import ROOT, mesh_cli, stop_recorded_daemon

__all__ = [
    "ALL_FAULTS",
    "BROKERS",
    "FAULTS",
    "ChaosMesh",
    "Load",
    "Tally",
    "request_body",
    "run_rounds",
]

#: The fault kinds a round picks from ("broker" with the embedded broker kills the control plane).
FAULTS = ("replica", "agent", "control_plane", "broker")
#: Those and the ones :mod:`tests.support.chaos_faults` injects (raylet, disk, outbox, migration).
ALL_FAULTS = FAULTS + MORE_FAULTS
#: The brokers a chaos mesh runs on.
BROKERS = ("embedded", "mosquitto")
#: How long a module may take to answer again after a fault before the round gives up.
RECOVERY_LIMIT_S = 180.0


def _with_descendants(pid: int) -> dict[int, float]:
    """``pid`` and its descendants, each with its start time (a pid can be reused)."""
    found: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                found[p.pid] = p.create_time()
    return found


def _kill_if_same(pid: int, created: float) -> None:
    """SIGKILL ``pid`` if it is still the process started at ``created``."""
    with contextlib.suppress(psutil.Error):
        if psutil.Process(pid).create_time() == created:
            os.kill(pid, signal.SIGKILL)


class ChaosMesh:
    """``mesh up`` with a fog module and an edge agent serving an edge module.

    Args:
        workdir: a fresh directory for the data dir, the model, logs and the agent's cache.
        fog_nodes: fog nodes of the embedded cluster.
        log: where progress lines go.
        broker: ``"embedded"`` (inside the control plane) or ``"mosquitto"`` (a real one).

    Raises:
        ValueError: an unknown ``broker``, or ``"mosquitto"`` without a mosquitto binary.
    """

    FOG = "chaos-fog"
    EDGE = "chaos-edge"
    AGENT = "chaos-a1"
    SITE = "s1"

    def __init__(
        self,
        workdir: Path,
        *,
        fog_nodes: int = 2,
        log: Callable[[str], None] = print,
        broker: str = "embedded",
    ) -> None:
        if broker not in BROKERS:
            raise ValueError(f"unknown broker {broker!r}; expected one of {BROKERS}")
        self.broker = broker
        self.workdir = workdir
        self.data = workdir / "data"
        self.log = log
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_AUTH", "MESH_RAY_", "MESH_BROKER_URL"))
        }
        self.env.update(
            MESH_DATA_DIR=str(self.data),
            MESH_CLOUD_CPUS="1",
            MESH_FOG_NODES=str(fog_nodes),
            MESH_FOG_CPUS="1",
            MESH_OBJECT_STORE_MB="100",
            MESH_GATEWAY_PORT=str(free_port()),
            MESH_EMBEDDED_BROKER_PORT=str(free_port()),
            RAY_USAGE_STATS_ENABLED="0",
            COLUMNS="200",
        )
        self.mosquitto: ChaosMosquitto | None = None
        if broker == "mosquitto":
            exe = find_mosquitto()
            if exe is None:
                raise ValueError("broker='mosquitto' but mosquitto is not installed")
            self.mosquitto = ChaosMosquitto(
                workdir / "mosquitto",
                password_file=self.data / "mqtt" / "passwd",
                acl_file=self.data / "mqtt" / "acl",
                executable=exe,
            )
            self.env.update(
                MESH_BROKER_URL=self.mosquitto.control_url,
                MESH_AGENT_BROKER_URL=self.mosquitto.device_url,
            )
        self.cluster: dict[str, Any] = {}
        self.token = ""
        self._agent: subprocess.Popen[bytes] | None = None
        self._agent_args: list[str] = []
        self._started: dict[int, float] = {}  # every process the mesh ran, for close()
        self.faults = ChaosFaults(self)

    # -- set-up

    def cli(self, *args: str, timeout: float = 300) -> str:
        """Run ``mesh ARGS``; its stdout, or an AssertionError with its output."""
        done = mesh_cli(self.env, *args, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"mesh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def up(self) -> None:
        """``mesh up`` and read its record (the gateway and broker URLs, the daemon's pid)."""
        self.cli("up", "--wait-s", "240")
        self.cluster = json.loads((self.data / "cluster.json").read_text())
        self._started.update(_with_descendants(int(self.cluster["pid"])))

    def start(self) -> None:
        """Everything: cluster, model, fog module, agent, edge module, a token."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        model = build_tiny_model(self.workdir / "tiny.onnx", width=WIDTH)
        if self.mosquitto is not None:
            # Enrolment writes the control plane's login and the agent's: Mosquitto needs both.
            public_key = self.enroll_agent()
            self.log(f"mosquitto on {self.mosquitto.control_url} and {self.mosquitto.device_url}")
            self.mosquitto.start()
        self.log("mesh up")
        self.up()
        if self.mosquitto is None:
            public_key = self.enroll_agent()
        self.cli("models", "register", "tiny", str(model), "--code-version", "1",
                 "--metric", "val_mae=1", "--mode", "min")  # fmt: skip
        self.cli("models", "promote", "tiny", "v1")
        self.cli("modules", "deploy", "tiny", "--tier", "fog", "--name", self.FOG,
                 "--p95-ms", "500", "--min-replicas", "1")  # fmt: skip
        self._agent_args = [
            "--broker", self.agent_broker_url, "--id", self.AGENT, "--site", "s1",
            "--username", self.AGENT,
            "--password-file", str(self.data / "agents" / self.AGENT / "mqtt-password"),
            "--public-key", public_key, "--cache-dir", str(self.workdir / "agent-cache"),
        ]  # fmt: skip
        self.start_agent()
        self.cli("modules", "deploy", "tiny", "--agent", self.AGENT, "--name", self.EDGE,
                 "--p95-ms", "500")  # fmt: skip
        self.token = self.cli("tokens", "create", "chaos", "--scope", "invoke").strip()
        self.log("mesh serving both modules")

    def enroll_agent(self) -> str:
        """``mesh agents enroll`` the agent, then reload a running Mosquitto; its public key."""
        enrolled = self.cli("agents", "enroll", self.AGENT, "--site", "s1")
        key = re.search(r"--public-key (\S+)", enrolled)
        assert key, enrolled
        if self.mosquitto is not None:
            self.mosquitto.reload()  # as the CLI tells operators (a no-op before it runs)
        return key.group(1)

    @property
    def agent_broker_url(self) -> str:
        """The broker URL the agent connects to (Mosquitto's devices' listener)."""
        if self.mosquitto is not None:
            return self.mosquitto.device_url
        return str(self.cluster["broker_url"])

    @property
    def control_broker_url(self) -> str:
        """The broker URL the control plane (and an operator's tools on its host) connect to."""
        if self.mosquitto is not None:
            return self.mosquitto.control_url
        return str(self.cluster["broker_url"])

    def start_agent(self) -> None:
        """Start (or start again) the agent process, running the events pipeline too."""
        log = (self.workdir / "agent.log").open("ab")
        self._agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", *self._agent_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**self.env, **pipeline_env(self.EDGE, self.SITE), "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self._started.update(_with_descendants(self._agent.pid))

    @property
    def agent_pid(self) -> int | None:
        """The running agent process's id, or None."""
        running = self._agent is not None and self._agent.poll() is None
        return self._agent.pid if running and self._agent is not None else None

    @property
    def gateway(self) -> str:
        """The gateway's URL."""
        return str(self.cluster["gateway_url"])

    # -- faults

    def inject(self, kind: str, load: Load, rng: random.Random) -> str:
        """``kill -9`` one part of kind ``kind`` and start it again; what was killed.

        ``"broker"`` with the embedded broker is ``"control_plane"`` (the broker runs
        inside it). A Mosquitto is killed and started again at once; ``load``'s
        broker outage lasts until :meth:`wait_serving` sees every module answer.
        """
        if kind in MORE_FAULTS:
            return self.faults.inject(kind, load, rng)
        if kind == "broker" and self.mosquitto is not None:
            load.broker_outage_began()
            pid = self.mosquitto.restart_after_kill()
            return f"mosquitto {pid}"
        if kind == "broker":
            return "embedded broker, with " + self.inject("control_plane", load, rng)
        if kind == "replica":
            pid = self.replica_pid(self.FOG, rng)
            os.kill(pid, signal.SIGKILL)
            return f"replica process {pid} of {self.FOG}"
        if kind == "agent":
            assert self._agent is not None
            self._agent.kill()
            self._agent.wait(10)
            self.start_agent()
            return f"agent {self.AGENT}"
        if kind == "control_plane":
            pid = int(self.cluster["pid"])
            self._started.update(_with_descendants(pid))
            load.gateway_down.set()
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(30)
            self._kill_leftovers()
            (self.data / "cluster.json").unlink(missing_ok=True)
            self.up()
            load.repoint(self.gateway)
            load.gateway_down.clear()
            return f"control plane {pid}"
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {ALL_FAULTS}")

    def kills_broker(self, kind: str) -> bool:
        """Whether fault ``kind`` kills the broker (the embedded one dies with the control plane)."""
        restarts_control_plane = kind in ("control_plane", "mid_migration")
        return kind == "broker" or (restarts_control_plane and self.mosquitto is None)

    def replica_pid(self, module: str, rng: random.Random) -> int:
        """The pid of one of the module's replica processes (the one listening on its URL)."""
        modules = json.loads(self.cli("modules", "list", "--json"))
        urls = [
            r["url"]
            for m in modules
            if m["module"] == module
            for r in m.get("replicas", [])
            if r.get("url")
        ]
        assert urls, f"{module} has no replica: {modules}"
        port = urlsplit(rng.choice(urls)).port
        for conn in psutil.net_connections(kind="tcp"):
            address = conn.laddr
            listening = conn.status == psutil.CONN_LISTEN and isinstance(address, tuple)
            if listening and address and address[1] == port and conn.pid:
                return int(conn.pid)
        raise AssertionError(f"no process listens on the replica port {port}")

    def wait_serving(self, load: Load) -> float:
        """Seconds until every module answers a probe (at most :data:`RECOVERY_LIMIT_S`)."""
        started = time.monotonic()
        waiting = set(load.modules)
        body = request_body()
        while waiting and time.monotonic() - started < RECOVERY_LIMIT_S:
            for module in sorted(waiting):
                if self._answers(module, body):
                    waiting.discard(module)
            if waiting:
                time.sleep(0.2)
        if waiting:
            raise AssertionError(f"not serving {RECOVERY_LIMIT_S:.0f} s after the fault: {waiting}")
        load.broker_outage_ended()
        return time.monotonic() - started

    def _answers(self, module: str, body: bytes) -> bool:
        parts = urlsplit(self.gateway)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
        try:
            conn.request(
                "POST",
                f"/v2/models/{module}/infer",
                body,
                {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            )
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    # -- tear-down

    def track(self, pid: int) -> None:
        """Remember ``pid`` and its descendants: :meth:`close` ends them, by pid."""
        self._started.update(_with_descendants(pid))

    def _kill_leftovers(self) -> None:
        """End what a killed control plane left (its Ray cluster), as systemd's cgroup would."""
        agent = self._agent.pid if self._agent is not None else None
        for pid, created in list(self._started.items()):
            if pid != agent:
                _kill_if_same(pid, created)
                del self._started[pid]

    def close(self) -> None:
        """``mesh down``; then end every process the mesh ran that is still alive, by pid."""
        if self._agent is not None and self._agent.poll() is None:
            self._agent.kill()
            self._agent.wait(10)
        self.faults.close()  # the agent's tmpfs, now that the agent is gone
        if self.cluster:
            self._started.update(_with_descendants(int(self.cluster["pid"])))
        with contextlib.suppress(Exception):
            mesh_cli(self.env, "down", timeout=120)
        stop_recorded_daemon(self.data)
        for pid, created in self._started.items():
            _kill_if_same(pid, created)
        if self.mosquitto is not None:
            self.mosquitto.stop()


def run_rounds(
    mesh: ChaosMesh,
    rounds: int,
    *,
    seed: int = 0,
    kinds: tuple[str, ...] = FAULTS,
    rate_hz: float = 10.0,
    deadline_s: float = 2.0,
    calm_s: tuple[float, float] = (1.0, 4.0),
) -> dict[str, Any]:
    """``rounds`` faults under steady load on a started mesh; the figures as JSON.

    Each round: load runs for a random calm time, a random fault of ``kinds``
    is injected at that moment, and the round ends once every module answers
    again (its recovery time). The load runs throughout, across all rounds.
    """
    rng = random.Random(seed)
    probe = EventProbe.for_mesh(mesh).start()  # the pipeline's frames and events
    load = Load(mesh.gateway, mesh.token, [mesh.FOG, mesh.EDGE], rate_hz=rate_hz,
                deadline_s=deadline_s, over_mqtt=(mesh.EDGE,)).start()  # fmt: skip
    faults: Counter[str] = Counter()
    recovery: list[float] = []
    try:
        for n in range(1, rounds + 1):
            time.sleep(rng.uniform(*calm_s))
            kind = rng.choice(kinds)
            injected = time.monotonic()
            probe.mark(kind)
            if mesh.kills_broker(kind):
                probe.outage_began()
            what = mesh.inject(kind, load, rng)
            mesh.wait_serving(load)
            probe.outage_ended()
            recovery.append(time.monotonic() - injected)
            faults[kind] += 1
            mesh.log(f"round {n}/{rounds}: killed {what}; serving again after "
                     f"{recovery[-1]:.1f} s; {load.snapshot()}")  # fmt: skip
        time.sleep(calm_s[1])  # what was in flight at the last fault settles
    finally:
        load.stop()
        events = probe.stop()
    per_module = load.snapshot()
    ordered = sorted(recovery)
    return {
        "rounds": rounds,
        "faults": dict(faults),
        "requests": {
            "sent": sum(t["sent"] for t in per_module.values()),
            "answered": sum(t["answered"] for t in per_module.values()),
            "failed": sum(t["failed"] for t in per_module.values()),
            "unavailable": sum(t["unavailable"] for t in per_module.values()),
            "broker_outage": sum(t["broker_outage"] for t in per_module.values()),
        },
        "per_module": per_module,
        "events": events,  # the agent's pipeline: tests/support/chaos_events.py
        "recovery_s": {
            "p50": round(ordered[len(ordered) // 2], 2) if ordered else None,
            "max": round(ordered[-1], 2) if ordered else None,
        },
    }
