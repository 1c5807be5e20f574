"""A scenario's test bed: broker, Ray cluster, control plane, agents behind their links.

:func:`start_infrastructure` starts the MQTT broker the scenario names, a
local Ray cluster (the cloud head and a raylet per fog node, labelled by
tier), the control plane's services in this process and its HTTP server;
:func:`start_agents` starts one real ``python -m edge_agent`` process per
device, each behind its own link emulator and enrolled, running each sourced
module on a pipeline (:func:`pipeline_for`). Everything started is undone by
the caller's exit stack, in reverse.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh.core._errors import MeshError
from mesh.runtime._control_plane import (
    ControlPlaneServices,
    ControlPlaneSettings,
    MqttProtocol,
)
from mesh.scenario._actions import Testbed
from mesh.scenario._decls import ModuleDecl
from mesh.scenario._nodes import RayNode
from mesh.scenario._procs import AgentFleet
from mesh.scenario._schema import Scenario
from mesh.scenario._util import link_shape, quietly

__all__ = ["Infrastructure", "pipeline_for", "start_agents", "start_infrastructure"]


@dataclass(frozen=True, slots=True)
class Infrastructure:
    """What :func:`start_infrastructure` started.

    Attributes:
        settings: the control plane's settings (state directory, broker, gateway port).
        services: the control plane's services (edge bus, registry, manager, controller).
        backend: the compute backend on the local Ray cluster.
        broker_url: ``mqtt://host:port``.
        gateway_url: the control plane's HTTP address.
    """

    settings: ControlPlaneSettings
    services: ControlPlaneServices
    backend: Any
    broker_url: str
    gateway_url: str


def _broker(sc: Scenario, state_dir: Path, stack: ExitStack) -> str:
    from mesh.edge.broker._broker import start_embedded_broker, start_mosquitto

    kind = sc.broker.kind
    if kind == "external":
        assert sc.broker.url is not None
        return sc.broker.url
    if kind == "mosquitto":
        broker = start_mosquitto(sc.broker.port or 0, workdir=state_dir / "mosquitto")
        stack.callback(broker.stop)
        return broker.url
    from mesh.edge._enrolment import EdgeSettings, embedded_broker_login

    # Logins from the state dir's key store: the control plane's, and the agents'
    # as start_agents enrols them.
    passwd, _ = embedded_broker_login(EdgeSettings(data_dir=state_dir))
    embedded = start_embedded_broker(port=sc.broker.port or 0, password_file=passwd)
    stack.callback(embedded.stop)
    return embedded.url


def stop_in_reverse(stack: ExitStack, undo: list[tuple[str, Any]]) -> None:
    """Have ``stack`` stop ``undo``'s services last built first, each quietly.

    An ExitStack runs its callbacks last-in first-out, so they are pushed in the
    order the services were built: the canary stops before the registry it reads.

    Example:
        >>> done = []
        >>> with ExitStack() as stack:
        ...     stop_in_reverse(stack, [("registry", lambda: done.append("registry")),
        ...                             ("canary", lambda: done.append("canary"))])
        >>> done
        ['canary', 'registry']
    """
    for what, stop in undo:
        stack.callback(quietly(what, stop))


def start_infrastructure(
    sc: Scenario, state_dir: Path, testbed: Testbed, stack: ExitStack, *, console: Console
) -> Infrastructure:
    """Start the broker, the Ray cluster and the control plane (see the module docstring).

    Raises:
        MeshError: the scenario needs the embedded cluster and ``MESH_RAY_ADDRESS`` is set.
    """
    from mesh.core._http_server import reserve_port, serve_asgi
    from mesh.runtime._connect import connect_backend
    from mesh.runtime._control_plane import build_services

    head = sc.head_node() or RayNode(name="cloud", tier="cloud")
    broker_url = _broker(sc, state_dir, stack)
    console.print(f"  broker ({sc.broker.kind}) at {broker_url}")
    # Held from now: the Ray cluster's processes bind ports too (a port found free
    # here and bound after the cluster started was once taken meanwhile).
    reserved = reserve_port("127.0.0.1")
    stack.callback(reserved.close)
    port = int(reserved.getsockname()[1])
    settings = ControlPlaneSettings(
        data_dir=state_dir,
        cloud_cpus=head.cpus,
        cloud_gpus=head.gpus,
        fog_nodes=0,
        gateway_port=port,
        broker_url=broker_url,
        topic_prefix=sc.broker.prefix,
        placement_period_s=5.0,
        placement_window_s=5.0,
        placement_min_samples=6,
        placement_dwell_s=20.0,
        placement_restore=False,
    )
    with console.status("starting the Ray cluster (cloud head + fog nodes)…"):
        backend = connect_backend(settings)
        stack.callback(backend.close)
        cluster = getattr(backend, "cluster", None)
        if cluster is None:
            raise MeshError("scenarios need the embedded Ray cluster (unset MESH_RAY_ADDRESS)")
        testbed.cluster = cluster
        for node in sc.nodes.ray:
            if node.tier == "fog":
                info = cluster.add_fog_node(site=node.site_name, cpus=node.cpus)
                testbed.fog_nodes[node.name] = info.node_id
    for info in cluster.nodes:
        console.print(
            f"  Ray node {info.node_id[:8]}: {info.tier}"
            f"{' site ' + info.site if info.site else ''}, {info.cpus:g} CPU"
        )
    undo: list[tuple[str, Any]] = []
    protocol: MqttProtocol = "3.1.1" if sc.broker.kind == "embedded" else "auto"
    try:
        services = build_services(settings, backend, broker_url, protocol, undo, host_cpu=False)
    finally:
        stop_in_reverse(stack, undo)
    server = serve_asgi(services.app, sock=reserved)
    stack.callback(server.stop)
    console.print(f"  control plane at {server.url} (REST, /v2 inference, artifacts)")
    return Infrastructure(settings, services, backend, broker_url, server.url)


def pipeline_for(
    decl: ModuleDecl, site: str, *, prefix: str, substitutions: dict[str, str], base_dir: Path
) -> dict[str, Any]:
    """The agent pipeline (``EDGE_AGENT_PIPELINES`` item) that feeds ``decl`` at ``site``."""
    src = decl.source
    assert src is not None
    source: dict[str, Any]
    if src.kind == "mqtt":
        assert src.topic is not None
        # Room for a backlog: a starved device falls behind (its latency counts
        # against the SLO until its site moves) but sheds nothing below the buffer.
        source = {
            "kind": "mqtt",
            "topic": f"{prefix}/{src.topic.replace('{site}', site)}",
            "options": {"buffer": src.buffer},
        }
    else:
        assert src.path is not None
        path = src.path.replace("{site}", site)
        for key, value in substitutions.items():
            path = path.replace(f"{{{key}}}", value)
        resolved = Path(path) if Path(path).is_absolute() else base_dir / path
        source = {"kind": "file", "path": str(resolved), "rate_hz": src.rate_hz, "loop": src.loop}
    name = decl.stream_name()
    return {"name": name, "module": decl.name, "source": source, "stream": name, "qos": 1}


def start_agents(
    sc: Scenario,
    infra: Infrastructure,
    testbed: Testbed,
    stack: ExitStack,
    substitutions: dict[str, str],
    out_dir: Path,
    *,
    console: Console,
) -> None:
    """Start and enrol one agent process per device; wait until each is online."""
    from mesh.edge._enrolment import enroll
    from mesh.models._artifacts import ArtifactSigner

    host, _, port = infra.broker_url.removeprefix("mqtt://").partition(":")
    signer = ArtifactSigner.load_or_create(infra.settings.data_dir)
    public_key = signer.public_key_b64()
    fleet = AgentFleet(
        (host, int(port or 1883)),
        out_dir,
        prefix=sc.broker.prefix,
        public_key=public_key,
        options={"heartbeat_period_s": 1.0, "keepalive_s": 5, "protocol": "3.1.1"},
    )
    stack.callback(fleet.close)
    testbed.fleet = fleet
    cores = os.cpu_count() or 1
    sourced = sc.source_modules()
    for i, agent in enumerate(sc.agent_nodes()):
        # Enrolled: the broker lets in, and the artifact endpoint serves signed URLs
        # to, enrolled agents only.
        login = enroll(agent.id, site=agent.site, settings=infra.settings, public_key=public_key)
        # The broker sits with the fog: an agent's link to it is its edge-fog link.
        shape = link_shape(sc.links, f"agent:{agent.id}", "fog")
        testbed.agent_link[agent.id] = shape
        pipelines = [
            pipeline_for(
                decl,
                agent.site,
                prefix=sc.broker.prefix,
                substitutions=substitutions,
                base_dir=sc.base_dir.resolve(),
            )
            for decl in sourced
        ]
        fleet.add(
            agent.id,
            agent.site,
            link=shape,
            cores=[i % cores],
            # In the environment, not on the command line (where `ps` shows it).
            env={
                "EDGE_AGENT_PIPELINES": json.dumps(pipelines),
                "EDGE_AGENT_USERNAME": login.username,
                "EDGE_AGENT_PASSWORD": login.password,
            },
            cpus=agent.cpus,
        )
    edge = infra.services.edge
    with console.status(f"waiting for {len(fleet.agents)} agents to come online…"):
        for agent_id in fleet.agents:
            edge.wait_for_agent(agent_id, timeout_s=30.0)
    console.print(f"  {len(fleet.agents)} agents online: {', '.join(fleet.agents)}")
