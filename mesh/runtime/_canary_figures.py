"""Where a canary's figures come from: live errors per version and site, heartbeat counters.

Live errors come from a :class:`LiveErrorSource` (the drift service's
:class:`~mesh.control._live_error.LiveErrors`: outputs joined with their late
labels). Production's error is read where the candidate serves:
:func:`error_at` the canary agents' sites, over the window before the canary,
so both sides are judged on the same sites (a candidate tried on clean sites
is not flattered by production's error on drifting ones, nor the reverse).
p95 and request counters come from the agents' heartbeats (:func:`p95s`,
:func:`counters`, :func:`agent_figures`). A module without labels (a drift
check on its ``inputs`` or ``outputs``) is compared on agreement with a
reference instead: each version's drift score against its own validation
reference, from the drift service (:meth:`~mesh.runtime._drift.DriftService.version_score`,
agents and replicas alike); :func:`measure_of` picks the measure.

Example:
    >>> error_at(live_errors, "counter", "v3", since=t0, sites={"A0", "B0"})  # doctest: +SKIP
    (120, 0.41)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from mesh.edge._records import AgentView
from mesh.sdk._specs import Drift

__all__ = [
    "NOT_SCORED",
    "AgentSource",
    "ErrorWindowLike",
    "LiveErrorSource",
    "ScoreWindows",
    "agent_figures",
    "counters",
    "error_at",
    "measure_note",
    "measure_of",
    "p95s",
]

#: What a canary without a measure for its module compares.
NOT_SCORED = (
    "not scored (no drift check, no source for its measure, or a check with "
    "statistic='error' and no agent trying the candidate): p95 and failed requests decide"
)


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


class ScoreWindows:
    """Drift scores per version as the windows a canary reads (a :class:`LiveErrorSource`).

    Args:
        score: ``DriftService.version_score``.
    """

    def __init__(self, score: Callable[..., ErrorWindowLike]) -> None:
        """Read through ``score``."""
        self._score = score

    def window(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> ErrorWindowLike:
        """``version``'s drift score at ``site`` since ``since`` (``mae`` holds the score)."""
        return self._score(module, since=since, site=site, version=version)


def measure_of(
    drift: Drift | None,
    *,
    live_errors: LiveErrorSource | None,
    drift_scores: LiveErrorSource | None,
    agents_try: bool,
) -> tuple[str, LiveErrorSource] | None:
    """What a canary compares besides p95 and failures, and where it is read; None: nothing.

    ``statistic="error"``: the live error (outputs joined with late labels:
    agents' events, so an agent must try the candidate); ``inputs``/``outputs``:
    each version's drift score against its own reference (lower: closer to the
    data it was validated on; replicas count too).

    Example:
        >>> measure_of(None, live_errors=None, drift_scores=None, agents_try=True) is None
        True
    """
    if drift is None:
        return None
    if drift.statistic == "error":
        return ("live error", live_errors) if live_errors is not None and agents_try else None
    return ("drift score", drift_scores) if drift_scores is not None else None


def measure_note(measure: tuple[str, Any] | None) -> str:
    """How ``canary_started`` names the measure (:func:`measure_of`'s answer)."""
    if measure is None:
        return NOT_SCORED
    if measure[0] == "live error":
        return "scored"
    return f"scored on the {measure[0]} against each version's own reference (no labels)"
