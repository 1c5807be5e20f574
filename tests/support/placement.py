"""A control plane with the placement controller, for the migration test and benchmark.

Real parts: Mosquitto with enrolment (passwords, ACLs), the edge gateway, the
artifact endpoint, the edge installer, the serving manager on Ray, the gateway
on a socket (feeding the monitors), a real ``python -m edge_agent`` whose
broker connection goes through a :class:`~mesh.scenario._linkem.LinkEmulator` (so its
link can be slowed), and a paced load of OIP requests through the gateway.

Import explicitly::

    from tests.support.placement import PacedLoad, placement_plane
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mesh.control._controller import ControllerSettings, PlacementController
from mesh.control._migrations import MigrationExecutor
from mesh.control._monitors import Monitors
from mesh.control._probes import EdgeCanary, PathProbe
from mesh.control._store import PlacementStore
from mesh.edge._artifact_api import UrlSigner, create_artifact_app, serve_in_thread
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings, control_plane_credentials, enroll
from mesh.edge._install import EdgeInstaller
from mesh.edge.broker._broker import free_port, start_mosquitto
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.scenario._linkem import LinkEmulator
from mesh.serving._gateway import Gateway
from mesh.serving._manager import ServingManager
from mesh.serving._oip import encode_request
from mesh.serving._routes import RouteTable
from mesh.serving._upstream import UpstreamPool
from mesh.serving.replica._server import ServerThread
from tests.support.agent_fixtures import AgentProcess
from tests.support.serving import running_gateway


@dataclass
class Sample:
    """One request of a paced load."""

    at: float  # monotonic send time
    ms: float
    status: int
    node: str | None = None


@dataclass
class PacedLoad:
    """Sends OIP requests to the gateway at ``rate_hz`` (open loop), recording each."""

    host: str
    port: int
    module: str
    inputs: dict[str, np.ndarray[Any, Any]]
    rate_hz: float = 50.0
    timeout_s: float = 30.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PacedLoad:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), daemon=True, name="paced-load"
        )
        self._thread.start()
        return self

    async def _run(self) -> None:
        pool = UpstreamPool()
        body, header_length = encode_request(self.inputs, binary=True)
        headers = [(b"content-type", b"application/octet-stream")]
        if header_length is not None:
            headers.append((b"inference-header-content-length", str(header_length).encode()))
        pending: set[asyncio.Task[None]] = set()

        async def one(sent: float) -> None:
            try:
                response = await pool.request(
                    self.host,
                    self.port,
                    "POST",
                    f"/v2/models/{self.module}/infer",
                    body=body,
                    headers=headers,
                    timeout_s=self.timeout_s,
                )
                status = response.status
            except Exception:
                status = 0
            self.samples.append(Sample(sent, (time.monotonic() - sent) * 1000.0, status))

        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                await asyncio.sleep(next_at - now)
                continue
            task = asyncio.create_task(one(next_at))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += period
        if pending:
            await asyncio.gather(*pending)
        await pool.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def failures(self) -> list[Sample]:
        return [s for s in list(self.samples) if s.status != 200]

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in list(self.samples) if t0 <= s.at <= t1]

    def p95(self, t0: float, t1: float) -> float:
        ms = sorted(s.ms for s in self.between(t0, t1) if s.status == 200)
        return ms[max(0, int(0.95 * len(ms)) - 1)] if ms else float("nan")


@dataclass
class PlacementPlane:
    """Everything one test needs."""

    settings: EdgeSettings
    edge: EdgeBus
    manager: ServingManager
    monitors: Monitors
    store: PlacementStore
    controller: PlacementController
    gateway: Gateway
    server: ServerThread
    link: LinkEmulator
    agent_id: str
    agent_site: str
    agent_command: list[str]


@contextlib.contextmanager
def placement_plane(
    tmp: Path,
    backend: Any,
    *,
    agent_id: str,
    agent_site: str,
    controller_settings: ControllerSettings,
    agent_process: Callable[..., AgentProcess],
) -> Iterator[PlacementPlane]:
    """Start the parts (the agent too, through the link emulator); stop them all after."""
    from mesh.ray._probe import RayNodeProbe
    from mesh.ray._replicas import RayReplicaLauncher

    settings = EdgeSettings(data_dir=tmp / "cp", broker_url=f"mqtt://127.0.0.1:{free_port()}")
    enrolment = enroll(agent_id, site=agent_site, settings=settings)
    broker_port = int(settings.broker_url.rsplit(":", 1)[1])
    broker = start_mosquitto(
        broker_port,
        workdir=tmp / "mosquitto",
        password_file=settings.password_file,
        acl_file=settings.acl_file,
    )
    undo: list[Callable[[], object]] = [broker.stop]
    try:
        link = LinkEmulator(("127.0.0.1", broker_port)).start()
        undo.append(link.stop)
        creds = control_plane_credentials(settings)
        edge = EdgeBus(
            broker.url, username=creds.username, password=creds.password, keepalive_s=5
        ).start()
        undo.append(edge.stop)
        artifacts = serve_in_thread(create_artifact_app(settings), port=0)
        undo.append(artifacts.stop)
        installer = EdgeInstaller(
            edge,
            store=ArtifactStore(settings.data_dir / "artifacts"),
            signer=ArtifactSigner.load_or_create(settings.data_dir),
            url_signer=UrlSigner.load_or_create(settings.data_dir),
            base_url=artifacts.url,
            module_options={"threads": 1},
        )
        manager = ServingManager(
            RouteTable(),
            RayReplicaLauncher(nodes=backend.nodes),
            installer=installer,
            period_s=0.25,
            start_timeout_s=120,
            drain_timeout_s=10,
        ).start()
        undo.append(manager.close)
        node_probe = RayNodeProbe(backend.nodes)
        undo.append(node_probe.close)

        def signature(module: str) -> Any:
            route = manager.routes.get(module)
            return route.signature if route is not None else None

        monitors = Monitors(
            node_probe=node_probe,
            agents=edge,
            rtt=PathProbe(manager.routes, node_probe=node_probe, edge=edge),
            canary=EdgeCanary(edge, signature),
            host_cpu=False,  # every node shares this host
        )
        store = PlacementStore(settings.store_path)
        undo.append(store.close)
        executor = MigrationExecutor(
            manager, store, requests=monitors, installer=installer, settle_s=0.2
        )
        controller = PlacementController(
            manager, monitors, executor, store, settings=controller_settings
        )
        command = list(enrolment.command[1:])
        host, port = link.address
        command[command.index("--broker") + 1] = f"mqtt://{host}:{port}"
        command += ["--cache-dir", str(tmp / "cache"), "--heartbeat-period-s", "0.5"]
        agent = agent_process(command, tmp / "agent.log").start()
        undo.append(agent.kill)
        edge.wait_for_agent(agent_id, timeout_s=30)
        with running_gateway(manager.routes, edge=edge) as (gateway, server):
            gateway.observer = monitors
            undo.append(controller.close)
            yield PlacementPlane(
                settings,
                edge,
                manager,
                monitors,
                store,
                controller,
                gateway,
                server,
                link,
                agent_id,
                agent_site,
                command,
            )
    finally:
        for action in reversed(undo):
            try:
                action()
            except Exception as exc:  # stop the rest anyway
                print(f"placement plane: stopping failed: {exc!r}", flush=True)


def pin_cpu(pid: int, cores: set[int]) -> None:
    """Pin a process (all its threads) to ``cores``, where the OS allows."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cores)
