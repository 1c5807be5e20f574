"""The placement controller: the reconcile loop that runs the engine and moves modules.

Each round (every ``tick_s``) it:

1. reads the monitors (Ray nodes' psutil, agents' heartbeats, link RTTs),
   what the serving manager serves, and where each module runs from its
   record in the store, the one source of it, which the manager writes before
   each route switch (:mod:`mesh.control._placements`): a module served off
   its record is moved back to it, one served with none is recorded;
2. looks for **triggers**: a module's observed p95 over its SLO for a window
   (the node is then marked *saturated* for that module, so the engine treats
   it as full), a node that joined, left or is overloaded, a new model
   version, a pin changed, and every ``period_s`` the period itself; with none
   of these, a *predicted* violation (the current placement re-predicted under
   new metrics by the engine's ``keep`` policy) is one too;
3. on a trigger, plans with the engine (:func:`placement.plan`, policy
   ``ours``, with hysteresis and a minimum dwell time), stores the plan as a
   new desired-placement version when it differs from the last, and starts
   its moves make-before-break through the :class:`MigrationExecutor`: each
   runs on its own worker, a persisted state machine that later rounds
   collect; the round never waits for one. The first round resumes or rolls
   back the migrations a crash left (:meth:`MigrationExecutor.recover`).

A saturated mark is lifted when canary inferences on that node meet the SLO
again (an agent keeps the module installed), or after ``saturation_ttl_s``
(:mod:`mesh.control._saturation`).

Modules whose agents run pipelines (:meth:`PlacementController.track_pipelines`)
are also placed per site, after the gateway routes: each site's pipeline runs
on its agent or offloads to the module's replicas
(:mod:`mesh.control._pipelines`); their gateway route keeps to fog and cloud.
They are recorded in the store and tracked again by :meth:`PlacementController.restore`,
which re-deploys the recorded modules with bounded retries (:mod:`mesh.control._restore`).
Pins: a module pinned to a tier may only be placed there; one pinned to a
node is not planned at all and is moved there.

Each step catches and logs its own errors: the loop never stops.

Example:
    >>> controller = PlacementController(manager, monitors, executor, store,
    ...                                  settings=ControllerSettings(dwell_s=30))  # doctest: +SKIP
    >>> controller.start()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from mesh.control._migrations import MigrationExecutor, ModuleDeployer
from mesh.control._monitors import Monitors
from mesh.control._pipelines import PipelinePlacer
from mesh.control._placements import Placed, Seen
from mesh.control._restore import Restorer, RetryPolicy
from mesh.control._round import ReconcileRound, finite
from mesh.control._saturation import SaturationMarks
from mesh.control._settings import (
    ControllerSettings,
    EdgeAgents,
    ModelVersions,
    RoundResult,
    ServedModules,
)
from mesh.control._snapshot import Snapshot
from mesh.control._standing import StandingConditions
from mesh.control._store import DeploymentRecord, MigrationRecord, Pin, PlacementStore
from mesh.core._log_repeats import RepeatLog
from mesh.serving._leases import PipelineSource
from mesh.serving._routes import Endpoint, RouteTable
from placement import TIERS
from placement import (
    Plan as EnginePlan,
)

# Defined in ._placement_settings; re-exported for the imports that name this module.
__all__ = ["ControllerSettings", "PlacementController", "RoundResult", "ServedModules"]

logger = logging.getLogger(__name__)

_ROUNDS_KEPT = 512  # round durations kept for /metrics (mesh_placement_round_seconds)


class PlacementController(ReconcileRound):
    """Runs the placement engine on triggers and on a period, and applies its moves.

    Args:
        served: the serving manager.
        monitors: the time series the engine's inputs come from.
        executor: carries out moves and records them.
        store: desired placements, pins and deployments.
        settings: the loop's knobs.
        registry: the model registry, for profiles (None: ``default_service_ms``).
        sources: module -> {site: rate}; default one source at ``gateway_site``,
            or at the agent's site for a module first seen on an agent.
        routes: the route table (replicas that pipelines offload to); default
            ``served.routes``.
        agents: the edge bus: a tracked pipeline's route starts as its agent
            reports it (None: taken to be local).
        clock: monotonic seconds (injected in tests).
        restore_policy: tries and backoff per module in :meth:`restore`.
    """

    def __init__(
        self,
        served: ServedModules,
        monitors: Monitors,
        executor: MigrationExecutor,
        store: PlacementStore,
        *,
        settings: ControllerSettings | None = None,
        registry: ModelVersions | None = None,
        sources: Mapping[str, Mapping[str, float]] | None = None,
        routes: RouteTable | None = None,
        agents: EdgeAgents | None = None,
        clock: Callable[[], float] = time.monotonic,
        restore_policy: RetryPolicy | None = None,
    ) -> None:
        """Nothing runs until :meth:`start` (or :meth:`step`)."""
        self.settings = settings or ControllerSettings()
        self._served = served
        self.monitors = monitors
        self.executor = executor
        self.store = store
        self._registry = registry
        self._sources: dict[str, dict[str, float]] = {
            m: dict(s) for m, s in (sources or {}).items()
        }
        self._clock = clock
        self._placed: dict[str, Placed] = {}  # each round's read of the store
        self._seen: dict[str, Seen] = {}  # the record's epoch and version a round last read
        self._strayed: dict[str, tuple[int, str | None, str]] = {}
        self._saturated = SaturationMarks(self.settings, monitors.run_canary, clock)
        self._nodes: frozenset[str] | None = None
        self._pins: dict[str, Pin] = store.pins()
        self._pins_changed = False
        self._last_plan_at = -math.inf
        self._last_poll = -math.inf
        self._last_routes: Mapping[str, Mapping[str, Any]] | None = None
        self._plan: EnginePlan | None = None
        self._snapshot: Snapshot | None = None
        self._profiles: dict[tuple[str, str], float] = {}
        self._standing = StandingConditions()
        # A condition that lasts logs once, with a count (not a line per round).
        self._quiet = RepeatLog(logging.getLogger("mesh.control._round"), clock=clock)
        self._quiet_loop = RepeatLog(logger, clock=clock)
        self._recovered = False  # the first round resolves migrations a crash left
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round_s: deque[float] = deque(maxlen=_ROUNDS_KEPT)  # the loop's recent rounds
        self._lock = threading.Lock()
        #: The recorded deployments' restoration after a restart (:meth:`restore`).
        self.restorer = Restorer(restore_policy)
        latest = store.latest_plan()
        if latest is not None:
            self._last_routes = latest.routes
        table: RouteTable | None = routes if routes is not None else getattr(served, "routes", None)

        def endpoints(module: str) -> tuple[Endpoint, ...]:
            route = table.get(module) if table is not None else None
            return tuple(route.endpoints) if route is not None else ()

        self._pipelines = PipelinePlacer(
            executor, self.settings, endpoints=endpoints, clock=clock, store=store, agents=agents
        )

    # -- lifecycle

    def start(self) -> PlacementController:
        """Start the reconcile loop (a no-op when ``settings.enabled`` is False)."""
        if self._thread is None and self.settings.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="mesh-placement", daemon=True)
            self._thread.start()
        return self

    def close(self, *, migrations_timeout_s: float = 120.0) -> None:
        """Stop the loop; migrations under way may finish (within ``migrations_timeout_s``).

        One still under way after that is left to its worker; a restart
        resumes or rolls it back (:meth:`MigrationExecutor.recover`).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(120)
            self._thread = None
        if not self.executor.wait_idle(migrations_timeout_s):
            logger.warning(
                "placement: closing with migrations under way: %s",
                ", ".join(f"{r.module} ({r.status})" for r in self.executor.running()),
            )

    def round_seconds(self) -> list[float]:
        """How long the loop's recent rounds took (seconds, oldest first; at most 512)."""
        return list(self._round_s)

    def wake(self) -> None:
        """Run a round now."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                self.step()
            except Exception as exc:  # the loop never dies: log (once while it repeats) and go on
                self._quiet_loop.exception("placement round failed", exc=exc)
            self._round_s.append(time.perf_counter() - began)
            self._wake.wait(self.settings.tick_s)
            self._wake.clear()

    # -- pins

    def pin(self, module: str, *, node: str | None = None, tier: str | None = None) -> Pin:
        """Fix ``module`` to a node or a tier; the next round applies it.

        Raises:
            ValueError: neither or both given, a tier the module may not use, or a
                node the monitors do not know.
        """
        view = next((v for v in self._served.deployments() if v.spec.name == module), None)
        if tier is not None:
            if tier not in TIERS:
                raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
            if view is not None and tier not in view.spec.tiers:
                raise ValueError(
                    f"{module} may run on {', '.join(view.spec.tiers)}, not on {tier!r}"
                )
        if node is not None:
            snapshot = self._snapshot or self.monitors.snapshot(self.settings.window_s)
            state = snapshot.nodes.get(node)
            if state is None:
                known = ", ".join(sorted(snapshot.nodes)) or "none"
                raise ValueError(f"unknown node {node!r} (known: {known})")
            if view is not None and state.tier not in view.spec.tiers:
                raise ValueError(
                    f"{module} may run on {', '.join(view.spec.tiers)}, "
                    f"not on {state.tier} node {node}"
                )
        pin = self.store.pin(module, node=node, tier=tier)
        with self._lock:
            self._pins[module] = pin
            self._pins_changed = True
        self.wake()
        return pin

    def unpin(self, module: str) -> bool:
        """Let the engine place ``module`` again; returns whether it was pinned."""
        had = self.store.unpin(module)
        with self._lock:
            self._pins.pop(module, None)
            self._pins_changed = True
        self.wake()
        return had

    def pins(self) -> dict[str, Pin]:
        """Every pin, by module."""
        with self._lock:
            return dict(self._pins)

    def history(self, module: str | None = None, limit: int = 50) -> list[MigrationRecord]:
        """Migrations, newest first."""
        return self.store.migrations(module=module, limit=limit)

    def set_sources(self, module: str, sources: Mapping[str, float]) -> None:
        """Declare the sites that feed ``module`` and their request rates."""
        with self._lock:
            self._sources[module] = dict(sources)

    def track_pipelines(
        self,
        module: str,
        sites: Mapping[str, str],
        *,
        rate_per_s: float | None = None,
        sources: Mapping[str, PipelineSource] | None = None,
    ) -> None:
        """Declare that agents' pipelines run ``module``, one per site, and place each site.

        Each round, a site whose pipeline events miss the module's SLO over the
        window offloads to a Ray node holding one of the module's replicas (its
        gateway deployment), and returns to its agent once canaries meet the SLO
        and the dwell has passed. Feed the events with :meth:`Monitors.observe_event`.
        The declaration is recorded in the store: :meth:`restore` tracks it again.

        Args:
            module: the module installed on the agents.
            sites: agent id -> the site its pipeline serves (replaces an earlier call's).
            rate_per_s: frames per second per site until events are observed
                (default ``settings.default_rate_per_s``).
            sources: agent id -> its pipeline's MQTT source
                (:class:`~mesh.serving._leases.PipelineSource`): a site with one is
                moved with its source (route ``remote``: the replica takes the
                frames itself, the agent is out of the path); without, its agent
                offloads each frame.

        Raises:
            ValueError: no sites, an empty id, or a bad rate.

        Example:
            >>> controller.track_pipelines("counter", {"cam-07": "int-2-1"},
            ...                            rate_per_s=10.0)  # doctest: +SKIP
        """
        rate = self.settings.default_rate_per_s if rate_per_s is None else rate_per_s
        self._pipelines.track(module, sites, rate, sources=sources)
        self.wake()

    def untrack_pipelines(self, module: str) -> bool:
        """Stop placing ``module``'s pipelines; returns whether they were tracked or recorded."""
        return self._pipelines.untrack(module)

    def follow_replicas(self, module: str) -> list[MigrationRecord]:
        """Sites on ``module``'s old replicas move to the new ones, before the old stop.

        The serving manager's :meth:`~mesh.serving._manager.ServingManager.on_replacing`
        hook; see :mod:`mesh.control._pipeline_follow`.
        """
        snapshot = self._snapshot
        sites = {n: s.site for n, s in snapshot.nodes.items()} if snapshot is not None else {}
        return self._pipelines.follow_replicas(module, node_sites=sites)

    # -- observing

    def describe(self) -> dict[str, Any]:
        """The placement now, the last plan's decisions and the pins (``GET /v1/placements``)."""
        rows = {r.module: r for r in self.store.deployments()}
        with self._lock:
            seen = dict(self._seen)
            engine_plan = self._plan
            pins = dict(self._pins)
            saturated = self._saturated.pairs()
        latest = self.store.latest_plan()
        modules = []
        for view in self._served.deployments():
            name = view.spec.name
            row = rows.get(name)
            last = seen.get(name)
            since = last.since if last is not None and row and last.epoch == row.epoch else None
            entry: dict[str, Any] = {
                "module": name,
                "version": view.artifact.version,
                "tier": view.tier,
                "node": (row.where if row else None) or view.agent or ",".join(view.nodes) or None,
                "epoch": row.epoch if row else None,
                "since_s": (self._clock() - since) if since is not None else None,
                "slo_ms": view.spec.qos.p95_latency_ms,
                "tiers": list(view.spec.tiers),
                "sources": self._sources_of(view),
                "pin": pins[name].to_dict() if name in pins else None,
                "saturated": sorted(n for (m, n) in saturated if m == name),
                "observed": None,
                "decision": None,
            }
            stats = self._snapshot.module_latency(name) if self._snapshot else None
            if stats is not None:
                entry["observed"] = {
                    "count": stats.count,
                    "errors": stats.errors,
                    "p50_ms": finite(stats.p50_ms),
                    "p95_ms": finite(stats.p95_ms),
                    "rate_per_s": stats.rate_per_s,
                }
            if engine_plan is not None:
                site = self._primary_site(view)
                with contextlib.suppress(KeyError, ValueError):
                    entry["decision"] = str(engine_plan.explain(name, site))
            modules.append(entry)
        return {
            "plan_version": latest.version if latest else None,
            "plan": latest.to_dict() if latest else None,
            "modules": modules,
            "pipelines": self._pipelines.describe(self._snapshot, lambda m, n: (m, n) in saturated),
            "running": [r.to_dict() for r in self.executor.running()],
            "migrations": self.executor.counts(),
        }

    # -- after a restart

    def forget(self, module: str) -> bool:
        """Forget a recorded module that is not served (its restore failed, say).

        Returns whether it was recorded or had a restore state.
        """
        recorded = any(r.module == module for r in self.store.deployments())
        if recorded:
            self.store.remove_deployment(module)
        return self.restorer.forget(module) or recorded

    def restore(
        self,
        manager: ModuleDeployer,
        *,
        timeout_s: float = 60.0,
        stop: threading.Event | None = None,
    ) -> list[str]:
        """Re-deploy every recorded module where it served before the restart.

        Each module is retried with backoff (``restorer.policy``) and has a state
        meanwhile (:attr:`restorer`); ``stop`` (default: :meth:`close`) ends the
        waits. Then the recorded pipelines are tracked again (each site's route
        starts as its agent reports it, see ``agents``). Returns the modules
        re-deployed.
        """
        from mesh.sdk._specs import ModuleSpec

        def apply(record: DeploymentRecord) -> None:
            spec = ModuleSpec.model_validate_json(record.spec_json)
            if record.sources:
                self.set_sources(record.module, record.sources)
            if record.agent is not None:
                manager.deploy_to_agent(spec, record.agent, record.version, timeout_s=timeout_s)
            else:
                manager.deploy(spec, record.version, tier=record.tier, site=record.site)

        restored = self.restorer.run(self.store.deployments(), apply, stop=stop or self._stop)
        self._pipelines.restore()
        return restored
