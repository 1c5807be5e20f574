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

``deploy/grafana/fogmesh.json`` queries these names; ``tests/deploy`` checks that
every name it queries is one a running control plane exposes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
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


class AgentLiveness(Protocol):
    """What the gauges read of the edge side: its agents as they are known now."""

    def agents(self) -> Iterable[_Agent]:
        """Every known agent."""
        ...


def expose_state(
    metrics: MetricsRegistry,
    *,
    routes: Callable[[], Iterable[_Route]],
    migrations: Callable[[], Mapping[str, int]],
    restores: Callable[[], Mapping[str, int]],
    edge: AgentLiveness | None,
) -> None:
    """Register the state gauges on ``metrics``; each reads its owner at scrape time.

    Args:
        metrics: the control plane's registry (the one ``/metrics`` renders).
        routes: the served modules' routes now.
        migrations: migrations by phase (``MigrationExecutor.counts``).
        restores: recorded modules by restore state (``Restorer.counts``).
        edge: the edge bus, or None when the control plane runs without agents.
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
    if edge is None:
        return
    metrics.gauge_callback(
        "mesh_edge_agent_up",
        "1 while an agent is online (status and heartbeats current), else 0.",
        ("agent",),
        lambda: _liveness(edge, up=True),
    )
    metrics.gauge_callback(
        "mesh_edge_agent_heartbeat_age_seconds",
        "Seconds since each agent's last heartbeat arrived (absent before the first).",
        ("agent",),
        lambda: _liveness(edge, up=False),
    )


def _liveness(edge: AgentLiveness, *, up: bool) -> Samples:
    now = time.time()
    out: Samples = []
    for agent in edge.agents():
        if up:
            out.append(((agent.agent_id,), 1.0 if agent.health(now) == "online" else 0.0))
        else:
            age = agent.heartbeat_age_s(now)
            if age is not None:
                out.append(((agent.agent_id,), age))
    return out
