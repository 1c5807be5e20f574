"""What the dashboard shows, as one JSON-ready snapshot, and the history it keeps.

:class:`DashboardSources` is the seam: plain callables the composition root
wires to the running services (the placement controller's ``describe`` and
``history``, its monitors' snapshot, the edge bus's agents, the model
registry, the run store), so this package imports none of them and its unit
tests hand in fakes. :class:`Snapshots` builds a snapshot at most once per
``min_interval_s`` whoever asks (every open page shares it), appends each
module's latency per node to a bounded ring (the module page's chart; a
sampler thread calls :meth:`Snapshots.sample` each second, page open or not) and
notes each change of a node's or an agent's health (the overview's faults),
both since this control plane started.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["DashboardSources", "LatencySample", "Snapshots"]

#: Latency samples kept per module (one a second: ten minutes).
HISTORY_SAMPLES = 600
#: Migrations listed on the overview.
RECENT_MIGRATIONS = 20
#: Health changes (a node dead, an agent offline, and back) kept for the overview.
RECENT_FAULTS = 50


class NodeLike(Protocol):
    """What a node of the monitors' snapshot has (``mesh.control._snapshot.NodeState``)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def tier(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    @property
    def servers(self) -> int: ...

    @property
    def memory_mb(self) -> float: ...

    @property
    def utilisation(self) -> float | None: ...

    @property
    def rtt_ms(self) -> float | None: ...


class StatsLike(Protocol):
    """Requests of one module on one node over a window (``LatencyStats``)."""

    @property
    def count(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def p50_ms(self) -> float: ...

    @property
    def p95_ms(self) -> float: ...

    @property
    def rate_per_s(self) -> float: ...


class MonitorSnapshot(Protocol):
    """The monitors' frozen view (``mesh.control._snapshot.Snapshot``)."""

    @property
    def nodes(self) -> Mapping[str, NodeLike]:
        """Every node known, by name."""
        ...

    @property
    def latency(self) -> Mapping[tuple[str, str], StatsLike]:
        """(module, node) -> its requests in the window."""
        ...


@dataclass(frozen=True, slots=True)
class DashboardSources:
    """Where the dashboard reads from; each a callable so tests pass fakes.

    Attributes:
        placements: the placement now (``PlacementController.describe``).
        history: migrations newest first, ``(module or None, limit) -> dicts``.
        monitors: the monitors' snapshot over the last ``window_s`` seconds.
        agents: every agent the edge bus knows, as JSON-ready dicts.
        models: module -> the registry model it serves.
        runs: function runs, ``(function or None, limit) -> dicts`` newest first.
        scenario: the running scenario (``ScenarioFeed.describe``), None when none ran.
        lifecycle: canaries under way and recent lifecycle steps (``CanaryService.describe``).
        drift: each tracked module's drift score per site, as dicts.
        window_s: the window of the latency figures shown as "now".
    """

    placements: Callable[[], Mapping[str, Any]]
    history: Callable[[str | None, int], Sequence[Mapping[str, Any]]]
    monitors: Callable[[float], MonitorSnapshot]
    agents: Callable[[], Sequence[Mapping[str, Any]]]
    models: Callable[[], Mapping[str, str]] = dict
    runs: Callable[[str | None, int], Sequence[Mapping[str, Any]]] = lambda _f, _n: []
    scenario: Callable[[], Mapping[str, Any] | None] = lambda: None
    lifecycle: Callable[[], Mapping[str, Any]] = dict
    drift: Callable[[], Sequence[Mapping[str, Any]]] = list
    window_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LatencySample:
    """One module on one node at one time: the chart's point."""

    at: float
    node: str
    p50_ms: float | None
    p95_ms: float | None
    rate_per_s: float
    errors: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "at": self.at,
            "node": self.node,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "rate_per_s": self.rate_per_s,
            "errors": self.errors,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _node(node: NodeLike) -> dict[str, Any]:
    return {
        "name": node.name,
        "kind": node.kind,
        "tier": node.tier,
        "site": node.site,
        "alive": node.alive,
        "servers": node.servers,
        "memory_mb": node.memory_mb,
        "cpu_percent": None if node.utilisation is None else round(node.utilisation * 100, 1),
        "rtt_ms": node.rtt_ms,
    }


@dataclass
class Snapshots:
    """Builds the dashboard's snapshot, shared by every page and stream.

    Args:
        sources: where the data comes from.
        min_interval_s: a snapshot younger than this is served again.
        clock: Unix time (injected in tests).
    """

    sources: DashboardSources
    min_interval_s: float = 0.5
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _last: dict[str, Any] | None = field(default=None, init=False)
    _history: dict[str, deque[LatencySample]] = field(default_factory=dict, init=False)
    _health: dict[tuple[str, str], str] = field(default_factory=dict, init=False)
    _sampled_at: float = field(default=-math.inf, init=False)
    _faults: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_FAULTS), init=False
    )

    def latest(self) -> dict[str, Any]:
        """The snapshot now (built again when the last is ``min_interval_s`` old)."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last["at"] < self.min_interval_s:
                return self._last
            self._last = self._build(now)
            return self._last

    def latency_history(self, module: str) -> list[dict[str, Any]]:
        """The module's samples, oldest first (empty for an unknown module)."""
        with self._lock:
            return [s.to_dict() for s in self._history.get(module, ())]

    def sample(self) -> None:
        """Record each module's latency per node now (the sampler's tick, once a second).

        So the module page's chart covers the time before anyone opened it; a
        snapshot built within ``min_interval_s`` has sampled already.
        """
        with self._lock:
            now = self.clock()
            if now - self._sampled_at >= self.min_interval_s:
                self._sample(now, self.sources.monitors(self.sources.window_s))

    def _sample(self, now: float, monitors: MonitorSnapshot) -> dict[str, list[dict[str, Any]]]:
        """Append a sample per (module, node) with requests; the samples by module."""
        self._sampled_at = now
        by_module: dict[str, list[dict[str, Any]]] = {}
        for (module, node), stats in sorted(monitors.latency.items()):
            if not stats.count:
                continue
            sample = LatencySample(
                at=now,
                node=node,
                p50_ms=_finite(stats.p50_ms),
                p95_ms=_finite(stats.p95_ms),
                rate_per_s=stats.rate_per_s,
                errors=stats.errors,
            )
            by_module.setdefault(module, []).append(sample.to_dict())
            self._history.setdefault(module, deque(maxlen=HISTORY_SAMPLES)).append(sample)
        return by_module

    def _build(self, now: float) -> dict[str, Any]:
        src = self.sources
        placement = dict(src.placements())
        monitors = src.monitors(src.window_s)
        latency = self._sample(now, monitors)
        models = dict(src.models())
        modules = []
        for entry in placement.get("modules", []):
            name = entry["module"]
            per_node = latency.get(name, [])
            observed = entry.get("observed") or {}
            count = observed.get("count") or 0
            modules.append(
                {
                    **entry,
                    "model": models.get(name),
                    "per_node": per_node,
                    "error_rate": (observed.get("errors", 0) / count) if count else None,
                }
            )
        for gone in set(self._history) - {m["module"] for m in modules}:
            del self._history[gone]
        agents = [dict(a) for a in src.agents()]
        nodes = [_node(n) for n in monitors.nodes.values() if n.kind != "agent"]
        self._note_health(
            now,
            [("node", n["name"], "alive" if n["alive"] else "dead") for n in nodes]
            + [("agent", str(a.get("agent_id")), str(a.get("health"))) for a in agents],
        )
        return {
            "at": now,
            "window_s": src.window_s,
            "nodes": sorted(nodes, key=lambda n: (_TIER_ORDER.get(n["tier"], 9), n["name"])),
            "agents": sorted(agents, key=lambda a: str(a.get("agent_id"))),
            "modules": modules,
            "running": placement.get("running", []),
            "migrations": [dict(m) for m in src.history(None, RECENT_MIGRATIONS)],
            "plan_version": placement.get("plan_version"),
            "faults": list(reversed(self._faults)),
            "scenario": src.scenario(),
            "lifecycle": dict(src.lifecycle()),
            "drift": [dict(d) for d in src.drift()],
        }

    def _note_health(self, now: float, states: list[tuple[str, str, str]]) -> None:
        """Record each change of a node's or agent's health since the last snapshot."""
        first = not self._health
        for kind, name, health in states:
            before = self._health.get((kind, name))
            self._health[(kind, name)] = health
            if not first and before != health:
                self._faults.append(
                    {"at": now, "kind": kind, "name": name, "from": before, "to": health}
                )


_TIER_ORDER = {"cloud": 0, "fog": 1, "edge": 2}
