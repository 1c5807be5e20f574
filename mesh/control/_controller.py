"""The placement controller: the reconcile loop that runs the engine and moves modules.

Each round (every ``tick_s``) it:

1. reads the monitors (Ray nodes' psutil, agents' heartbeats, link RTTs) and
   what the serving manager serves (a module deployed or moved by hand is
   adopted as it is, and recorded for a restart);
2. looks for **triggers**: a module's observed p95 over its SLO for a window
   (the node is then marked *saturated* for that module, so the engine treats
   it as full), a node that joined, left or is overloaded, a new model
   version, a pin changed, and every ``period_s`` the period itself; with none
   of these, a *predicted* violation (the current placement re-predicted under
   new metrics by the engine's ``keep`` policy) is one too;
3. on a trigger, plans with the engine (:func:`placement.plan`, policy
   ``ours``, with hysteresis and a minimum dwell time), stores the plan as a
   new desired-placement version when it differs from the last, and carries
   out its moves make-before-break through the :class:`MigrationExecutor`.

A saturated mark is lifted when canary inferences on that node meet the SLO
again (an agent keeps the module installed), or after ``saturation_ttl_s``
(:mod:`mesh.control._saturation`).

Modules whose agents run pipelines (:meth:`PlacementController.track_pipelines`)
are also placed per site, after the gateway routes: each site's pipeline runs
on its agent or offloads to the module's replicas
(:mod:`mesh.control._pipelines`); their gateway route keeps to fog and cloud.
They are recorded in the store and tracked again by :meth:`PlacementController.restore`.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from mesh.control._migrations import MigrationExecutor, ModuleDeployer, Target
from mesh.control._monitors import ModuleIntent, Monitors, NodeState, Snapshot, engine_inputs
from mesh.control._pipelines import PipelinePlacer
from mesh.control._saturation import SaturationMarks
from mesh.control._settings import (
    ControllerSettings,
    EdgeAgents,
    ModelVersions,
    RoundResult,
    ServedModules,
)
from mesh.control._store import DeploymentRecord, MigrationRecord, Pin, PlacementStore, PlanRecord
from mesh.serving._leases import PipelineSource
from mesh.serving._manager import DeploymentView
from mesh.serving._routes import Endpoint, RouteTable
from placement import (
    KEEP,
    OURS,
    TIERS,
    Module,
    PlannerSettings,
    Profile,
    Tier,
    plan,
)
from placement import (
    Plan as EnginePlan,
)

# Defined in ._placement_settings; re-exported for the imports that name this module.
__all__ = ["ControllerSettings", "PlacementController", "RoundResult", "ServedModules"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Placed:
    node: str
    since: float
    version: str
    epoch: int = 1


class PlacementController:
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
        agents: the edge gateway: a tracked pipeline's route starts as its agent
            reports it (None: taken to be local).
        clock: monotonic seconds (injected in tests).
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
        self._placed: dict[str, _Placed] = {}
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
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
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

    def close(self) -> None:
        """Stop the loop (a migration under way finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(120)
            self._thread = None

    def wake(self) -> None:
        """Run a round now."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the loop never dies: log and go on
                logger.exception("placement round failed")
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

    # -- observing

    def describe(self) -> dict[str, Any]:
        """The placement now, the last plan's decisions and the pins (``GET /v1/placements``)."""
        with self._lock:
            placed = dict(self._placed)
            engine_plan = self._plan
            pins = dict(self._pins)
            saturated = self._saturated.pairs()
        latest = self.store.latest_plan()
        modules = []
        for view in self._served.deployments():
            name = view.spec.name
            here = placed.get(name)
            entry: dict[str, Any] = {
                "module": name,
                "version": view.artifact.version,
                "tier": view.tier,
                "node": here.node if here else (view.agent or ",".join(view.nodes) or None),
                "since_s": (self._clock() - here.since) if here else None,
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
                    "p50_ms": _finite(stats.p50_ms),
                    "p95_ms": _finite(stats.p95_ms),
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
        }

    # -- one round

    def step(self) -> RoundResult:
        """One reconcile round: read, look for triggers, plan, move. Never raises for a move."""
        now = self._clock()
        s = self.settings
        if now - self._last_poll >= s.poll_s:
            self._last_poll = now
            self.monitors.poll()
        snapshot = self.monitors.snapshot(s.window_s)
        self._snapshot = snapshot
        views = {v.spec.name: v for v in self._served.deployments()}
        triggers = self._adopt(views, now)
        triggers += self._slo_triggers(views, snapshot, now)
        self._saturated.relieve(views, snapshot, now, {m: p.node for m, p in self._placed.items()})
        alive = frozenset(n.name for n in snapshot.nodes.values() if n.alive)
        if self._nodes is not None and alive != self._nodes:
            joined, left = sorted(alive - self._nodes), sorted(self._nodes - alive)
            triggers += [f"node joined: {n}" for n in joined] + [f"node left: {n}" for n in left]
        self._nodes = alive
        overloaded = sorted(
            n.name
            for n in snapshot.nodes.values()
            if n.alive and (n.utilisation or 0.0) > s.max_utilisation
        )
        triggers += [f"node overloaded: {n}" for n in overloaded]
        with self._lock:
            if self._pins_changed:
                triggers.append("pins changed")
                self._pins_changed = False
        if views:
            result = self._plan_gateway(views, snapshot, now, triggers)
        else:
            result = RoundResult(tuple(triggers))
        fired, moved = self._pipelines.step(
            views,
            snapshot,
            now,
            triggers=result.triggers,
            service_ms=self._service_ms,
            saturated=lambda m, n: (m, n) in self._saturated,
            mark=self._saturated.mark,
            stop=self._stop,
        )
        if fired or moved:
            logger.info("pipeline placement: %s; %d move(s)", "; ".join(fired), len(moved))
            result = replace(
                result,
                triggers=result.triggers + tuple(fired),
                migrations=result.migrations + tuple(moved),
            )
        return result

    def _plan_gateway(
        self,
        views: Mapping[str, DeploymentView],
        snapshot: Snapshot,
        now: float,
        triggers: list[str],
    ) -> RoundResult:
        """Plan the gateway routes on ``triggers`` (or the period) and carry out the moves."""
        s = self.settings
        if now - self._last_plan_at >= s.period_s:
            triggers.append("period")
        intents = self._intents(views, snapshot)
        if not intents and not self._node_pinned(views):
            return RoundResult(tuple(triggers))
        inputs = engine_inputs(
            snapshot,
            intents,
            cost_per_h=s.cost_per_h,
            default_rtt_ms=s.default_rtt_ms,
            max_utilisation=s.max_utilisation,
        )
        planner = PlannerSettings(slo_margin=s.slo_margin, min_dwell_s=s.dwell_s)
        if not triggers and intents:
            kept = plan(
                inputs.topology,
                inputs.modules,
                inputs.sources,
                metrics=inputs.metrics,
                current=inputs.current,
                now_s=now,
                policy=KEEP,
                settings=planner,
            )
            triggers += [f"predicted violation: {v}" for v in kept.violations]
        if not triggers:
            return RoundResult()
        self._last_plan_at = now
        engine_plan: EnginePlan | None = None
        if intents:
            engine_plan = plan(
                inputs.topology,
                inputs.modules,
                inputs.sources,
                metrics=inputs.metrics,
                current=inputs.current,
                now_s=now,
                policy=OURS,
                settings=planner,
            )
            with self._lock:
                self._plan = engine_plan
        version = self._store_plan(engine_plan, views, snapshot, triggers)
        moves = self._moves(engine_plan, views, snapshot)
        reason = "; ".join(triggers)
        done = []
        for module, target, site, why in moves:
            if self._stop.is_set():
                break
            explanation = ""
            if engine_plan is not None:
                try:
                    explanation = str(engine_plan.explain(module, site))
                except (KeyError, ValueError):
                    explanation = ""
            record = self.executor.migrate(
                module,
                target,
                site=site,
                reason=why or reason,
                explanation=explanation,
                plan_version=version,
            )
            done.append(record)
            if record.status == "done":
                self._placed[module] = _Placed(
                    target.node, self._clock(), views[module].artifact.version
                )
        if triggers != ["period"] or done:
            logger.info(
                "placement round: %s; %d move(s)%s",
                reason,
                len(done),
                f", plan version {version}" if version else "",
            )
        return RoundResult(tuple(triggers), engine_plan, version, tuple(done))

    # -- the pieces of a round

    def _adopt(self, views: Mapping[str, DeploymentView], now: float) -> list[str]:
        """Follow what serves each module now; record it for a restart."""
        triggers = []
        for name, view in views.items():
            node = view.agent or (view.nodes[0] if view.nodes else None)
            if node is None:
                # Every replica failed its health checks (its node died, say): mark
                # where it was unusable for it and re-place now, without waiting
                # for Ray to declare the node dead (~15 s).
                lost = self._placed.get(name)
                if lost is not None and self._saturated.mark(name, lost.node, math.inf):
                    triggers.append(f"no serving replica: {name} on {lost.node[:8]}")
                continue
            here = self._placed.get(name)
            version = view.artifact.version
            if here is not None and here.version != version:
                triggers.append(f"new version: {name} {version}")
            if here is None or here.node != node or here.version != version:
                since = here.since if here is not None and here.node == node else now
                self._placed[name] = _Placed(node, since, version)
                self._record(view)
        for name in set(self._placed) - set(views):
            del self._placed[name]
            try:
                self.store.remove_deployment(name)
            except Exception:
                logger.exception("%s: could not forget the deployment", name)
        return triggers

    def _record(self, view: DeploymentView) -> None:
        try:
            self.store.put_deployment(
                DeploymentRecord(
                    module=view.spec.name,
                    spec_json=view.spec.model_dump_json(),
                    version=view.artifact.version,
                    tier=view.tier,
                    site=view.site,
                    agent=view.agent,
                    sources=self._sources_of(view),
                )
            )
        except Exception:
            logger.exception("%s: could not record the deployment", view.spec.name)

    def _slo_triggers(
        self, views: Mapping[str, DeploymentView], snapshot: Snapshot, now: float
    ) -> list[str]:
        """Mark nodes whose observed p95 missed a module's SLO over the window."""
        s = self.settings
        out = []
        for (module, node), stats in snapshot.latency.items():
            view = views.get(module)
            here = self._placed.get(module)
            if view is None or here is None or here.node != node:
                continue
            if now - here.since < s.window_s:
                continue  # the window still holds requests from before the last move
            slo = view.spec.qos.p95_latency_ms
            if stats.count - stats.errors < s.min_samples or not stats.p95_ms > slo:
                continue
            if self._saturated.mark(module, node, stats.p95_ms, since=now):
                out.append(
                    f"{module} on {node}: observed p95 {stats.p95_ms:.1f} ms > SLO {slo:g} ms "
                    f"over {s.window_s:g} s ({stats.count} requests)"
                )
        return out

    def _sources_of(self, view: DeploymentView) -> dict[str, float]:
        declared = self._sources.get(view.spec.name)
        if declared:
            return dict(declared)
        site = self.settings.gateway_site
        if view.agent is not None and self._snapshot is not None:
            agent = self._snapshot.nodes.get(view.agent)
            site = agent.site if agent is not None else site
        sources = {site: self.settings.default_rate_per_s}
        self._sources[view.spec.name] = sources
        return dict(sources)

    def _primary_site(self, view: DeploymentView) -> str:
        sources = self._sources_of(view)
        return max(sorted(sources), key=lambda s: sources[s])

    def _node_pinned(self, views: Mapping[str, DeploymentView]) -> bool:
        return any(p.node is not None and m in views for m, p in self.pins().items())

    def _service_ms(self, view: DeploymentView) -> float:
        key = (view.spec.model, view.artifact.version)
        if key not in self._profiles:
            ms = self.settings.default_service_ms
            if self._registry is not None:
                try:
                    provider = self._registry.get(*key).profile.provider()
                    cpu = provider.at(1) if provider is not None else None
                    ms = cpu.p95_ms if cpu is not None else ms
                except Exception:
                    logger.debug("%s: no profile in the registry", key, exc_info=True)
            self._profiles[key] = max(ms, 1e-3)
        return self._profiles[key]

    def _intents(
        self, views: Mapping[str, DeploymentView], snapshot: Snapshot
    ) -> list[ModuleIntent]:
        s = self.settings
        pins = self.pins()
        tracked = self._pipelines.tracked()
        out = []
        for name, view in sorted(views.items()):
            pin = pins.get(name)
            if pin is not None and pin.node is not None:
                continue
            here = self._placed.get(name)
            if (
                pin is None
                and here is not None
                and here.node in self._pipelines.offloaded_to(name)
                and (state := snapshot.nodes.get(here.node)) is not None
                and state.alive
            ):
                # Its replica there serves agents' offloaded pipelines (or holds
                # their sources): moving it would cut them off mid-stream. Their
                # own placement moves them off an overloaded node first.
                continue
            tiers: list[Tier] = [t for t in TIERS if t in view.spec.tiers]
            if name in tracked and any(t != "edge" for t in tiers):
                # Its pipelines offload to this deployment: it stays on Ray nodes.
                tiers = [t for t in tiers if t != "edge"]
            if pin is not None and pin.tier is not None:
                tiers = [t for t in TIERS if t == pin.tier]
            service = self._service_ms(view)
            profile = Profile(
                {t: service + float(s.overhead_ms.get(t, 0.0)) for t in TIERS},
                memory_mb=max(1.0, len(view.artifact.data) * 3 / 2**20),
            )
            out.append(
                ModuleIntent(
                    module=Module(
                        name,
                        slo_p95_ms=view.spec.qos.p95_latency_ms,
                        profile=profile,
                        tiers=frozenset(tiers),
                    ),
                    sources=self._sources_of(view),
                    node=here.node if here else None,
                    since_s=here.since if here else 0.0,
                    epoch=here.epoch if here else 1,
                    saturated=self._saturated.nodes(name),
                )
            )
        return out

    def _moves(
        self,
        engine_plan: EnginePlan | None,
        views: Mapping[str, DeploymentView],
        snapshot: Snapshot,
    ) -> list[tuple[str, Target, str, str]]:
        """(module, target, site, why) for each module whose node changes."""
        out = []
        for name, pin in sorted(self.pins().items()):
            if pin.node is None or name not in views:
                continue
            here = self._placed.get(name)
            state = snapshot.nodes.get(pin.node)
            if state is None or not state.alive:
                logger.warning("%s is pinned to %s, which is not up", name, pin.node)
                continue
            if here is None or here.node != pin.node:
                target = _target(state)
                out.append((name, target, self._primary_site(views[name]), f"pinned to {pin.node}"))
        if engine_plan is None:
            return out
        pins = self.pins()
        for name, view in sorted(views.items()):
            pinned = pins.get(name)
            if pinned is not None and pinned.node is not None:
                continue
            site = self._primary_site(view)
            try:
                route = engine_plan.routes[name, site]
            except KeyError:
                continue
            here = self._placed.get(name)
            if here is not None and here.node == route.node:
                continue
            state = snapshot.nodes.get(route.node)
            if state is None:
                continue
            out.append((name, _target(state), site, ""))
        return out

    def _store_plan(
        self,
        engine_plan: EnginePlan | None,
        views: Mapping[str, DeploymentView],
        snapshot: Snapshot,
        triggers: list[str],
    ) -> int | None:
        """Store the plan as a new desired-placement version if it changed anything."""
        routes: dict[str, dict[str, Any]] = {}
        pins = self.pins()
        for name, view in sorted(views.items()):
            pin = pins.get(name)
            if pin is not None and pin.node is not None:
                state = snapshot.nodes.get(pin.node)
                routes[name] = {
                    "site": self._primary_site(view),
                    "node": pin.node,
                    "tier": state.tier if state else None,
                    "why": f"pinned to node {pin.node}",
                }
                continue
            if engine_plan is None:
                continue
            site = self._primary_site(view)
            try:
                route = engine_plan.routes[name, site]
            except KeyError:
                continue
            state = snapshot.nodes.get(route.node)
            routes[name] = {
                "site": site,
                "node": route.node,
                "tier": state.tier if state else None,
                "predicted_p95_ms": _finite(route.predicted_p95_ms),
                "slo_p95_ms": route.slo_p95_ms,
            }
        comparable = {m: (r["node"], r["site"]) for m, r in routes.items()}
        before = (
            {m: (r.get("node"), r.get("site")) for m, r in self._last_routes.items()}
            if self._last_routes is not None
            else None
        )
        if comparable == before:
            return None
        try:
            record: PlanRecord = self.store.add_plan(
                trigger="; ".join(triggers),
                policy=engine_plan.policy if engine_plan else "pins",
                feasible=engine_plan.feasible if engine_plan else True,
                cost_per_h=engine_plan.cost_per_h if engine_plan else 0.0,
                routes=routes,
            )
        except Exception:
            logger.exception("could not store the desired placement")
            return None
        self._last_routes = routes
        return record.version

    # -- after a restart

    def restore(self, manager: ModuleDeployer, *, timeout_s: float = 60.0) -> list[str]:
        """Re-deploy every recorded module where it served before the restart.

        Then track the recorded pipelines again (each site's route starts as its
        agent reports it, see ``agents``). Returns the modules re-deployed; a
        deployment or pipeline entry that fails is logged and skipped.
        """
        from mesh.sdk._specs import ModuleSpec

        restored = []
        for record in self.store.deployments():
            try:
                spec = ModuleSpec.model_validate_json(record.spec_json)
                if record.sources:
                    self.set_sources(record.module, record.sources)
                if record.agent is not None:
                    manager.deploy_to_agent(spec, record.agent, record.version, timeout_s=timeout_s)
                else:
                    manager.deploy(spec, record.version, tier=record.tier, site=record.site)
                restored.append(record.module)
                logger.info(
                    "restored %s %s on %s",
                    record.module,
                    record.version,
                    record.agent or record.tier,
                )
            except Exception:
                logger.exception("could not restore %s %s", record.module, record.version)
        self._pipelines.restore()
        return restored


def _target(state: NodeState) -> Target:
    return Target(state.name, state.tier, state.site, state.kind)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
