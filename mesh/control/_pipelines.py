"""Per-site placement of agents' pipelines: run a module locally, or offload it to a replica.

A module such as ``counter`` is installed on many edge agents, each running a
pipeline (camera frames -> counter -> events) for its own site, and is served
by its gateway deployment's Ray replicas on fog or cloud nodes. Each site's
pipeline follows the agent's route for the module: ``local`` (the agent's own
ONNX Runtime) or ``offload`` to a replica (:meth:`EdgeInstaller.set_route`).

Each round of the placement controller, for every (module, site) declared with
:meth:`PlacementController.track_pipelines`:

1. **observe**: the site's pipeline events on its current route over the
   window (:meth:`Monitors.observe_event`, fed by the edge bus's
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
from typing import Any

from mesh.control._migrations import MigrationExecutor
from mesh.control._pipeline_follow import ReplicaFollow
from mesh.control._pipeline_round import PipelineRound
from mesh.control._pipeline_sites import PipelineSite, SiteRoute, route_key, site_stats
from mesh.control._settings import ControllerSettings, EdgeAgents
from mesh.control._snapshot import Snapshot
from mesh.control._store import PipelineRecord, PlacementStore
from mesh.serving._leases import PipelineSource
from mesh.serving._routes import Endpoint

__all__ = ["PipelinePlacer"]

logger = logging.getLogger(__name__)


class PipelinePlacer(PipelineRound, ReplicaFollow):
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
        self._routes: dict[tuple[str, str], SiteRoute] = {}

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
                self._routes.setdefault((module, agent), SiteRoute(agent, now))
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
        return None if route is None else route_key(route, agent)

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
            key = route_key(route, s.agent)
            stats = site_stats(snapshot, s.module, s.agent, key)
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


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
