"""Where a canary's figures come from: live errors per version and site, heartbeat counters.

Live errors come from a :class:`LiveErrorSource` (the drift service's
:class:`~mesh.control._live_error.LiveErrors`: outputs joined with their late
labels). Production's error is read where the candidate serves:
:func:`error_at` the canary agents' sites, over the window before the canary,
so both sides are judged on the same sites (a candidate tried on clean sites
is not flattered by production's error on drifting ones, nor the reverse).
p95 and request counters come from the agents' heartbeats (:func:`p95s`,
:func:`counters`, :func:`agent_figures`).

Example:
    >>> error_at(live_errors, "counter", "v3", since=t0, sites={"A0", "B0"})  # doctest: +SKIP
    (120, 0.41)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Protocol

from mesh.edge._records import AgentView

__all__ = [
    "AgentSource",
    "ErrorWindowLike",
    "LiveErrorSource",
    "agent_figures",
    "counters",
    "error_at",
    "p95s",
]


class AgentSource(Protocol):
    """The agents as the edge bus knows them now (:meth:`EdgeBus.agents`)."""

    def agents(self) -> list[AgentView]:
        """Every known agent."""
        ...


class ErrorWindowLike(Protocol):
    """Live error over a window: samples joined with labels, and their mean absolute error."""

    @property
    def n(self) -> int:
        """Samples scored."""
        ...

    @property
    def mae(self) -> float | None:
        """Their mean absolute error (None without samples)."""
        ...


class LiveErrorSource(Protocol):
    """Where live errors per version come from (``mesh.control._live_error.LiveErrors``)."""

    def window(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> ErrorWindowLike:
        """Error of ``module``'s outputs since ``since`` (of one site, one version)."""
        ...


def error_at(
    source: LiveErrorSource, module: str, version: str, *, since: float, sites: Iterable[str]
) -> tuple[int, float | None]:
    """Samples and MAE of ``version`` joined since ``since`` at ``sites`` (every site if none).

    ``since`` is in the source's clock (the control plane's ``time.time``).
    """
    wanted = sorted(set(sites))
    windows = [source.window(module, since=since, site=s, version=version) for s in wanted] or [
        source.window(module, since=since, version=version)
    ]
    scored = [(int(w.n), w.mae) for w in windows if w.n > 0 and w.mae is not None]
    total = sum(n for n, _ in scored)
    if total == 0:
        return 0, None
    return total, math.fsum(n * mae for n, mae in scored if mae is not None) / total


def p95s(
    views: Mapping[str, AgentView], agents: Iterable[str], module: str, version: str
) -> list[float]:
    """The p95 the ``agents`` last reported for ``version`` of ``module``."""
    out: list[float] = []
    for agent in agents:
        beat = views[agent].last_heartbeat
        stats = beat.modules.get(module) if beat is not None else None
        if stats is not None and stats.version == version and stats.p95_ms is not None:
            out.append(stats.p95_ms)
    return out


def counters(view: AgentView, module: str) -> tuple[int, int]:
    """An agent's requests and failed requests (errors + expired) for ``module``, so far."""
    beat = view.last_heartbeat
    stats = beat.modules.get(module) if beat is not None else None
    if stats is None:
        return 0, 0
    return stats.requests, stats.errors + stats.expired


def agent_figures(
    views: Mapping[str, AgentView],
    agents: Iterable[str],
    module: str,
    version: str,
    *,
    since: float,
    baseline: Mapping[str, tuple[int, int]],
) -> tuple[list[float], int, int]:
    """The ``agents``' p95s, requests and failed requests on ``version`` since ``baseline``.

    Only agents serving ``version`` whose last heartbeat came at ``since`` or
    later count; an agent whose counters went down (restarted) counts from zero.
    """
    latencies: list[float] = []
    requests = failures = 0
    for agent in agents:
        view = views.get(agent)
        beat = view.last_heartbeat if view is not None else None
        stats = beat.modules.get(module) if beat is not None else None
        if view is None or stats is None or stats.version != version:
            continue
        if (view.last_heartbeat_at or 0.0) < since:
            continue
        if stats.p95_ms is not None:
            latencies.append(stats.p95_ms)
        seen, failed = counters(view, module)
        base_seen, base_failed = baseline.get(agent, (0, 0))
        requests += seen - base_seen if seen >= base_seen else seen
        failures += failed - base_failed if failed >= base_failed else failed
    return latencies, requests, failures
