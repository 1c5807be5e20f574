"""A tracked site's pipeline and its route: what the pipeline placer and its round share.

:class:`PipelineSite` is a declaration (module, agent, site, rate, source);
:class:`SiteRoute` is where that site's pipeline runs now (its agent or a Ray
node's replica), since when, and its flap-damping hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh.control._snapshot import LatencyStats, Snapshot
from mesh.serving._leases import PipelineSource

__all__ = ["PipelineSite", "SiteRoute", "route_key", "site_stats"]


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
class SiteRoute:
    """Where one site's pipeline runs now, since when, and its flap damping."""

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


def route_key(route: SiteRoute, agent: str) -> str:
    """``local``, ``offload:<replica>`` (``offload:?``: a target not known here) or ``remote:…``."""
    if route.node == agent:
        return "local"
    return f"{'remote' if route.remote else 'offload'}:{route.replica or '?'}"


def site_stats(
    snapshot: Snapshot | None, module: str, agent: str, route: str
) -> LatencyStats | None:
    """The site's observed events on ``route`` in ``snapshot``, if any."""
    if snapshot is None:
        return None
    return snapshot.pipelines.get((module, agent), {}).get(route)
