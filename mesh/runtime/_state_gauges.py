"""The control plane's state as Prometheus gauges, read at each scrape of ``/metrics``.

The gateway counts requests as they pass (``mesh_inference_*``) and the serving
manager counts replicas and switches; what only the composition root sees whole is
exposed here, each gauge read from its owner at scrape time (nothing is kept twice):

- ``mesh_module_slo_seconds{module}``: each served module's p95 latency target, so
  a dashboard draws the SLO line next to ``mesh_inference_latency_seconds``.
- ``mesh_migrations{status}``: migrations by phase, those under way and those ended
  since this start (``done``, ``failed``, ``rolled_back``).
- ``mesh_restore_modules{state}``: modules recorded before this start, by restore
  state.
- ``mesh_edge_agent_up{agent}`` (1 online, 0 stale or offline) and
  ``mesh_edge_agent_heartbeat_age_seconds{agent}``: each enrolled agent's liveness.
- ``mesh_edge_agent_heartbeat_lag_seconds{agent}``: the last heartbeat's arrival
  minus its ``ts`` (ingestion lag, plus the two clocks' skew), and
  ``mesh_edge_agent_offline{agent}``: 1 for each agent whose status (or last
  will) says offline, only those listed (``bench/fleet.py`` reads both).
- ``mesh_placement_round_seconds{quantile}``: the reconcile loop's recent rounds
  (the last 512), p50 and p95 and max.

The agent gauges (and the gateway's ``mesh_edge_agents``) share one walk of the
agents a scrape (:meth:`~mesh.core._metrics.MetricsRegistry.per_scrape` of
``edge.agents``): with thousands of agents, each gauge walking them under the
registry's lock would cost five walks a scrape, and hold heartbeats back as long.

``deploy/grafana/fogmesh.json`` queries these names; ``tests/deploy`` checks that
every name it queries is one a running control plane exposes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from mesh.core._metrics import MetricsRegistry

__all__ = ["AgentLiveness", "expose_state"]

Samples = list[tuple[tuple[str, ...], float]]


class _Route(Protocol):
    @property
    def module(self) -> str: ...

    @property
    def slo_ms(self) -> float | None: ...


class _Agent(Protocol):
    @property
    def agent_id(self) -> str: ...

    def health(self, now: float | None = None) -> str: ...

    def heartbeat_age_s(self, now: float | None = None) -> float | None: ...
    @property
    def state(self) -> str: ...
    @property
    def last_heartbeat_at(self) -> float | None: ...
    @property
    def last_heartbeat(self) -> _Beat | None: ...


class _Beat(Protocol):
    @property
    def ts(self) -> float: ...


class AgentLiveness(Protocol):
    """What the gauges read of the edge side: its agents as they are known now."""

    def agents(self) -> Sequence[_Agent]:
        """Every known agent (a sequence: one read serves every gauge of a scrape)."""
        ...


def expose_state(
    metrics: MetricsRegistry,
    *,
    routes: Callable[[], Iterable[_Route]],
    migrations: Callable[[], Mapping[str, int]],
    restores: Callable[[], Mapping[str, int]],
    edge: AgentLiveness | None,
    rounds: Callable[[], Sequence[float]] | None = None,
) -> None:
    """Register the state gauges on ``metrics``; each reads its owner at scrape time.

    Args:
        metrics: the control plane's registry (the one ``/metrics`` renders).
        routes: the served modules' routes now.
        migrations: migrations by phase (``MigrationExecutor.counts``).
        restores: recorded modules by restore state (``Restorer.counts``).
        edge: the edge bus, or None when the control plane runs without agents.
        rounds: the reconcile loop's recent round durations
            (``PlacementController.round_seconds``), or None.
    """
    metrics.gauge_callback(
        "mesh_module_slo_seconds",
        "Each served module's p95 latency target (absent for a module without one).",
        ("module",),
        lambda: [((r.module,), r.slo_ms / 1000.0) for r in routes() if r.slo_ms is not None],
    )
    metrics.gauge_callback(
        "mesh_migrations",
        "Migrations by phase: those under way now and those ended since this start.",
        ("status",),
        lambda: [((status,), float(n)) for status, n in migrations().items()],
    )
    metrics.gauge_callback(
        "mesh_restore_modules",
        "Modules recorded before this start, by restore state (restoring, serving, failed).",
        ("state",),
        lambda: [((state,), float(n)) for state, n in restores().items()],
    )
    if rounds is not None:
        read_rounds = rounds
        metrics.gauge_callback(
            "mesh_placement_round_seconds",
            "The reconcile loop's recent rounds (the last 512): p50, p95 and max, in seconds.",
            ("quantile",),
            lambda: _quantiles(read_rounds()),
        )
    if edge is None:
        return
    agents = metrics.per_scrape(edge.agents)
    metrics.gauge_callback(
        "mesh_edge_agent_up",
        "1 while an agent is online (status and heartbeats current), else 0.",
        ("agent",),
        lambda: _liveness(agents(), up=True),
    )
    metrics.gauge_callback(
        "mesh_edge_agent_heartbeat_age_seconds",
        "Seconds since each agent's last heartbeat arrived (absent before the first).",
        ("agent",),
        lambda: _liveness(agents(), up=False),
    )
    metrics.gauge_callback(
        "mesh_edge_agent_heartbeat_lag_seconds",
        "Each agent's last heartbeat: arrival minus its ts (ingestion lag plus clock skew).",
        ("agent",),
        lambda: _lags(agents()),
    )
    metrics.gauge_callback(
        "mesh_edge_agent_offline",
        "1 for each agent whose status or last will says offline (only those are listed).",
        ("agent",),
        lambda: [((a.agent_id,), 1.0) for a in agents() if a.state == "offline"],
    )


def _quantiles(values: Sequence[float]) -> Samples:
    if not values:
        return []
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return [(("0.5",), at(0.5)), (("0.95",), at(0.95)), (("1",), ordered[-1])]


def _lags(agents: Sequence[_Agent]) -> Samples:
    out: Samples = []
    for agent in agents:
        beat, at = agent.last_heartbeat, agent.last_heartbeat_at
        if beat is not None and at is not None:
            out.append(((agent.agent_id,), at - beat.ts))
    return out


def _liveness(agents: Sequence[_Agent], *, up: bool) -> Samples:
    now = time.time()
    out: Samples = []
    for agent in agents:
        if up:
            out.append(((agent.agent_id,), 1.0 if agent.health(now) == "online" else 0.0))
        else:
            age = agent.heartbeat_age_s(now)
            if age is not None:
                out.append(((agent.agent_id,), age))
    return out
