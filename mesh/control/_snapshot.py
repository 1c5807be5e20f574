"""What the monitors know, frozen over a window: latency stats, node states, the snapshot.

:class:`Snapshot` is what :meth:`mesh.control._monitors.Monitors.snapshot`
returns and every part of a placement round reads: per (module, node) request
:class:`LatencyStats`, per node a :class:`NodeState`, and per (module, agent)
the pipeline events by route. :class:`NodeSample` is one psutil reading, as a
:class:`~mesh.control._probes.NodeProbe` returns it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["LatencyStats", "NodeSample", "NodeState", "Snapshot", "observed_p95", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (nan when empty).

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
        2.0
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return float(ordered[rank])


def observed_p95(count: int, errors: int, answered_p95_ms: float) -> float:
    """The p95 of ``count`` requests when its ``errors`` failures count as slower than any.

    Nearest rank, as :func:`percentile`: the failures take the top ranks, so
    once they reach the 95th rank the p95 is infinite (more than 5 % failed);
    below it, the answered requests' p95 stands (a lower bound: never a
    trigger the answered latencies do not show).

    Example:
        >>> observed_p95(20, 1, 12.0), observed_p95(20, 2, 12.0)
        (12.0, inf)
    """
    if count <= 0:
        return math.nan
    rank = max(1, math.ceil(0.95 * count))  # 1-based rank of the p95 sample
    return math.inf if errors > count - rank else answered_p95_ms


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Requests of one module on one node over a window.

    Attributes:
        count: requests answered (ok or not).
        errors: requests that failed.
        p50_ms: median latency of the ok ones.
        p95_ms: their 95th percentile.
        max_ms: the slowest one.
        rate_per_s: requests per second over the window.
    """

    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    rate_per_s: float

    @classmethod
    def of(cls, samples: Sequence[tuple[float, float, bool]], window_s: float) -> LatencyStats:
        """Stats of ``(at, ms, ok)`` samples that span ``window_s``."""
        ok = [ms for _, ms, good in samples if good]
        return cls(
            count=len(samples),
            errors=len(samples) - len(ok),
            p50_ms=percentile(ok, 0.5),
            p95_ms=percentile(ok, 0.95),
            max_ms=max(ok) if ok else math.nan,
            rate_per_s=len(samples) / window_s if window_s > 0 else 0.0,
        )


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One psutil reading of a node.

    Attributes:
        node: node id (Ray) or agent id.
        cpu_percent: busy CPU over all cores, 0..100.
        mem_percent: memory in use, 0..100.
        mem_available_mb: memory free for new work.
        cpus: cores.
    """

    node: str
    cpu_percent: float
    mem_percent: float
    mem_available_mb: float
    cpus: int = 1


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the monitors know of one node at snapshot time.

    Attributes:
        name: Ray node id or agent id.
        kind: ``ray`` or ``agent``.
        tier: ``edge``, ``fog`` or ``cloud``.
        site: where it is (``mesh.site``; the agent's site).
        alive: Ray says alive / the agent is online.
        servers: parallel workers (Ray CPUs; an agent's inference threads).
        memory_mb: memory available to modules.
        utilisation: mean CPU busy fraction over the window (None: no reading).
        rtt_ms: median round trip over the window (None: not probed).
    """

    name: str
    kind: str
    tier: str
    site: str
    alive: bool
    servers: int = 1
    memory_mb: float = 1024.0
    utilisation: float | None = None
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the monitors hold, frozen over a window.

    Attributes:
        at: monotonic seconds when it was taken.
        window_s: the window the stats cover.
        nodes: every node known, by name.
        latency: (module, node) -> the gateway's requests there.
        canaries: (module, node) -> canary inferences there.
        pipelines: (module, agent) -> route (``local`` or ``offload:<target>``) ->
            that agent's pipeline events on that route.
    """

    at: float
    window_s: float
    nodes: Mapping[str, NodeState]
    latency: Mapping[tuple[str, str], LatencyStats]
    canaries: Mapping[tuple[str, str], LatencyStats] = field(default_factory=dict)
    pipelines: Mapping[tuple[str, str], Mapping[str, LatencyStats]] = field(default_factory=dict)

    def module_latency(self, module: str) -> LatencyStats | None:
        """The module's requests on all nodes together (None: none in the window)."""
        parts = [s for (m, _), s in self.latency.items() if m == module and s.count]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        # Quantiles do not add: the worst node's p95 is the conservative answer.
        return LatencyStats(
            count=sum(p.count for p in parts),
            errors=sum(p.errors for p in parts),
            p50_ms=max(p.p50_ms for p in parts),
            p95_ms=max(p.p95_ms for p in parts if not math.isnan(p.p95_ms)),
            max_ms=max(p.max_ms for p in parts if not math.isnan(p.max_ms)),
            rate_per_s=sum(p.rate_per_s for p in parts),
        )
