"""Per-site placement of agents' pipelines: run a module locally, or offload it to a replica.

A module such as ``counter`` is installed on many edge agents, each running a
pipeline (camera frames -> counter -> events) for its own site, and is served
by its gateway deployment's Ray replicas on fog or cloud nodes. Each site's
pipeline follows the agent's route for the module: ``local`` (the agent's own
ONNX Runtime) or ``offload`` to a replica (:meth:`EdgeInstaller.set_route`).

Each round of the placement controller, for every (module, site) declared with
:meth:`PlacementController.track_pipelines`:

1. **observe**: the site's pipeline events on its current route over the
   window (:meth:`Monitors.observe_event`, fed by the edge gateway's
   ``on_event``);
2. **trigger**: the observed p95 over the SLO (a site running locally marks its
   agent *saturated* for the module, the controller's marks, lifted by its
   canaries), the offload target's replica gone or silent (a remote route's
   replica that answered under a quarter of the declared frames over the
   window: planned without it, back to the agent if nothing else can take
   it), an offloaded site whose agent
   recovered and whose hold passed (the dwell; twice as long, and so on, each
   time the site left its agent again soon after returning: flap damping, see
   :class:`ControllerSettings`), or any of the controller's own triggers
   (a node joined or left, the period);
3. **plan** with the engine: one :class:`~placement.Source` for the site, its
   own agent and the Ray nodes holding the module's replicas as candidates
   (hysteresis and dwell as for gateway routes). A site is planned on its own:
   a plan over every site would let one site's pipeline run on another site's
   agent, which no agent does;
4. **move**: :meth:`MigrationExecutor.route_pipeline` switches the agent's route
   and records the move with its site.

A site first declared (or tracked again after a control-plane restart) is
taken to run locally until its agent's observed state lists the module. An
agent that reports offloading it (switched before the restart) is taken as
offloaded to a replica not known here: the observed state names the route's
mode and epoch, not its target, and the replicas were re-deployed anyway, so
the site is re-planned at once.

Example:
    >>> controller.track_pipelines("counter", {"cam-07": "int-2-1", "cam-08": "int-2-2"},
    ...                            rate_per_s=10.0)                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mesh.control._migrations import MigrationExecutor, Target
from mesh.control._monitors import LatencyStats, NodeState, Snapshot
from mesh.control._settings import ControllerSettings, EdgeAgents
from mesh.control._store import MigrationRecord, PipelineRecord, PlacementStore
from mesh.serving._leases import PipelineSource
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

__all__ = ["PipelinePlacer", "PipelineSite"]

logger = logging.getLogger(__name__)

#: The node of a site its agent reports offloaded to a target not known here.
_UNKNOWN = "(unknown)"


@dataclass(frozen=True, slots=True)
class PipelineSite:
    """One site's pipeline of a module.

    Attributes:
        module: the module its pipeline runs.
        agent: the agent running it.
        site: the site it serves (its source).
        rate_per_s: the declared frame rate (the observed one replaces it).
        source: where its frames come from (a
            :class:`~mesh.serving._leases.PipelineSource`): moved with the pipeline
            (route ``remote``); None: the agent offloads each frame.
    """

    module: str
    agent: str
    site: str
    rate_per_s: float
    source: PipelineSource | None = None


@dataclass(slots=True)
class _SiteRoute:
    node: str  # the agent itself (local) or a Ray node id (offload)
    since: float
    epoch: int = 1
    replica: str | None = None
    tier: str = "edge"
    last_trigger: float = -math.inf
    known: bool = False  # set by this placer or reported by the agent, not assumed
    remote: bool = False  # the replica took the source too
    # Flap damping: away, how long before the site may return (0: the dwell);
    # local, the hold it served last (0: it never left), for the relapse test.
    hold_s: float = 0.0
    relapses: int = 0  # left again soon after returning, in a row
    silent: bool = False  # remote, and its replica stopped answering: planned without it

    def hold(self, dwell_s: float) -> float:
        """How long this route stays before its site may return to the agent."""
        return max(dwell_s, self.hold_s)


class PipelinePlacer:
    """Places each tracked site's pipeline locally or on a Ray replica; owned by the controller.

    Args:
        executor: switches agents' routes and records the moves.
        settings: the controller's knobs (window, samples, dwell, margins, costs).
        endpoints: module -> its route's endpoints (replicas answer offloads).
        clock: monotonic seconds.
        store: where declarations are recorded, for :meth:`restore` (None: nowhere).
        agents: the agents' registry: a site's route until this placer switches it
            is the one its agent reports (None: taken to be local).
    """

    def __init__(
        self,
        executor: MigrationExecutor,
        settings: ControllerSettings,
        *,
        endpoints: Callable[[str], Sequence[Endpoint]],
        clock: Callable[[], float],
        store: PlacementStore | None = None,
        agents: EdgeAgents | None = None,
    ) -> None:
        """Nothing is tracked until :meth:`track` (or :meth:`restore`)."""
        self._store = store
        self._agents = agents
        self._executor = executor
        self._settings = settings
        self._endpoints = endpoints
        self._clock = clock
        self._lock = threading.Lock()
        self._sites: dict[str, dict[str, PipelineSite]] = {}
        self._routes: dict[tuple[str, str], _SiteRoute] = {}

    def track(
        self,
        module: str,
        sites: Mapping[str, str],
        rate_per_s: float,
        *,
        sources: Mapping[str, PipelineSource] | None = None,
    ) -> None:
        """Declare ``module``'s pipelines: agent -> site (replaces an earlier declaration).

        ``sources`` (agent -> :class:`~mesh.serving._leases.PipelineSource`) names
        the sources that move with an offloaded pipeline; they are not recorded
        (after a restart those sites offload frame by frame until declared again).

        A site not seen before is taken to run locally until its agent reports
        its route (see the module's docstring). Once valid, the declaration is
        recorded in the store (a failure there is logged: it is placed all the same).

        Raises:
            ValueError: no sites, an empty or non-string id, or a negative or non-finite rate.
        """
        self._declare(module, sites, rate_per_s, sources or {})
        if self._store is not None:
            try:
                self._store.put_pipelines(PipelineRecord(module, dict(sites), rate_per_s))
            except Exception:
                logger.exception("%s: could not record the pipelines", module)

    def _declare(
        self,
        module: str,
        sites: Mapping[str, str],
        rate_per_s: float,
        sources: Mapping[str, PipelineSource] | None = None,
    ) -> None:
        if not sites:
            raise ValueError(f"{module}: declare at least one agent -> site")
        if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
            raise ValueError(f"{module}: rate_per_s must be >= 0, got {rate_per_s!r}")
        for agent, site in sites.items():
            if not (agent and site and isinstance(agent, str) and isinstance(site, str)):
                raise ValueError(
                    f"{module}: agent and site must be non-empty strings ({agent!r}: {site!r})"
                )
        now = self._clock()
        with self._lock:
            self._sites[module] = {
                agent: PipelineSite(module, agent, site, rate_per_s, (sources or {}).get(agent))
                for agent, site in sites.items()
            }
            for agent in sites:
                self._routes.setdefault((module, agent), _SiteRoute(agent, now))
            for key in [k for k in self._routes if k[0] == module and k[1] not in sites]:
                del self._routes[key]

    def untrack(self, module: str) -> bool:
        """Stop placing ``module``'s pipelines and forget them in the store.

        Their routes stay as they are. Returns whether they were tracked or recorded.
        """
        with self._lock:
            for key in [k for k in self._routes if k[0] == module]:
                del self._routes[key]
            tracked = self._sites.pop(module, None) is not None
        recorded = False
        if self._store is not None:
            try:
                recorded = self._store.remove_pipelines(module)
            except Exception:
                logger.exception("%s: could not forget the recorded pipelines", module)
        return tracked or recorded

    def restore(self) -> list[str]:
        """Track the store's recorded pipelines again (after a restart); returns the modules.

        An entry that fails validation is logged and skipped (it stays recorded).
        """
        try:
            records = self._store.pipelines() if self._store is not None else []
        except Exception:
            logger.exception("could not read the recorded pipelines")
            return []
        restored = []
        for r in records:
            try:
                self._declare(r.module, r.sites, r.rate_per_s)
            except Exception:
                logger.exception("could not restore %s pipelines %s", r.module, dict(r.sites))
                continue
            restored.append(r.module)
            logger.info("restored %s pipelines at %d site(s)", r.module, len(r.sites))
        return restored

    def tracked(self) -> frozenset[str]:
        """Modules whose pipelines are placed."""
        with self._lock:
            return frozenset(self._sites)

    def offloaded_to(self, module: str) -> frozenset[str]:
        """The Ray nodes some site of ``module`` offloads to (or handed its source to)."""
        with self._lock:
            return frozenset(
                r.node for (m, agent), r in self._routes.items() if m == module and r.node != agent
            )

    def route_of(self, module: str, agent: str) -> str | None:
        """``local``, ``offload:<replica>``, or None for a site not tracked."""
        with self._lock:
            route = self._routes.get((module, agent))
        return None if route is None else _route_key(route, agent)

    def describe(
        self, snapshot: Snapshot | None, saturated: Callable[[str, str], bool]
    ) -> list[dict[str, Any]]:
        """Every tracked site: node, route, declared rate, since when, observed p95, saturated."""
        with self._lock:
            sites = [s for by_agent in self._sites.values() for s in by_agent.values()]
            routes = dict(self._routes)
        out = []
        for s in sorted(sites, key=lambda s: (s.module, s.site, s.agent)):
            route = routes.get((s.module, s.agent))
            if route is None:
                continue
            key = _route_key(route, s.agent)
            stats = _stats(snapshot, s.module, s.agent, key)
            out.append(
                {
                    "module": s.module,
                    "site": s.site,
                    "agent": s.agent,
                    "node": route.node,
                    "tier": route.tier,
                    "route": key,
                    "rate_per_s": s.rate_per_s,
                    "since_s": self._clock() - route.since,
                    "observed_p95_ms": _finite(stats.p95_ms) if stats else None,
                    "events": stats.count if stats else 0,
                    "saturated": saturated(s.module, s.agent),
                    "relapses": route.relapses,
                }
            )
        return out

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

    def _reported(self, site: PipelineSite, route: _SiteRoute) -> _SiteRoute:
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
            learned = _SiteRoute(_UNKNOWN, route.since, epoch, tier="unknown", known=True)
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
        route: _SiteRoute,
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
            stats = _stats(snapshot, module, agent, _route_key(route, agent))
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
        stats = _stats(snapshot, module, agent, _route_key(route, agent))
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
        route: _SiteRoute,
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
        record = self._executor.route_pipeline(
            module,
            agent,
            site=site.site,
            source=_source(route, site, snapshot),
            target=Target(to.name, to.tier, site.site if local else to.site, to.kind),
            replica=None if local else replicas[node],
            reason=reason,
            explanation=explanation,
            source_topic=None if local else site.source,
        )
        if record.status == "done":
            hold_s, relapses = self._damping(site, route, local, now)
            with self._lock:
                if (module, agent) in self._routes:
                    self._routes[module, agent] = _SiteRoute(
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
        return record

    def _damping(
        self, site: PipelineSite, route: _SiteRoute, local: bool, now: float
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


def _route_key(route: _SiteRoute, agent: str) -> str:
    """``local``, ``offload:<replica>`` (``offload:?``: a target not known here) or ``remote:…``."""
    if route.node == agent:
        return "local"
    return f"{'remote' if route.remote else 'offload'}:{route.replica or '?'}"


def _source(route: _SiteRoute, site: PipelineSite, snapshot: Snapshot) -> Target:
    if route.node == site.agent:
        return Target(site.agent, "edge", site.site, "agent")
    state = snapshot.nodes.get(route.node)
    return Target(route.node, route.tier, state.site if state else "", "ray")


def _rtt(node: NodeState, defaults: Mapping[str, float]) -> float:
    return node.rtt_ms if node.rtt_ms is not None else float(defaults.get(node.tier, 5.0))


def _stats(snapshot: Snapshot | None, module: str, agent: str, route: str) -> LatencyStats | None:
    if snapshot is None:
        return None
    return snapshot.pipelines.get((module, agent), {}).get(route)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
