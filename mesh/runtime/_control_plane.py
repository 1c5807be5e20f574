"""The long-running control plane: what `mesh up` starts (``python -m mesh.runtime``).

In order, each step undone in reverse on SIGTERM/SIGINT (or when a later one fails):

1. Ray: the embedded cluster (:func:`mesh.ray._cluster.start_local_cluster`),
   or the cluster at ``MESH_RAY_ADDRESS``; this process connects as a driver.
2. MQTT: an embedded amqtt broker on ``MESH_EMBEDDED_BROKER_PORT`` (1883, or
   a free port when that one is taken), unless ``MESH_BROKER_URL`` is set in
   the environment: then that broker is used as it is ("set explicitly" means
   the variable is present, even when it names the default URL).
3. The edge bus (MQTT side), the model registry, the serving manager with
   the Ray replica launcher, and the placement controller (monitors, migration
   executor, placement store; ``MESH_PLACEMENT_*`` settings); the modules
   recorded before a restart are re-deployed where they were, in the background.
4. The HTTP gateway on ``MESH_GATEWAY_HOST``:``MESH_GATEWAY_PORT``
   (127.0.0.1:8080): ``/v2`` inference, ``/v1/models``, ``/v1/modules``,
   ``/v1/placements``, ``/v1/routes``, ``/v1/artifacts`` (for agents) and ``/metrics``.

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
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.core._errors import MeshError
from mesh.edge._enrolment import EdgeSettings
from mesh.runtime._artifact_url import artifact_base_url
from mesh.runtime._replica_broker import replicas_reach_broker
from mesh.runtime._state_gauges import expose_state

if TYPE_CHECKING:
    from mesh.compute._backend import ComputeBackend
    from mesh.control._controller import PlacementController
    from mesh.edge._bus import EdgeBus
    from mesh.edge._install import EdgeInstaller
    from mesh.edge.broker._broker import EmbeddedBroker
    from mesh.models._export import ModelSignature
    from mesh.models._registry import ModelRegistry
    from mesh.serving._gateway_app import GatewayApp
    from mesh.serving._manager import ServingManager

__all__ = [
    "ControlPlaneServices",
    "ControlPlaneSettings",
    "MqttProtocol",
    "build_services",
    "main",
    "run_control_plane",
]

#: The MQTT protocol the control plane's clients speak: ``auto`` tries 5, then 3.1.1.
MqttProtocol = Literal["auto", "5", "3.1.1"]

logger = logging.getLogger(__name__)


class ControlPlaneSettings(EdgeSettings):
    """Settings of the control-plane process (``MESH_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    gateway_host: str = Field("127.0.0.1", description="Bind address of the HTTP gateway.")
    gateway_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP gateway.")
    gateway_max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Inference bodies past this get 413."
    )
    gateway_read_timeout_s: float = Field(
        30.0, gt=0, description="A request not sent within this is closed or gets 408."
    )
    gateway_max_connections: int = Field(
        1024, ge=1, description="Connections the gateway serves at once; more get 503."
    )
    gateway_keep_alive_s: float = Field(
        60.0, gt=0, description="An idle client connection to the gateway closes after this."
    )
    embedded_broker_port: int = Field(
        1883,
        ge=0,
        le=65535,
        description="Embedded MQTT broker port (if taken, a free one, kept on restarts; 0 = any).",
    )
    replica_start_timeout_s: float = Field(
        120.0, gt=0, description="How long new replicas may take to serve."
    )
    serving_standby: bool = Field(
        True,
        description="Keep a warm standby replica of every always-on module on another "
        "node: a lost node's requests fail over to it, with no cold start.",
    )
    placement_enabled: bool = Field(
        True, description="Run the placement controller's reconcile loop (pins work either way)."
    )
    placement_period_s: float = Field(
        30.0, gt=0, description="A placement round runs at least this often."
    )
    placement_window_s: float = Field(
        5.0, gt=0, description="How long an observed p95 must stay over the SLO to trigger a move."
    )
    placement_min_samples: int = Field(
        20, ge=1, description="Requests in the window before an observed p95 counts."
    )
    placement_dwell_s: float = Field(
        60.0, ge=0, description="A module that meets its SLO stays at least this long on a node."
    )
    placement_host_cpu: bool = Field(
        True, description="Read host CPU as node utilisation (off where nodes share one machine)."
    )
    placement_gateway_site: str = Field(
        "gateway", min_length=1, description="Site of the gateway's clients (modules' source)."
    )
    placement_restore: bool = Field(
        True, description="Re-deploy the modules recorded before a restart, where they were."
    )
    placement_restore_attempts: int = Field(
        5, ge=1, description="Tries per recorded module at a restart before it is failed."
    )
    placement_restore_max_delay_s: float = Field(
        20.0, gt=0, description="Longest wait between two tries (it doubles from 1 s)."
    )

    @property
    def broker_explicit(self) -> bool:
        """Whether ``MESH_BROKER_URL`` (or the constructor) named the broker."""
        return "broker_url" in self.model_fields_set


def _check_secret_files(settings: ControlPlaneSettings) -> None:
    from mesh.security._files import check_secret_files

    shared = (settings.password_file, settings.acl_file) if settings.mosquitto_group else ()
    check_secret_files(
        settings.data_dir,
        also=(settings.password_file, settings.control_credentials_file),
        group_readable=shared,
    )


def _start_broker(settings: ControlPlaneSettings) -> EmbeddedBroker:
    from mesh.edge._enrolment import embedded_broker_login
    from mesh.edge.broker._broker import start_embedded_broker
    from mesh.runtime._broker_port import ports_to_try, remember

    # Logins from the key store: the control plane's own and enrolled agents'.
    passwd, _ = embedded_broker_login(settings)
    # Persistent sessions outlive a restart, as with Mosquitto's ``persistence true``.
    sessions = settings.data_dir / "mqtt" / "sessions.db"
    record = settings.data_dir / "mqtt" / "broker-port.json"
    asked = settings.embedded_broker_port
    for port in ports_to_try(asked, record):
        try:
            broker = start_embedded_broker(port=port, password_file=passwd, sessions_db=sessions)
        except (MeshError, OSError) as exc:
            if asked == 0:
                raise
            logger.warning("embedded broker: port %d unavailable (%s)", port, exc)
            continue
        break
    else:
        logger.warning("embedded broker: using a free port instead of %d", asked)
        broker = start_embedded_broker(port=0, password_file=passwd, sessions_db=sessions)
    if asked != 0:
        remember(record, asked=asked, used=broker.port)
    return broker


def _check_and_back_up_store(settings: ControlPlaneSettings) -> None:
    """Refuse a damaged ``mesh.db``; back up a sound one (``<data>/backups``, newest 3).

    Runs before any store of this process opens the file (the check's connection
    closes, which would drop their POSIX locks).
    """
    from mesh.core._sqlite_check import back_up_store, check_store

    backups = settings.data_dir / "backups"
    check_store(settings.store_path, backups)
    copy = back_up_store(settings.store_path, backups)
    if copy is not None:
        logger.info(
            "store %s passed its integrity check; backed up to %s", settings.store_path, copy
        )


def run_control_plane(
    settings: ControlPlaneSettings, *, stop: threading.Event | None = None
) -> None:
    """Run the control plane until SIGTERM/SIGINT (or ``stop`` is set).

    Raises:
        StoreDamagedError: ``mesh.db`` failed its integrity check (nothing started;
            the message names the file and the newest backup).
        MeshError: a part did not start (what had started is stopped).
    """
    _check_and_back_up_store(settings)
    from mesh.ray._cluster import (
        _write_json_atomically,
        prepare_ray_environment,
        start_local_cluster,
    )

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
        from mesh.ray._backend import RayBackend

        backend = RayBackend.connect(ray_settings)
        undo.append(("Ray connection", backend.close))
        if stop.is_set():
            return
        if settings.gateway_port == 0:
            # Fix the port now: agents' artifact URLs name it before the gateway starts.
            from mesh.edge.broker._broker import free_port

            settings = settings.model_copy(update={"gateway_port": free_port()})

        protocol: MqttProtocol
        if settings.broker_explicit:
            broker_url = settings.broker_url
            protocol = "auto"
        else:
            broker = _start_broker(settings)
            undo.append(("MQTT broker", broker.stop))
            broker_url, protocol = broker.url, "3.1.1"
        app = build_services(settings, backend, broker_url, protocol, undo).app
        _check_secret_files(settings)

        from mesh.serving.replica._server import serve_asgi

        server = serve_asgi(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            name="gateway",
            lifespan="on",
            read_timeout_s=settings.gateway_read_timeout_s,
            max_connections=settings.gateway_max_connections,
            keep_alive_s=settings.gateway_keep_alive_s,
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


@dataclass(frozen=True, slots=True)
class ControlPlaneServices:
    """What :func:`build_services` started: the HTTP app and the services behind it."""

    app: GatewayApp
    edge: EdgeBus
    registry: ModelRegistry
    installer: EdgeInstaller
    manager: ServingManager
    controller: PlacementController


def build_services(
    settings: ControlPlaneSettings,
    backend: ComputeBackend,
    broker_url: str,
    protocol: MqttProtocol,
    undo: list[tuple[str, Callable[[], object]]],
    *,
    host_cpu: bool = True,
) -> ControlPlaneServices:
    """Edge gateway, registry, serving manager, placement controller and the HTTP app.

    Their stops go on ``undo`` as they start (undo them in reverse). ``host_cpu``
    lets the placement monitors read host CPU as node utilisation; turn it off
    where every node shares one host (a scenario on one machine).
    """
    from mesh.control._api import create_placements_router
    from mesh.core._metrics import MetricsRegistry
    from mesh.edge._artifact_api import UrlSigner, artifact_router
    from mesh.edge._bus import EdgeBus
    from mesh.edge._enrolment import EnrolmentStore, control_plane_credentials
    from mesh.edge._install import EdgeInstaller
    from mesh.models._artifacts import ArtifactSigner, ArtifactStore
    from mesh.models._registry import ModelRegistry
    from mesh.ray._replicas import RayReplicaLauncher
    from mesh.security._auth import TokenSigner
    from mesh.security._token_auth import TokenAuth
    from mesh.serving._api import create_modules_router
    from mesh.serving._contract import ReplicaMqtt
    from mesh.serving._gateway import Gateway
    from mesh.serving._gateway_app import create_gateway_app
    from mesh.serving._manager import ServingManager
    from mesh.serving._routes import RouteTable

    username = password = None
    # The embedded broker (not explicit) checks the key store's logins.
    if not settings.broker_explicit or (
        settings.mqtt_username or settings.control_credentials_file.is_file()
    ):
        creds = control_plane_credentials(settings)
        username, password = creds.username, creds.password
    ca, cert, key = (
        str(p) if p else None
        for p in (settings.broker_ca_file, settings.broker_cert_file, settings.broker_key_file)
    )
    edge = EdgeBus(
        broker_url,
        username=username,
        password=password,
        prefix=settings.topic_prefix,
        protocol=protocol,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
    ).start()
    undo.append(("edge bus", edge.stop))
    registry = ModelRegistry.open(settings)
    undo.append(("model registry", registry.close))
    enrolments = EnrolmentStore(settings.store_path)
    undo.append(("enrolment store", enrolments.close))
    artifacts = ArtifactStore(settings.data_dir / "artifacts")
    signer = ArtifactSigner.load_or_create(settings.data_dir)
    url_signer = UrlSigner.load_or_create(settings.data_dir)
    base_url = artifact_base_url(
        explicit=settings.artifact_base_url,
        gateway_host=settings.gateway_host,
        gateway_port=settings.gateway_port,
        device_broker_url=settings.device_broker_url,
    )
    installer = EdgeInstaller(
        edge, store=artifacts, signer=signer, url_signer=url_signer, base_url=base_url
    )
    undo.append(("edge installer", installer.close))
    _ = installer.handover  # now, not at the first remote route: clears a crash's leases
    metrics = MetricsRegistry()
    manager = ServingManager(
        RouteTable(),
        RayReplicaLauncher(
            nodes=backend.nodes,
            # Replicas answer agents' offloaded requests over MQTT too, where they reach it.
            mqtt=(
                ReplicaMqtt(
                    broker_url,
                    username=username,
                    password=password,
                    prefix=settings.topic_prefix,
                    protocol="3.1.1" if edge.protocol == "3.1.1" else "auto",
                    ca_file=ca,
                    cert_file=cert,
                    key_file=key,
                )
                if replicas_reach_broker(broker_url, settings.ray_address)
                else None
            ),
        ),
        registry=registry,
        installer=installer,
        metrics=metrics,
        start_timeout_s=settings.replica_start_timeout_s,
        standby=settings.serving_standby,
    ).start()
    undo.append(("serving manager", manager.close))
    controller, start_placement = _placement_controller(
        settings, backend, edge, installer, registry, manager, undo, host_cpu=host_cpu
    )
    expose_state(
        metrics,
        routes=manager.routes.routes,
        migrations=controller.executor.counts,
        restores=lambda: {str(k): n for k, n in controller.restorer.counts().items()},
        edge=edge,
        rounds=controller.round_seconds,
    )
    from mesh.security._revocations import TokenRevocations

    revocations = TokenRevocations(settings.store_path)
    undo.append(("token deny list", revocations.close))
    auth = TokenAuth(
        TokenSigner.load_or_create(settings.data_dir, max_ttl_s=settings.token_max_ttl_s),
        revocations=revocations,
    )
    gateway = Gateway(
        manager.routes,
        auth=auth,
        edge=edge,
        metrics=metrics,
        observer=controller.monitors,
        restoring=controller.restorer.restoring,
    )
    routers = [
        create_modules_router(
            manager,
            auth=auth.dependency,
            restoring=lambda served: [s.to_dict() for s in controller.restorer.unserved(served)],
            forget=controller.forget,
        ),
        create_placements_router(controller, auth=auth.dependency),
        artifact_router(store=artifacts, signer=signer, auth=enrolments, url_signer=url_signer),
    ]
    app = create_gateway_app(
        gateway,
        registry=registry,
        routers=routers,
        max_body_bytes=settings.gateway_max_body_bytes,
        read_timeout_s=settings.gateway_read_timeout_s,
    )
    # Only now, with every import of the start-up done on this thread: the restore
    # thread's first Ray call imports pydantic.v1 (Ray's serialization context) and
    # FastAPI's route building above imports it too; two threads importing that
    # package at once make CPython's import deadlock detection fail one of them
    # (`KeyError: 'pydantic.v1'`), and every restore failed.
    start_placement()
    return ControlPlaneServices(app, edge, registry, installer, manager, controller)


def _placement_controller(
    settings: ControlPlaneSettings,
    backend: ComputeBackend,
    edge: EdgeBus,
    installer: EdgeInstaller,
    registry: ModelRegistry,
    manager: ServingManager,
    undo: list[tuple[str, Callable[[], object]]],
    *,
    host_cpu: bool = True,
) -> tuple[PlacementController, Callable[[], None]]:
    """Monitors, migration executor, placement store and the controller, and its start.

    Call the start once the rest of the process is built: it re-deploys the
    modules recorded before a restart (and tracks the pipelines again) on a
    thread first, with retries (agents may take a while to come back); the
    reconcile loop starts once that is done. The recorded modules are marked
    ``restoring`` here already, so the API shows them from its first request.
    Each route switch is recorded before the route changes (a deploy survives a
    crash right after it; the record is where the module runs).
    Agents' pipeline events feed the monitors (per-site pipeline placement).
    """
    from mesh.control._controller import PlacementController
    from mesh.control._migrations import MigrationExecutor
    from mesh.control._monitors import Monitors
    from mesh.control._probes import EdgeCanary, PathProbe
    from mesh.control._restore import RetryPolicy
    from mesh.control._settings import ControllerSettings
    from mesh.control._store import PlacementStore
    from mesh.ray._probe import RayNodeProbe

    routes = manager.routes
    node_probe = RayNodeProbe(backend.nodes)

    def signature(module: str) -> ModelSignature | None:
        route = routes.get(module)
        return route.signature if route is not None else None

    monitors = Monitors(
        node_probe=node_probe,
        agents=edge,
        rtt=PathProbe(routes, node_probe=node_probe, edge=edge),
        canary=EdgeCanary(edge, signature),
        host_cpu=host_cpu and settings.placement_host_cpu,
    )
    undo.append(("node probes", node_probe.close))
    undo.append(("pipeline events", edge.on_event(monitors.observe_event)))
    store = PlacementStore(settings.store_path)
    undo.append(("placement store", store.close))
    executor = MigrationExecutor(manager, store, requests=monitors, installer=installer)
    controller = PlacementController(
        manager,
        monitors,
        executor,
        store,
        settings=ControllerSettings(
            enabled=settings.placement_enabled,
            period_s=settings.placement_period_s,
            window_s=settings.placement_window_s,
            min_samples=settings.placement_min_samples,
            dwell_s=settings.placement_dwell_s,
            gateway_site=settings.placement_gateway_site,
        ),
        registry=registry,
        agents=edge,  # a restored pipeline's route starts as its agent reports it
        restore_policy=RetryPolicy(
            attempts=settings.placement_restore_attempts,
            first_delay_s=min(1.0, settings.placement_restore_max_delay_s),
            max_delay_s=settings.placement_restore_max_delay_s,
        ),
    )
    closing = threading.Event()
    if settings.placement_restore:
        controller.restorer.expect(store.deployments())
    manager.record_placements(controller)  # each switch is recorded before its route

    def restore_then_start() -> None:
        if settings.placement_restore:
            restored = controller.restore(manager)
            if restored:
                logger.info("placement: restored %s", ", ".join(restored))
        if not closing.is_set():
            controller.start()

    def close() -> None:
        closing.set()
        controller.close()

    # Before any route can be removed: a route removed after close keeps its record.
    undo.append(("placement controller", close))

    def start() -> None:
        threading.Thread(
            target=restore_then_start, name="mesh-placement-start", daemon=True
        ).start()

    return controller, start


def main() -> None:
    """Run the control plane in the foreground until SIGINT (``python -m mesh.runtime``)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mesh.core._sqlite_check import StoreDamagedError

    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_control_plane(ControlPlaneSettings())
    except StoreDamagedError as exc:  # one clear line, no traceback: `mesh up` shows it
        logger.error("%s", exc)
        raise SystemExit(2) from None
