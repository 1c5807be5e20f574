"""The placement side of the control plane: monitors, migrations, the controller, its start.

:func:`placement_controller` builds what decides where modules run (the
monitors fed by Ray node probes, agents' heartbeats and pipeline events, the
migration executor over the serving manager, the placement store) and hands
back the controller with the start that first restores what ran before a
restart, then starts the reconcile loop (``mesh/runtime/_control_plane.py ·
build_services`` calls it once the rest of the process is built).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.compute._backend import ComputeBackend
    from mesh.control._controller import PlacementController
    from mesh.edge._bus import EdgeBus
    from mesh.edge._install import EdgeInstaller
    from mesh.models._export import ModelSignature
    from mesh.models._registry import ModelRegistry
    from mesh.runtime._settings import ControlPlaneSettings
    from mesh.serving._manager import ServingManager

__all__ = ["placement_controller"]

logger = logging.getLogger(__name__)


def placement_controller(
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

    paths = PathProbe(routes, node_probe=node_probe, edge=edge)
    undo.append(("RTT probes", paths.close))
    monitors = Monitors(
        node_probe=node_probe,
        agents=edge,
        rtt=paths,
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
    # A redeploy's old replicas stop only once the sites on them moved to the new ones.
    undo.append(("replica follow", manager.on_replacing(controller.follow_replicas)))

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
