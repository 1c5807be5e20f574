"""One reconcile round of the placement controller: triggers, the engine's plan, the moves.

:class:`ReconcileRound` is mixed into
:class:`mesh.control._controller.PlacementController`, which holds the state a
round reads and writes (declared below). A round reads where each module
runs from the placement store and holds the serving manager to it
(:mod:`mesh.control._placements`), looks for triggers (an observed SLO miss
marks the node saturated, nodes joining, leaving or overloaded, pins
changed, the period, a predicted violation), plans the gateway routes with
the engine, stores a changed plan as a new desired-placement version and
carries out its moves; then the agents' pipelines are placed per site
(:mod:`mesh.control._pipelines`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from mesh.control._engine_inputs import ModuleIntent, engine_inputs
from mesh.control._migrations import MigrationExecutor, Target
from mesh.control._monitors import Monitors
from mesh.control._pipelines import PipelinePlacer
from mesh.control._placements import Placed, RecordedPlacements
from mesh.control._saturation import SaturationMarks
from mesh.control._settings import ControllerSettings, ModelVersions, RoundResult, ServedModules
from mesh.control._snapshot import NodeState, Snapshot, observed_p95
from mesh.control._standing import StandingConditions
from mesh.control._store import (
    MigrationRecord,
    Pin,
    PlacementStore,
    PlanRecord,
)
from mesh.core._log_repeats import RepeatLog
from mesh.serving._manager import DeploymentView
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

__all__ = ["ReconcileRound", "finite"]

logger = logging.getLogger(__name__)


class ReconcileRound(RecordedPlacements):
    """:meth:`step` and its pieces; a mixin of ``PlacementController``."""

    # The controller's state, set in PlacementController.__init__.
    settings: ControllerSettings
    monitors: Monitors
    executor: MigrationExecutor
    store: PlacementStore
    _served: ServedModules
    _registry: ModelVersions | None
    _sources: dict[str, dict[str, float]]
    _clock: Callable[[], float]
    _placed: dict[str, Placed]  # this round's read of the store (_read_placed)
    _saturated: SaturationMarks
    _nodes: frozenset[str] | None
    _pins_changed: bool
    _last_plan_at: float
    _last_poll: float
    _last_routes: Mapping[str, Mapping[str, Any]] | None
    _plan: EnginePlan | None
    _snapshot: Snapshot | None
    _profiles: dict[tuple[str, str], float]
    _stop: threading.Event
    _lock: threading.Lock
    _pipelines: PipelinePlacer
    _standing: StandingConditions
    _quiet: RepeatLog
    _recovered: bool

    def pins(self) -> dict[str, Pin]:
        """Every pin, by module (:meth:`PlacementController.pins`)."""
        raise NotImplementedError

    # -- one round

    def step(self) -> RoundResult:
        """One reconcile round: read, look for triggers, plan, move. Never raises for a move."""
        now = self._clock()
        s = self.settings
        if now - self._last_poll >= s.poll_s:
            self._last_poll = now
            self.monitors.poll()
        snapshot = _without_lost_nodes(self.monitors.snapshot(s.window_s), self._served)
        self._snapshot = snapshot
        views = {v.spec.name: v for v in self._served.deployments()}
        triggers = self._adopt(views, snapshot)
        seen = dict(self._seen)
        self._placed = self._read_placed(views, now)
        triggers += self._new_versions(self._placed, seen)
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
        # A node that stays overloaded triggers once, not every round (the period re-plans).
        triggers += [
            f"node overloaded: {n}" for n in self._standing.fresh("overloaded", overloaded)
        ]
        with self._lock:
            if self._pins_changed:
                triggers.append("pins changed")
                self._pins_changed = False
        if not self._recovered:
            triggers += self._recover_migrations(snapshot)
        if views:
            result = self._plan_gateway(views, snapshot, now, triggers)
        else:
            result = RoundResult(tuple(triggers))
        result = replace(result, migrations=tuple(self._advance_migrations()))
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
            self._quiet.info("pipeline placement: %s; %d move(s)", "; ".join(fired), len(moved))
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
            # One that lasts triggers once (its figures change round to round: not its key).
            held = {f"{v.module}@{v.site} on {v.node}": v for v in kept.violations}
            fresh = set(self._standing.fresh("predicted", held))
            triggers += [f"predicted violation: {v}" for k, v in held.items() if k in fresh]
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
        done = []  # the migrations this round started (advance() carries them out)
        for module, target, site, why in moves:
            if self._stop.is_set():
                break
            if self.executor.busy(module):
                continue  # one migration per module: this one's ends first
            explanation = ""
            if engine_plan is not None:
                try:
                    explanation = str(engine_plan.explain(module, site))
                except (KeyError, ValueError):
                    explanation = ""
            try:
                record = self.executor.start(
                    module,
                    target,
                    site=site,
                    reason=why or reason,
                    explanation=explanation,
                    plan_version=version,
                )
            except (KeyError, ValueError):  # undeployed meanwhile, or busy
                logger.warning("%s: could not start its migration", module, exc_info=True)
                continue
            done.append(record)
        if triggers != ["period"] or done:
            self._quiet.info(
                "placement round: %s; %d move(s)%s",
                reason,
                len(done),
                f", plan version {version}" if version else "",
            )
        return RoundResult(tuple(triggers), engine_plan, version, tuple(done))

    # -- migrations

    def _advance_migrations(self) -> list[MigrationRecord]:
        """Start planned migrations and collect ended ones (never waits).

        A migration's switch wrote where its module runs: the next round reads it.
        """
        return self.executor.advance()

    def _recover_migrations(self, snapshot: Snapshot) -> list[str]:
        """Once, in the first round: resolve the migrations a crash left unfinished."""
        self._recovered = True

        def alive(node: str) -> bool:
            state = snapshot.nodes.get(node)
            return state is not None and state.alive

        try:
            resolved = self.executor.recover(alive)
        except Exception:
            logger.exception("could not resolve the unfinished migrations")
            return []
        return [
            f"migration {r.id} of {r.module} rolled back after a restart"
            for r in resolved
            if r.status == "rolled_back"
        ]

    # -- the pieces of a round

    def _slo_triggers(
        self, views: Mapping[str, DeploymentView], snapshot: Snapshot, now: float
    ) -> list[str]:
        """Mark nodes where a module missed its SLO over the window: too slow, or failing.

        A failed request (a 5xx, a timeout) is over any SLO: it counts as a
        sample slower than every answered one (:func:`observed_p95`), so a module
        whose requests fail where it serves triggers like one that is slow
        there. Failures the gateway could pin on no node (every replica
        unreachable: node ``""``) count against the module's current node.
        """
        s = self.settings
        out = []
        for module, here in list(self._placed.items()):
            view = views.get(module)
            if view is None or now - here.since < s.window_s:
                continue  # the window still holds requests from before the last move
            parts = [snapshot.latency.get((module, n)) for n in dict.fromkeys((here.node, ""))]
            stats = [p for p in parts if p is not None]
            count, errors = sum(p.count for p in stats), sum(p.errors for p in stats)
            if count < s.min_samples:
                continue
            answered = parts[0].p95_ms if parts[0] is not None else math.nan
            p95 = observed_p95(count, errors, answered)
            slo = view.spec.qos.p95_latency_ms
            if not p95 > slo or not self._saturated.mark(module, here.node, p95, since=now):
                continue
            if math.isinf(p95):
                what = f"{errors} of {count} requests failed over {s.window_s:g} s"
            else:
                what = f"observed p95 {p95:.1f} ms > SLO {slo:g} ms over {s.window_s:g} s"
                what += f" ({count} requests)"
            out.append(f"{module} on {here.node}: {what}")
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
                self._quiet.warning("%s is pinned to %s, which is not up", name, pin.node)
                continue
            if here is None or here.node != pin.node:
                target = target_of(state)
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
            out.append((name, target_of(state), site, ""))
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
                "predicted_p95_ms": finite(route.predicted_p95_ms),
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


def target_of(state: NodeState) -> Target:
    return Target(state.name, state.tier, state.site, state.kind)


def finite(value: float) -> float | None:
    """``value``, or None when it is not finite (JSON has no infinity)."""
    return value if math.isfinite(value) else None


@runtime_checkable
class _LosesNodes(Protocol):
    def lost_nodes(self) -> frozenset[str]: ...


def _without_lost_nodes(snapshot: Snapshot, served: ServedModules) -> Snapshot:
    """Nodes where the serving manager just lost a replica count as not alive.

    Ray counts a node whose raylet died alive for ~15 s more; a move there would
    wait that long to fail (:meth:`mesh.serving.ServingManager.lost_nodes`).
    """
    lost = served.lost_nodes() if isinstance(served, _LosesNodes) else frozenset()
    if not any(snapshot.nodes[n].alive for n in lost if n in snapshot.nodes):
        return snapshot
    nodes = {
        name: replace(node, alive=False) if name in lost else node
        for name, node in snapshot.nodes.items()
    }
    return replace(snapshot, nodes=nodes)
