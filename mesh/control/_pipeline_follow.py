"""Sites on replicas that a redeploy replaces follow them to the new ones, make-before-break.

A module's redeploy (a promoted version, a ``mesh modules deploy``) starts its
new replicas, switches the gateway route to them, then drains and stops the
old ones. A site whose pipeline runs on an old replica (route ``offload``, or
``remote`` with its source handed over) would lose it with them: its agent
would hold its frames until a later round found the replica gone and
re-planned the site, then run them seconds late. So between the switch and
the drain the serving manager calls :meth:`ReplicaFollow.follow_replicas`
(:meth:`~mesh.serving._manager.ServingManager.on_replacing`): each such site's
route moves to the new replica on the same node while the old one still
answers. A remote site's source is handed over at one split time
(:meth:`~mesh.edge._install.EdgeInstaller.set_route`): the old replica runs the
frames captured before it, the new one those after. A site whose node has no
new replica is left to the next round, which re-plans it (its replica gone).

Example:
    >>> manager.on_replacing(controller.follow_replicas)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from mesh.control._migrations import MigrationExecutor
from mesh.control._pipeline_routing import Target
from mesh.control._pipeline_sites import PipelineSite, SiteRoute
from mesh.control._store import MigrationRecord
from mesh.serving._routes import Endpoint, ReplicaEndpoint

__all__ = ["FOLLOW_TIMEOUT_S", "ReplicaFollow"]

logger = logging.getLogger(__name__)

#: How long one site's switch to the new replica may take before the old ones stop.
FOLLOW_TIMEOUT_S = 30.0


class ReplicaFollow:
    """:meth:`follow_replicas`; a mixin of :class:`~mesh.control._pipelines.PipelinePlacer`."""

    # The placer's state, set in PipelinePlacer.__init__.
    _executor: MigrationExecutor
    _lock: threading.Lock
    _sites: dict[str, dict[str, PipelineSite]]
    _routes: dict[tuple[str, str], SiteRoute]
    _endpoints: Callable[[str], Sequence[Endpoint]]

    def _replicas(self, module: str) -> dict[str, str]:
        raise NotImplementedError  # PipelineRound's: Ray node id -> a replica id there

    def follow_replicas(
        self,
        module: str,
        *,
        node_sites: Mapping[str, str] | None = None,
        timeout_s: float = FOLLOW_TIMEOUT_S,
    ) -> list[MigrationRecord]:
        """Point every site on a replica no longer in ``module``'s route at the new one there.

        Call it after the route lists the new replicas and before the old stop.
        Each switch is a recorded pipeline migration (node to the same node), and
        this waits for each (at most ``timeout_s``). ``node_sites``: a Ray node's
        site, for the records.

        Returns:
            The switches' records (a failed one says why; its site keeps its route
            and the next round re-plans it once its replica is gone).
        """
        replicas = self._replicas(module)
        if not replicas:
            return []
        # Every replica the route still lists (a canary's candidate beside production's too).
        current = {e.replica_id for e in self._endpoints(module) if isinstance(e, ReplicaEndpoint)}
        with self._lock:
            moving = [
                (agent, site, route)
                for agent, site in sorted(self._sites.get(module, {}).items())
                if (route := self._routes.get((module, agent))) is not None
                and route.node != agent
                and route.replica is not None
                and route.replica not in current
                and route.node in replicas
            ]
        records: list[MigrationRecord] = []
        for agent, site, route in moving:
            new = replicas[route.node]
            record = self._follow(module, agent, site, route, new, node_sites, timeout_s)
            if record is not None:
                records.append(record)
        return records

    def _follow(
        self,
        module: str,
        agent: str,
        site: PipelineSite,
        route: SiteRoute,
        new: str,
        node_sites: Mapping[str, str] | None,
        timeout_s: float,
    ) -> MigrationRecord | None:
        if self._executor.routing(module, site.site):
            logger.info("%s@%s: a route switch is under way; not following", module, site.site)
            return None
        ended: list[MigrationRecord] = []
        done = threading.Event()

        def on_end(record: MigrationRecord) -> None:
            if record.status == "done":
                with self._lock:
                    if self._routes.get((module, agent)) is route:
                        self._routes[module, agent] = replace(
                            route, replica=new, epoch=route.epoch + 1, known=True
                        )
            ended.append(record)
            done.set()

        where = Target(route.node, route.tier, (node_sites or {}).get(route.node, ""), "ray")
        try:
            record = self._executor.route_pipeline(
                module,
                agent,
                site=site.site,
                source=where,
                target=where,
                replica=new,
                reason=f"{module}@{site.site}: replica {route.replica} replaced by {new}",
                source_topic=site.source if route.remote else None,
                on_end=on_end,
            )
        except ValueError:  # a switch of this site started meanwhile: that one stands
            return None
        if not done.wait(timeout_s):
            logger.warning(
                "%s@%s: no answer from agent %s in %.0f s while following %s to %s",
                module,
                site.site,
                agent,
                timeout_s,
                route.replica,
                new,
            )
            return record
        return ended[0]
