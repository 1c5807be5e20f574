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

from mesh.core._errors import MeshError
from mesh.runtime._artifact_url import artifact_base_url
from mesh.runtime._placement import placement_controller
from mesh.runtime._replica_broker import replicas_reach_broker
from mesh.runtime._settings import ControlPlaneSettings
from mesh.runtime._state_gauges import expose_state

if TYPE_CHECKING:
    from mesh.compute._backend import ComputeBackend
    from mesh.control._controller import PlacementController
    from mesh.dashboard._scenario import ScenarioFeed
    from mesh.edge._bus import EdgeBus
    from mesh.edge._install import EdgeInstaller
    from mesh.edge.broker._broker import EmbeddedBroker
    from mesh.models._registry import ModelRegistry
    from mesh.runtime._canary import CanaryService
    from mesh.runtime._drift import DriftService
    from mesh.runtime._fresh_data import FreshDataService
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
    scenario: ScenarioFeed  # a scenario run in-process reports here; /ui shows it
    canary: CanaryService  # tries candidate versions on a few sites, promotes or rolls back
    drift: DriftService  # each tracked module's drift score per site; drift events
    fresh_data: FreshDataService  # agents' sampled inputs and their labels


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
    from mesh.dashboard._mount import dashboard_router
    from mesh.dashboard._scenario import ScenarioFeed
    from mesh.edge._artifact_api import UrlSigner, artifact_router
    from mesh.edge._bus import EdgeBus
    from mesh.edge._bus_metrics import expose_bus
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
        flood=settings.flood_limits,
        acknowledge_events=True,  # the control plane's bus: its agents wait for this one
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
    expose_bus(metrics, edge)
    launcher = RayReplicaLauncher(
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
    )
    manager = ServingManager(
        RouteTable(),
        launcher,
        registry=registry,
        installer=installer,
        metrics=metrics,
        start_timeout_s=settings.replica_start_timeout_s,
        standby=settings.serving_standby,
    ).start()
    undo.append(("serving manager", manager.close))
    controller, start_placement = placement_controller(
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
    from mesh.runtime._drift import DriftService, expose_drift

    drift = DriftService(edge, registry, installer=installer, candidates=registry).start()
    undo.append(("drift detection", drift.stop))
    from mesh.runtime._replica_drift import ReplicaDriftFeed

    undo.append(("replicas' drift", ReplicaDriftFeed(manager.routes, drift).start().stop))
    expose_drift(metrics, drift)
    from mesh.runtime._canary import CanaryService
    from mesh.serving._canary_replicas import ReplicaCanary

    # A candidate replica beside the manager's, judged on what the gateway counts.
    trials = ReplicaCanary(
        manager.routes, launcher, metrics=metrics, start_timeout_s=settings.replica_start_timeout_s
    )
    from mesh.runtime._canary_figures import ScoreWindows

    # Live error per version from the drift service's join of events and labels;
    # without labels, each version's drift score against its own reference.
    canary = CanaryService(
        registry,
        installer,
        edge,
        manager=manager,
        replicas=trials,
        live_errors=drift.live_errors,
        drift_scores=ScoreWindows(drift.version_score),
    )
    canary.expose(metrics)
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
    scenario = ScenarioFeed()
    from mesh.runtime._lifecycle import LifecycleTracking

    lifecycle = LifecycleTracking()
    lifecycle.drift, lifecycle.canary = drift, canary
    routers = [
        create_modules_router(
            manager,
            auth=auth.dependency,
            restoring=lambda served: [s.to_dict() for s in controller.restorer.unserved(served)],
            forget=controller.forget,
            on_deployed=lifecycle.track,
        ),
        create_placements_router(controller, auth=auth.dependency),
        artifact_router(store=artifacts, signer=signer, auth=enrolments, url_signer=url_signer),
        dashboard_router(
            settings.store_path,
            auth,
            controller,
            manager,
            edge,
            undo,
            scenario,
            lifecycle=canary.describe,
            drift=drift.describe,
        ),
    ]
    app = create_gateway_app(
        gateway,
        registry=registry,
        routers=routers,
        max_body_bytes=settings.gateway_max_body_bytes,
        read_timeout_s=settings.gateway_read_timeout_s,
    )
    from mesh.runtime._triggers import start_triggers

    start_triggers(settings.store_path, backend, edge, undo)
    from mesh.models._fresh_data import FreshData
    from mesh.runtime._fresh_data import start_fresh_data

    fresh_data = start_fresh_data(FreshData.open(settings), edge, installer, metrics, undo)
    lifecycle.fresh_data = fresh_data
    canary.start()
    undo.append(("canary", canary.stop))
    resumed = lifecycle.resume(controller.store.deployments())
    if resumed:
        logger.info("lifecycle tracking resumed after a restart: %s", resumed)
    # Only now, with every import of the start-up done on this thread: the restore
    # thread's first Ray call imports pydantic.v1 (Ray's serialization context) and
    # FastAPI's route building above imports it too; two threads importing that
    # package at once make CPython's import deadlock detection fail one of them
    # (`KeyError: 'pydantic.v1'`), and every restore failed.
    start_placement()
    return ControlPlaneServices(
        app, edge, registry, installer, manager, controller, scenario, canary, drift, fresh_data
    )


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
