"""Wires the dashboard to a running control plane's services (called by the composition root)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.core._log_repeats import RepeatLog
from mesh.dashboard._agents import describe_agent
from mesh.dashboard._api import create_dashboard_router
from mesh.dashboard._scenario import ScenarioFeed
from mesh.dashboard._snapshot import DashboardSources, Snapshots

if TYPE_CHECKING:
    from fastapi import APIRouter

    from mesh.compute._runs import RunRecord, SQLiteStore
    from mesh.control._controller import PlacementController
    from mesh.edge._bus import EdgeBus
    from mesh.security._token_auth import TokenAuth
    from mesh.serving._manager import ServingManager

__all__ = ["dashboard_router"]

logger = logging.getLogger(__name__)

#: Seconds between two latency samples (the module page's chart).
SAMPLE_INTERVAL_S = 1.0


def dashboard_router(
    store_path: Path,
    auth: TokenAuth,
    controller: PlacementController,
    manager: ServingManager,
    edge: EdgeBus,
    undo: list[tuple[str, Callable[[], object]]],
    scenario: ScenarioFeed | None = None,
    *,
    lifecycle: Callable[[], Mapping[str, Any]] | None = None,
    drift: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> APIRouter:
    """The ``/ui`` page and ``/v1/dashboard`` reads over the control plane's services.

    Args:
        store_path: the run store (``mesh.db``), opened at the first runs read.
        auth: the gateway's token check.
        controller: placements, their history, the monitors.
        manager: which model each module serves.
        edge: the agents.
        undo: where the run store's close goes once it is opened.
        scenario: what a scenario run in this process reports (the Scenario page).
        lifecycle: canaries under way and recent lifecycle steps (``CanaryService.describe``).
        drift: each tracked module's drift score per site (``DriftService.describe``).
    """
    from mesh.compute._runs import SQLiteStore

    opened: list[SQLiteStore] = []  # opened at the first read: most planes never list runs

    def list_runs(function: str | None, limit: int) -> list[dict[str, Any]]:
        if not opened:
            opened.append(SQLiteStore(store_path))
            undo.append(("run store (dashboard)", opened[0].close))
        return [run_dict(r) for r in opened[0].list_runs(function=function, limit=limit)]

    sources = DashboardSources(
        placements=controller.describe,
        history=lambda module, limit: [r.to_dict() for r in controller.history(module, limit)],
        monitors=controller.monitors.snapshot,
        agents=lambda: [describe_agent(a, edge.metrics(a.agent_id)) for a in edge.agents()],
        models=lambda: {v.spec.name: v.artifact.model for v in manager.deployments()},
        runs=list_runs,
        scenario=scenario.describe if scenario is not None else lambda: None,
        lifecycle=lifecycle if lifecycle is not None else dict,
        drift=drift if drift is not None else list,
    )
    snapshots = Snapshots(sources)
    _start_sampler(snapshots, undo)
    return create_dashboard_router(
        snapshots, auth=auth.dependency, check=lambda header: auth.check(header, "read")
    )


def _start_sampler(snapshots: Snapshots, undo: list[tuple[str, Callable[[], object]]]) -> None:
    """Sample latency each second on ``mesh-dashboard-sampler``; its stop goes on ``undo``."""
    stop = threading.Event()
    quiet = RepeatLog(logger, every_s=300.0)

    def loop() -> None:
        while not stop.wait(SAMPLE_INTERVAL_S):  # bounded by stop (set at shutdown)
            try:
                snapshots.sample()
            except Exception as exc:  # the next tick tries again
                quiet.exception("dashboard: sampling latency failed: %s", exc, exc=exc)

    thread = threading.Thread(target=loop, name="mesh-dashboard-sampler", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(5.0)

    undo.append(("dashboard sampler", close))


def run_dict(record: RunRecord) -> dict[str, Any]:
    """One run as the runs page lists it."""
    return {
        "id": record.id,
        "function": record.function,
        "app": record.app,
        "kind": record.kind,
        "tier": record.tier,
        "node": record.node_id,
        "status": str(record.status),
        "started_at": record.started_at,
        "duration_s": record.duration_s,
        "error": record.error,
        "args": record.args_preview,
    }
