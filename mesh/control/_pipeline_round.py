"""One round of the pipeline placer: each tracked site's triggers, its plan, its switch.

:class:`PipelineRound` is mixed into :class:`mesh.control._pipelines.PipelinePlacer`,
which holds the declarations and routes (declared below). For each site: take
the route its agent reports until this placer sets it, look for triggers (SLO
miss, replica gone or silent, the agent recovered), plan the site alone with
the engine (its agent and the nodes holding the module's replicas) and switch
the agent's route through the :class:`~mesh.control._migrations.MigrationExecutor`,
with flap damping on returns. The overview is in :mod:`mesh.control._pipelines`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from mesh.control._migrations import MigrationExecutor, Target
from mesh.control._pipeline_sites import PipelineSite, SiteRoute, route_key, site_stats
from mesh.control._settings import ControllerSettings, EdgeAgents
from mesh.control._snapshot import NodeState, Snapshot
from mesh.control._store import MigrationRecord
from mesh.serving._manager import DeploymentView
from mesh.serving._routes import Endpoint, ReplicaEndpoint
from placement import (
    OURS,
    TIERS,
    CurrentPlacement,
    CurrentRoute,
    Link,
    Metrics,
    Module,
    Node,
    PlannerSettings,
    Profile,
    Source,
    Topology,
    plan,
)

__all__ = ["PipelineRound"]

logger = logging.getLogger(__name__)

#: The node of a site its agent reports offloaded to a target not known here.
_UNKNOWN = "(unknown)"


class PipelineRound:
    """:meth:`step` and its per-site pieces; a mixin of ``PipelinePlacer``."""

    # The placer's state, set in PipelinePlacer.__init__.
    _settings: ControllerSettings
    _executor: MigrationExecutor
    _agents: EdgeAgents | None
    _endpoints: Callable[[str], Sequence[Endpoint]]
    _clock: Callable[[], float]
    _lock: threading.Lock
    _sites: dict[str, dict[str, PipelineSite]]
    _routes: dict[tuple[str, str], SiteRoute]

    # -- one round

    def step(
        self,
        views: Mapping[str, DeploymentView],
        snapshot: Snapshot,
        now: float,
        *,
        triggers: Sequence[str],
        service_ms: Callable[[DeploymentView], float],
        saturated: Callable[[str, str], bool],
        mark: Callable[[str, str, float], bool],
        stop: threading.Event | None = None,
    ) -> tuple[list[str], list[MigrationRecord]]:
        """Look for each site's triggers, plan the triggered ones, switch their routes.

        Args:
            views: what serves each module now (its SLO and version).
            snapshot: the monitors' snapshot of this round.
            now: this round's time.
            triggers: the controller's own triggers this round (each re-plans every site).
            service_ms: the module's profiled service time.
            saturated: whether (module, agent) is marked saturated.
            mark: marks (module, agent) saturated with the observed p95; True when new.
            stop: set when the controller stops (no further moves).

        Returns:
            This round's site triggers and the moves carried out.
        """
        with self._lock:
            tracked = {m: dict(by_agent) for m, by_agent in self._sites.items()}
        fired: list[str] = []
        moves: list[MigrationRecord] = []
        for module, sites in sorted(tracked.items()):
            view = views.get(module)
            if view is None:
                continue
            replicas = self._replicas(module)
            for agent, site in sorted(sites.items()):
                if stop is not None and stop.is_set():
                    return fired, moves
                with self._lock:
                    route = self._routes.get((module, agent))
                if route is None:
                    continue
                route = self._reported(site, route)
                why = self._site_triggers(
                    view, site, route, replicas, snapshot, now, saturated, mark
                )
                fired += [w for w in why if w]
                if not why and not triggers:
                    continue
                route.last_trigger = now
                record = self._plan_site(
                    view,
                    site,
                    route,
                    replicas,
                    snapshot,
                    now,
                    why or list(triggers),
                    service_ms,
                    saturated,
                )
                if record is not None:
                    moves.append(record)
        return fired, moves

    def _replicas(self, module: str) -> dict[str, str]:
        """Ray node id -> a replica id there answering offloaded requests."""
        out: dict[str, str] = {}
        try:
            endpoints = list(self._endpoints(module))
        except Exception:
            logger.exception("%s: could not read the route's endpoints", module)
            return out
        for e in sorted(
            (e for e in endpoints if isinstance(e, ReplicaEndpoint)), key=lambda e: e.replica_id
        ):
            out.setdefault(e.node_id, e.replica_id)
        return out

    def _reported(self, site: PipelineSite, route: SiteRoute) -> SiteRoute:
        """``route``, or the one the agent reports while this placer has not set it."""
        if route.known or self._agents is None:
            return route
        try:
            view = self._agents.agent(site.agent)
        except Exception:
            logger.exception("%s@%s: could not read agent %s", site.module, site.site, site.agent)
            return route
        observed = view.observed if view is not None else None
        installed = observed.installed if observed is not None else []
        reported = next((m for m in installed if m.name == site.module), None)
        if reported is None:
            return route  # not heard from yet: local until it reports
        epoch = max(route.epoch, reported.route_epoch)
        if reported.route_mode in ("offload", "remote"):
            learned = SiteRoute(_UNKNOWN, route.since, epoch, tier="unknown", known=True)
            logger.info(
                "%s@%s: agent %s reports an offload route (epoch %d) set before; re-planning",
                site.module,
                site.site,
                site.agent,
                reported.route_epoch,
            )
        else:
            learned = replace(route, epoch=epoch, known=True)
        with self._lock:
            key = (site.module, site.agent)
            if self._routes.get(key) is not route:
                return self._routes.get(key) or route  # switched or untracked meanwhile
            self._routes[key] = learned
        return learned

    def _site_triggers(
        self,
        view: DeploymentView,
        site: PipelineSite,
        route: SiteRoute,
        replicas: Mapping[str, str],
        snapshot: Snapshot,
        now: float,
        saturated: Callable[[str, str], bool],
        mark: Callable[[str, str, float], bool],
    ) -> list[str]:
        """Why this site must be planned now (an empty string: plan, but say nothing)."""
        s = self._settings
        module, agent = site.module, site.agent
        local = route.node == agent
        if not local and route.replica is None:
            if now - route.last_trigger < s.window_s:
                return []  # planned already (the agent was away, or the switch failed)
            return [f"{module}@{site.site}: {agent} offloads to a replica not known here"]
        if not local and replicas.get(route.node) != route.replica:
            return [f"{module}@{site.site}: replica {route.replica} on {route.node} is gone"]
        if route.remote and now - route.since >= s.window_s:
            # The replica took the source: if it stops answering (its node is
            # going, its link is cut), no latency says so, and its agent only
            # holds the frames. Silence is a violation too.
            stats = site_stats(snapshot, module, agent, route_key(route, agent))
            answered = stats.count if stats is not None else 0
            expected = site.rate_per_s * s.window_s
            route.silent = answered < expected / 4
            if route.silent:
                return [
                    f"{module}@{site.site}: replica {route.replica} on {route.node} answered "
                    f"{answered} frame(s) in {s.window_s:g} s (~{expected:.0f} expected)"
                ]
        if (
            not local
            and not saturated(module, agent)
            and now - route.since >= route.hold(s.dwell_s)
            and now - route.last_trigger >= s.window_s
        ):
            return [""]  # the agent recovered: the engine decides if the site returns
        if now - route.since < s.window_s:
            return []  # the window still holds events from before the last switch
        stats = site_stats(snapshot, module, agent, route_key(route, agent))
        slo = view.spec.qos.p95_latency_ms
        if stats is None or stats.count < s.min_samples or not stats.p95_ms > slo:
            return []
        new = mark(module, agent, stats.p95_ms) if local else False
        if not new and now - route.last_trigger < s.window_s:
            return []  # already planned for this violation: wait a window before again
        return [
            f"{module}@{site.site} on {route.node}: observed p95 {stats.p95_ms:.1f} ms > SLO "
            f"{slo:g} ms over {s.window_s:g} s ({stats.count} events)"
        ]

    def _plan_site(
        self,
        view: DeploymentView,
        site: PipelineSite,
        route: SiteRoute,
        replicas: Mapping[str, str],
        snapshot: Snapshot,
        now: float,
        why: Sequence[str],
        service_ms: Callable[[DeploymentView], float],
        saturated: Callable[[str, str], bool],
    ) -> MigrationRecord | None:
        s = self._settings
        module, agent = site.module, site.agent
        here = snapshot.nodes.get(agent)
        if here is None or not here.alive:
            return None  # the agent is away: its pipeline is not running either
        if route.silent:
            replicas = {n: r for n, r in replicas.items() if n != route.node}
        ray = [
            n
            for node_id in sorted(replicas)
            if (n := snapshot.nodes.get(node_id)) is not None and n.alive and n.tier in TIERS
        ]
        candidates = [here, *ray]
        agent_rtt = _rtt(here, s.default_rtt_ms)
        links: dict[str, float] = {}
        for n in ray:
            if n.site != site.site:
                rtt = agent_rtt + _rtt(n, s.default_rtt_ms)
                links[n.site] = min(links.get(n.site, math.inf), rtt)
        topology = Topology(
            nodes=tuple(
                Node(
                    n.name,
                    tier=n.tier,  # type: ignore[arg-type]
                    site=site.site if n is here else n.site,
                    cost_per_h=float(s.cost_per_h.get(n.tier, 0.0)),
                    servers=max(1, min(1024, n.servers)),
                    memory_mb=max(1.0, n.memory_mb),
                    max_utilisation=s.max_utilisation,
                )
                for n in candidates
            ),
            links=tuple(Link(site.site, other, rtt_ms=rtt) for other, rtt in sorted(links.items())),
        )
        service = service_ms(view)
        engine_module = Module(
            module,
            slo_p95_ms=view.spec.qos.p95_latency_ms,
            profile=Profile(
                {t: service + float(s.overhead_ms.get(t, 0.0)) for t in TIERS},
                memory_mb=1.0,  # installed at both ends already
            ),
            tiers=frozenset(n.tier for n in candidates),  # type: ignore[misc]
        )
        utilisation = {n.name: n.utilisation for n in candidates if n.utilisation is not None}
        if saturated(module, agent):
            utilisation[agent] = 0.99
        observed = snapshot.pipelines.get((module, agent), {})
        rate = sum(st.rate_per_s for st in observed.values()) if observed else site.rate_per_s
        names = {n.name for n in candidates}
        current = (
            CurrentPlacement(
                (CurrentRoute(module, site.site, route.node, route.since, route.epoch),)
            )
            if route.node in names
            else CurrentPlacement()
        )
        try:
            engine_plan = plan(
                topology,
                [engine_module],
                [Source(module, site.site, site.rate_per_s)],
                metrics=Metrics(
                    node_utilisation=utilisation, source_rates={(module, site.site): rate}
                ),
                current=current,
                now_s=now,
                policy=OURS,
                settings=PlannerSettings(slo_margin=s.slo_margin, min_dwell_s=s.dwell_s),
            )
        except Exception:
            logger.exception("%s@%s: planning the pipeline failed", module, site.site)
            return None
        chosen = engine_plan.routes.get((module, site.site))
        node = chosen.node if chosen is not None else agent if route.silent else None
        if node is None:
            logger.info("%s@%s: no node can take the pipeline; it stays", module, site.site)
            return None  # (a silent replica's site goes back to its agent: better slow)
        if node == route.node:
            return None
        held = route.hold(s.dwell_s) - (now - route.since)
        serving = route.replica is not None and replicas.get(route.node) == route.replica
        if node == agent and serving and held > 0:
            logger.debug("%s@%s: may return to %s in %.0f s", module, site.site, agent, held)
            return None  # flap damping: its replica still serves it
        if node != agent and node not in replicas:
            logger.warning(
                "%s@%s: the engine chose %s, which holds no replica", module, site.site, node
            )
            return None
        try:
            explanation = str(engine_plan.explain(module, site.site)) if chosen else ""
        except (KeyError, ValueError):
            explanation = ""
        to = snapshot.nodes[node]
        local = node == agent
        reason = "; ".join(w for w in why if w) or (
            f"{agent} meets the SLO again" if local else "re-planned"
        )
        if self._executor.routing(module, site.site):
            return None  # its last switch still waits for the agent

        def on_end(record: MigrationRecord) -> None:
            if record.status != "done":
                return
            hold_s, relapses = self._damping(site, route, local, now)
            with self._lock:
                if (module, agent) in self._routes:
                    self._routes[module, agent] = SiteRoute(
                        node,
                        self._clock(),
                        route.epoch + 1,
                        None if local else replicas[node],
                        to.tier,
                        now,
                        known=True,
                        remote=not local and site.source is not None,
                        hold_s=hold_s,
                        relapses=relapses,
                    )

        return self._executor.route_pipeline(
            module,
            agent,
            site=site.site,
            source=_source(route, site, snapshot),
            target=Target(to.name, to.tier, site.site if local else to.site, to.kind),
            replica=None if local else replicas[node],
            reason=reason,
            explanation=explanation,
            source_topic=None if local else site.source,
            on_end=on_end,
        )

    def _damping(
        self, site: PipelineSite, route: SiteRoute, local: bool, now: float
    ) -> tuple[float, int]:
        """The new route's hold and relapse count (see :class:`ControllerSettings`)."""
        s = self._settings
        if local or route.node != site.agent:
            return route.hold_s, route.relapses  # returning, or from one replica to another
        # Leaving the agent: a relapse if it came back from a hold not long ago.
        relapse = route.hold_s > 0 and now - route.since < 2 * route.hold_s
        relapses = route.relapses + 1 if relapse else 0
        hold_s = min(s.max_hold_s, s.dwell_s * s.relapse_backoff**relapses)
        if relapses:
            logger.info(
                "%s@%s: left %s again %.0f s after returning; stays away %.0f s",
                site.module,
                site.site,
                site.agent,
                now - route.since,
                hold_s,
            )
        return max(hold_s, s.dwell_s), relapses


def _source(route: SiteRoute, site: PipelineSite, snapshot: Snapshot) -> Target:
    if route.node == site.agent:
        return Target(site.agent, "edge", site.site, "agent")
    state = snapshot.nodes.get(route.node)
    return Target(route.node, route.tier, state.site if state else "", "ray")


def _rtt(node: NodeState, defaults: Mapping[str, float]) -> float:
    return node.rtt_ms if node.rtt_ms is not None else float(defaults.get(node.tier, 5.0))
