"""The control plane's state gauges: each read from its owner at scrape time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from mesh.core._metrics import MetricsRegistry
from mesh.runtime._state_gauges import expose_state
from mesh.serving._gateway import Gateway
from mesh.serving._routes import RouteTable


@dataclass(frozen=True)
class _Route:
    module: str
    slo_ms: float | None


@dataclass(frozen=True)
class _Beat:
    ts: float


@dataclass(frozen=True)
class _Agent:
    agent_id: str
    state: str
    age_s: float | None
    last_heartbeat: _Beat | None = None
    last_heartbeat_at: float | None = None

    def health(self, now: float | None = None) -> str:
        return self.state

    def heartbeat_age_s(self, now: float | None = None) -> float | None:
        return self.age_s


class _Edge:
    def __init__(self) -> None:
        self.known = [
            _Agent("a-1", "online", 2.5, _Beat(100.0), 100.25),
            _Agent("a-2", "offline", None),
        ]

    def agents(self) -> list[_Agent]:
        return self.known


def test_each_gauge_reads_its_owner_at_every_scrape() -> None:
    metrics = MetricsRegistry()
    routes = [_Route("counter", 25.0), _Route("no-slo", None)]
    edge = _Edge()
    expose_state(
        metrics,
        routes=lambda: routes,
        migrations=lambda: {"done": 2, "failed": 0},
        restores=lambda: {"serving": 1},
        edge=edge,
        rounds=lambda: [0.01] * 19 + [0.4],
    )
    text = metrics.render()
    assert 'mesh_module_slo_seconds{module="counter"} 0.025' in text
    assert "no-slo" not in text
    assert 'mesh_migrations{status="done"} 2.0' in text
    assert 'mesh_restore_modules{state="serving"} 1.0' in text
    assert 'mesh_edge_agent_up{agent="a-1"} 1.0' in text
    assert 'mesh_edge_agent_up{agent="a-2"} 0.0' in text
    assert 'mesh_edge_agent_heartbeat_age_seconds{agent="a-1"} 2.5' in text
    assert 'mesh_edge_agent_heartbeat_age_seconds{agent="a-2"}' not in text
    assert 'mesh_edge_agent_heartbeat_lag_seconds{agent="a-1"} 0.25' in text
    assert 'mesh_edge_agent_offline{agent="a-2"} 1.0' in text
    assert 'mesh_edge_agent_offline{agent="a-1"}' not in text
    assert 'mesh_placement_round_seconds{quantile="0.5"} 0.01' in text
    assert 'mesh_placement_round_seconds{quantile="0.95"} 0.4' in text

    edge.known = [_Agent("a-1", "stale", 40.0)]  # read again at the next scrape
    text = metrics.render()
    assert 'mesh_edge_agent_up{agent="a-1"} 0.0' in text and "a-2" not in text


def test_without_agents_no_agent_gauge_is_registered() -> None:
    metrics = MetricsRegistry()
    expose_state(metrics, routes=list, migrations=dict, restores=dict, edge=None)
    assert "mesh_edge_agent_up" not in metrics.render()
    assert "mesh_placement_round_seconds" not in metrics.render()
    assert "# TYPE mesh_migrations gauge" in metrics.render()


def test_one_scrape_walks_the_agents_once() -> None:
    class CountingEdge(_Edge):
        def __init__(self) -> None:
            super().__init__()
            self.walks = 0

        def agents(self) -> list[_Agent]:
            self.walks += 1
            return self.known

    metrics, edge = MetricsRegistry(), CountingEdge()
    expose_state(metrics, routes=list, migrations=dict, restores=dict, edge=edge)
    # The gateway's mesh_edge_agents reads the same source on the same registry.
    gateway = Gateway(RouteTable(), edge=cast(Any, edge), metrics=metrics)
    text = metrics.render()
    asyncio.run(gateway.close())
    assert 'mesh_edge_agent_up{agent="a-1"} 1.0' in text
    assert 'mesh_edge_agents{state="online"} 1.0' in text
    assert 'mesh_edge_agent_offline{agent="a-2"} 1.0' in text
    assert edge.walks == 1
    metrics.render()
    assert edge.walks == 2
