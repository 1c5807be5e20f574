"""The long-running control plane: what `mesh up` starts (``python -m mesh._control_plane``).

In order, each step undone in reverse on SIGTERM/SIGINT (or when a later one fails):

1. Ray: the embedded cluster (:func:`mesh._ray_cluster.start_local_cluster`),
   or the cluster at ``MESH_RAY_ADDRESS``; this process connects as a driver.
2. MQTT: an embedded amqtt broker on ``MESH_EMBEDDED_BROKER_PORT`` (1883, or
   a free port when that one is taken), unless ``MESH_BROKER_URL`` is set in
   the environment: then that broker is used as it is ("set explicitly" means
   the variable is present, even when it names the default URL).
3. The edge gateway (MQTT side), the model registry, the serving manager with
   the Ray replica launcher.
4. The HTTP gateway on ``MESH_GATEWAY_HOST``:``MESH_GATEWAY_PORT``
   (127.0.0.1:8080): ``/v2`` inference, ``/v1/models``, ``/v1/modules``,
   ``/v1/routes``, ``/v1/artifacts`` (for agents) and ``/metrics``.

Only then is ``cluster.json`` written (``address``, ``pid``, ``started_at``,
``auth_mode``, ``nodes`` as before, plus ``gateway_url`` and ``broker_url``);
it is removed on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ._enrolment import EdgeSettings
from ._errors import MeshError

__all__ = ["ControlPlaneSettings", "run_control_plane"]

logger = logging.getLogger(__name__)


class ControlPlaneSettings(EdgeSettings):
    """Settings of the control-plane process (``MESH_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    gateway_host: str = Field("127.0.0.1", description="Bind address of the HTTP gateway.")
    gateway_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP gateway.")
    embedded_broker_port: int = Field(
        1883,
        ge=0,
        le=65535,
        description="Port of the embedded MQTT broker (a free one when taken; 0 = any).",
    )
    replica_start_timeout_s: float = Field(
        120.0, gt=0, description="How long new replicas may take to serve."
    )

    @property
    def broker_explicit(self) -> bool:
        """Whether ``MESH_BROKER_URL`` (or the constructor) named the broker."""
        return "broker_url" in self.model_fields_set


def _start_broker(settings: ControlPlaneSettings) -> Any:
    from ._broker import start_embedded_broker

    try:
        return start_embedded_broker(port=settings.embedded_broker_port)
    except (MeshError, OSError) as exc:
        if settings.embedded_broker_port == 0:
            raise
        logger.warning(
            "embedded broker: port %d unavailable (%s); using a free port",
            settings.embedded_broker_port,
            exc,
        )
        return start_embedded_broker(port=0)


def run_control_plane(
    settings: ControlPlaneSettings, *, stop: threading.Event | None = None
) -> None:
    """Run the control plane until SIGTERM/SIGINT (or ``stop`` is set).

    Raises:
        MeshError: a part did not start (what had started is stopped).
    """
    from ._ray_cluster import _write_json_atomically, prepare_ray_environment, start_local_cluster

    stop = stop or threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("control plane got signal %d; shutting down", signum)
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        if in_main
        else {}
    )
    undo: list[tuple[str, Callable[[], object]]] = []
    cluster_file = settings.cluster_file
    started = time.monotonic()
    try:
        prepare_ray_environment(settings)
        cluster = None
        ray_settings = settings
        if settings.ray_address is None:
            cluster = start_local_cluster(settings)
            undo.append(("Ray cluster", cluster.shutdown))
            ray_settings = settings.model_copy(update={"ray_address": cluster.address})
        from ._ray_backend import RayBackend

        backend = RayBackend.connect(ray_settings)
        undo.append(("Ray connection", backend.close))
        if stop.is_set():
            return
        if settings.gateway_port == 0:
            # Fix the port now: agents' artifact URLs name it before the gateway starts.
            from ._broker import free_port

            settings = settings.model_copy(update={"gateway_port": free_port()})

        if settings.broker_explicit:
            broker_url = settings.broker_url
            protocol = "auto"
        else:
            broker = _start_broker(settings)
            undo.append(("MQTT broker", broker.stop))
            broker_url, protocol = broker.url, "3.1.1"
        app = _build_services(settings, backend, broker_url, protocol, undo)

        from ._replica_server import serve_asgi

        server = serve_asgi(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            name="gateway",
            lifespan="on",
        )
        undo.append(("gateway", server.stop))
        gateway_url = f"http://{server.host}:{server.port}"
        _write_json_atomically(
            cluster_file,
            {
                "address": backend.address,
                "pid": os.getpid(),
                "started_at": time.time(),
                "auth_mode": settings.ray_auth_mode,
                "nodes": (
                    [n.as_dict() for n in cluster.nodes]
                    if cluster is not None
                    else [
                        {
                            "node_id": n.node_id,
                            "tier": n.tier,
                            "site": n.site,
                            "cpus": n.resources_total.get("CPU", 0.0),
                        }
                        for n in backend.nodes()
                    ]
                ),
                "gateway_url": gateway_url,
                "broker_url": broker_url,
            },
        )
        undo.append(("cluster file", lambda: cluster_file.unlink(missing_ok=True)))
        logger.info(
            "control plane %d up in %.1f s: Ray %s, gateway %s, broker %s",
            os.getpid(),
            time.monotonic() - started,
            backend.address,
            gateway_url,
            broker_url,
        )
        while not stop.wait(1.0):
            pass
    finally:
        for what, action in reversed(undo):
            try:
                action()
            except Exception:  # stop the rest anyway
                logger.exception("control plane: stopping the %s failed", what)
        cluster_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("control plane %d stopped", os.getpid())


def _build_services(
    settings: ControlPlaneSettings,
    backend: Any,
    broker_url: str,
    protocol: Any,
    undo: list[tuple[str, Callable[[], object]]],
) -> Any:
    """Edge gateway, registry, serving manager and the HTTP app; their stops go on ``undo``."""
    from ._artifact_api import UrlSigner, artifact_router
    from ._artifacts import ArtifactSigner, ArtifactStore
    from ._auth import TokenSigner
    from ._edge_gateway import EdgeGateway
    from ._edge_install import EdgeInstaller
    from ._enrolment import EnrolmentStore, control_plane_credentials
    from ._gateway import Gateway, TokenAuth, create_gateway_app
    from ._metrics import MetricsRegistry
    from ._modules_api import create_modules_router
    from ._ray_replicas import RayReplicaLauncher
    from ._registry import ModelRegistry
    from ._routes import RouteTable
    from ._serving import ServingManager

    username = password = None
    if settings.broker_explicit and (
        settings.mqtt_username or settings.control_credentials_file.is_file()
    ):
        creds = control_plane_credentials(settings)
        username, password = creds.username, creds.password
    edge = EdgeGateway(
        broker_url,
        username=username,
        password=password,
        prefix=settings.topic_prefix,
        protocol=protocol,
    ).start()
    undo.append(("edge gateway", edge.stop))
    registry = ModelRegistry.open(settings)
    undo.append(("model registry", registry.close))
    enrolments = EnrolmentStore(settings.store_path)
    undo.append(("enrolment store", enrolments.close))
    artifacts = ArtifactStore(settings.data_dir / "artifacts")
    signer = ArtifactSigner.load_or_create(settings.data_dir)
    url_signer = UrlSigner.load_or_create(settings.data_dir)
    host = settings.gateway_host if settings.gateway_host not in ("0.0.0.0", "::") else "127.0.0.1"
    base_url = settings.artifact_base_url or f"http://{host}:{settings.gateway_port}"
    installer = EdgeInstaller(
        edge, store=artifacts, signer=signer, url_signer=url_signer, base_url=base_url
    )
    metrics = MetricsRegistry()
    manager = ServingManager(
        RouteTable(),
        RayReplicaLauncher(nodes=backend.nodes),
        registry=registry,
        installer=installer,
        metrics=metrics,
        start_timeout_s=settings.replica_start_timeout_s,
    ).start()
    undo.append(("serving manager", manager.close))
    auth = TokenAuth(TokenSigner.load_or_create(settings.data_dir))
    gateway = Gateway(manager.routes, auth=auth, edge=edge, metrics=metrics)
    routers = [
        create_modules_router(manager, auth=auth.dependency),
        artifact_router(store=artifacts, signer=signer, auth=enrolments, url_signer=url_signer),
    ]
    return create_gateway_app(gateway, registry=registry, routers=routers)


def _main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        run_control_plane(ControlPlaneSettings())


if __name__ == "__main__":
    _main()
