"""A real gateway for the HTTP security tests: tokens, the model registry, the ``/v1`` routers.

:func:`serve_gateway` builds what the control plane serves (minus Ray and
placement): a :class:`Gateway` with a real :class:`TokenSigner`, the
``/v1/models`` registry, the ``/v1/modules`` router over a
:class:`ServingManager` that launches nothing (no Ray here) and the agents'
``/v1/artifacts``, served by :func:`serve_asgi`. With ``broker_url``, an
:class:`EdgeBus` connects to it and module :data:`EDGE` is routed to an agent
that does not exist, so the gateway decodes that module's bodies itself.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.core._http_server import ServerThread, serve_asgi
from mesh.core._settings import MeshSettings
from mesh.edge._artifact_api import UrlSigner, artifact_router
from mesh.edge._enrolment import EnrolmentStore
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.models._registry import ModelRegistry
from mesh.ray._replicas import RayReplicaLauncher
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth
from mesh.serving._api import create_modules_router
from mesh.serving._gateway import Gateway
from mesh.serving._gateway_app import create_gateway_app
from mesh.serving._manager import ServingManager
from mesh.serving._routes import AgentEndpoint, RouteTable

#: The module routed to an absent edge agent.
EDGE = "edge-mod"


@dataclass
class Served:
    """The served gateway and tokens for it."""

    server: ServerThread
    admin: str
    invoke: str

    def connect(self) -> socket.socket:
        """A raw connection to the gateway."""
        sock = socket.create_connection((self.server.host, self.server.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@contextlib.contextmanager
def serve_gateway(
    data_dir: Path,
    broker_url: str | None = None,
    *,
    app_limits: dict[str, Any] | None = None,
    server_limits: dict[str, Any] | None = None,
    edge_timeout_s: float = 1.0,
) -> Iterator[Served]:
    """The gateway on a free loopback port; stopped after."""
    from mesh.edge._bus import EdgeBus

    signer = TokenSigner.load_or_create(data_dir)
    now = time.time()
    admin = signer.issue("admin", ["admin"], ttl_s=3600, now=now)
    invoke = signer.issue("client", ["invoke"], ttl_s=3600, now=now)
    settings = MeshSettings(data_dir=data_dir)
    registry = ModelRegistry.open(settings)
    enrolments = EnrolmentStore(settings.store_path)
    manager = ServingManager(RouteTable(), RayReplicaLauncher(nodes=lambda: []), registry=registry)
    edge = EdgeBus(broker_url).start() if broker_url else None
    if edge is not None:
        manager.routes.set(EDGE, "v1", [AgentEndpoint("agent-nowhere", "v1")], tier="edge")
    auth = TokenAuth(signer)
    gateway = Gateway(manager.routes, auth=auth, edge=edge, edge_timeout_s=edge_timeout_s)
    app = create_gateway_app(
        gateway,
        registry=registry,
        routers=[
            create_modules_router(manager, auth=auth.dependency),
            artifact_router(
                store=ArtifactStore(data_dir / "artifacts"),
                signer=ArtifactSigner.load_or_create(data_dir),
                auth=enrolments,
                url_signer=UrlSigner.load_or_create(data_dir),
            ),
        ],
        **(app_limits or {}),
    )
    server = serve_asgi(app, port=0, name="gateway", lifespan="on", **(server_limits or {}))
    try:
        yield Served(server, admin, invoke)
    finally:
        server.stop()
        if edge is not None:
            edge.stop()
        enrolments.close()
        registry.close()
