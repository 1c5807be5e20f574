"""The placement controller, monitors, migrations, store and REST API, with fakes.

The real :class:`ServingManager` runs on the fake launcher and installer of
``test_gateway_serving``; nodes, latency and canaries are fed by hand on a fake clock.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from mesh.control._api import create_placements_router
from mesh.control._controller import ControllerSettings, PlacementController
from mesh.control._engine_inputs import ModuleIntent, engine_inputs
from mesh.control._migrations import MigrationExecutor, Target, run_inline
from mesh.control._monitors import Monitors
from mesh.control._snapshot import LatencyStats, NodeSample, NodeState, percentile
from mesh.control._store import (
    DeploymentRecord,
    MigrationRecord,
    PipelineRecord,
    PlacementStore,
)
from mesh.core._http_errors import install_error_handlers
from mesh.serving._manager import ModelArtifact, ServingManager
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint, RouteTable
from placement import Module, Profile
from tests.support.http_errors import assert_error
from tests.unit.test_gateway_serving import (
    Clock,
    FakeLauncher,
    FakeProbe,
    Registryless,
    artifact,
    spec,
)

AGENT = "cam-1"
FOG = "node-fog"  # the fake launcher's replicas report node-{tier}
CLOUD = "node-cloud"


@dataclass
class FakeNodes:
    """Ray nodes and the agent as the monitors see them; CPU per node."""

    alive: dict[str, bool] = field(default_factory=lambda: {AGENT: True, FOG: True, CLOUD: True})
    cpu: dict[str, float] = field(default_factory=dict)

    def nodes(self) -> list[NodeState]:
        shapes = {
            AGENT: ("agent", "edge", "s1", 1),
            FOG: ("ray", "fog", "fog-0", 4),
            CLOUD: ("ray", "cloud", "cloud", 8),
        }
        return [
            NodeState(name, kind, tier, site, self.alive[name], servers)
            for name, (kind, tier, site, servers) in shapes.items()
        ]

    def sample(self) -> list[NodeSample]:
        return [NodeSample(n, c, 10.0, 1000.0) for n, c in self.cpu.items() if self.alive[n]]

    def ping(self, node: str, timeout_s: float) -> float | None:
        return 1.0


@dataclass
class FakeCanary:
    ms: float = 2.0
    calls: list[tuple[str, str]] = field(default_factory=list)

    def infer_ms(self, module: str, node: NodeState, timeout_s: float) -> float:
        self.calls.append((module, node.name))
        return self.ms


class Installer:
    def __init__(self) -> None:
        self.installs: list[tuple[str, str]] = []
        self.routes: list[tuple[str, str, str, str | None]] = []

    def install(self, agent_id: str, module: str, art: ModelArtifact, timeout_s: float) -> None:
        self.installs.append((agent_id, module))

    def set_route(
        self, agent_id: str, module: str, mode: str, target: str | None, timeout_s: float
    ) -> int:
        self.routes.append((agent_id, module, mode, target))
        return len(self.routes)


@dataclass
class World:
    clock: Clock
    nodes: FakeNodes
    canary: FakeCanary
    monitors: Monitors
    manager: ServingManager
    installer: Installer
    store: PlacementStore
    controller: PlacementController

    def load(self, node: str, ms: float, n: int = 20) -> None:
        for _ in range(n):
            self.monitors.observe("counter", node, ms / 1000.0, True)

    def served_on(self) -> str:
        route = self.manager.routes.get("counter")
        assert route is not None
        return route.endpoints[0].node

    def advance(self, s: float) -> None:
        self.clock.now += s


def world(*, store_path: str = ":memory:", **settings: Any) -> World:
    clock = Clock()
    clock.now = 100.0
    nodes = FakeNodes()
    canary = FakeCanary()
    monitors = Monitors(node_probe=nodes, canary=canary, clock=clock)
    installer = Installer()
    manager = ServingManager(
        RouteTable(),
        FakeLauncher(),
        probe=FakeProbe(),
        installer=installer,
        drain_timeout_s=1.0,
        start_timeout_s=5.0,
    )
    store = PlacementStore(store_path)
    executor = MigrationExecutor(
        manager, store, requests=monitors, installer=installer, monotonic=clock, spawn=run_inline
    )
    options: dict[str, Any] = {
        "window_s": 2.0,
        "min_samples": 5,
        "dwell_s": 10.0,
        "period_s": 5.0,
        "poll_s": 0.0,
        "canary_period_s": 0.0,
        "tick_s": 0.01,
    }
    options.update(settings)
    controller = PlacementController(
        manager,
        monitors,
        executor,
        store,
        settings=ControllerSettings(**options),
        sources={"counter": {"s1": 10.0}},
        clock=clock,
    )
    manager.deploy_to_agent(spec(), AGENT, artifact("v1"))
    return World(clock, nodes, canary, monitors, manager, installer, store, controller)


def recorded(*, store_path: str = ":memory:", **settings: Any) -> World:
    """A world whose manager records each switch with the controller (as the control plane)."""
    w = world(store_path=store_path, **settings)
    w.manager.record_placements(w.controller)
    return w


# ---------------------------------------------------------------- monitors


def test_percentile_and_latency_stats() -> None:
    assert percentile([], 0.5) != percentile([], 0.5)  # nan
    assert percentile([5.0, 1.0, 3.0], 0.95) == 5.0
    stats = LatencyStats.of([(0.0, 1.0, True), (0.5, 3.0, True), (1.0, 9.0, False)], 2.0)
    assert (stats.count, stats.errors, stats.max_ms, stats.rate_per_s) == (3, 1, 3.0, 1.5)


def test_monitors_keep_windows_per_module_and_node() -> None:
    clock = Clock()
    monitors = Monitors(clock=clock, ring=8)
    monitors.observe("m", "a", 0.010, True)
    clock.now = 5.0
    for _ in range(10):  # the ring keeps the last 8
        monitors.observe("m", "a", 0.002, True)
    monitors.observe("m", "b", 0.050, False)
    snap = monitors.snapshot(window_s=1.0)
    assert snap.latency["m", "a"].count == 8 and snap.latency["m", "a"].p95_ms == 2.0
    assert snap.latency["m", "b"].errors == 1
    combined = snap.module_latency("m")
    assert combined is not None and combined.count == 9
    assert monitors.requests_since("m", 4.0) == (9, 1, 50.0)
    assert snap.module_latency("other") is None


def test_poll_reads_nodes_cpu_and_rtt() -> None:
    clock = Clock()
    nodes = FakeNodes(cpu={FOG: 50.0})

    class Rtt:
        def rtt_ms(self, node: NodeState, timeout_s: float) -> float | None:
            return 3.0 if node.name == FOG else None

    monitors = Monitors(node_probe=nodes, rtt=Rtt(), clock=clock)
    monitors.poll()
    snap = monitors.snapshot(window_s=5.0)
    assert snap.nodes[FOG].utilisation == 0.5 and snap.nodes[FOG].rtt_ms == 3.0
    assert snap.nodes[AGENT].rtt_ms is None and snap.nodes[AGENT].utilisation is None


def test_engine_inputs_links_sources_and_saturation() -> None:
    clock = Clock()
    monitors = Monitors(node_probe=FakeNodes(cpu={FOG: 20.0}), clock=clock)
    monitors.poll()
    for _ in range(10):
        monitors.observe("counter", AGENT, 0.003, True)
    snap = monitors.snapshot(window_s=2.0)
    intent = ModuleIntent(
        Module("counter", slo_p95_ms=20.0, profile=Profile({"edge": 3.0, "fog": 2.0})),
        sources={"s1": 1.0},
        node=AGENT,
        since_s=0.0,
        saturated=frozenset({AGENT}),
    )
    inputs = engine_inputs(
        snap, [intent], cost_per_h={"edge": 0.01, "fog": 0.3}, default_rtt_ms={"fog": 4.0}
    )
    assert {n.name for n in inputs.topology.nodes} == {AGENT, FOG, CLOUD}
    links = {(link.a, link.b): link.rtt_ms for link in inputs.topology.links}
    assert links[("fog-0", "s1")] == 4.0 and links[("cloud", "s1")] == 5.0
    assert inputs.metrics.node_utilisation == {FOG: 0.2, AGENT: 0.99}
    assert inputs.metrics.source_rates == {("counter", "s1"): 5.0}
    assert inputs.current.get("counter", "s1") is not None


# ---------------------------------------------------------------- the store


def test_store_versions_plans_and_keeps_migrations_pins_deployments() -> None:
    store = PlacementStore(":memory:")
    assert store.latest_plan() is None
    first = store.add_plan(
        trigger="period", policy="ours", feasible=True, cost_per_h=0.1, routes={"m": {"node": "a"}}
    )
    second = store.add_plan(
        trigger="slo", policy="ours", feasible=False, cost_per_h=0.3, routes={"m": {"node": "b"}}
    )
    assert (first.version, second.version) == (1, 2)
    latest = store.latest_plan()
    assert latest is not None and latest.routes == {"m": {"node": "b"}} and not latest.feasible
    record = MigrationRecord("id1", "m", "s", "a", "b", "edge", "fog", "slo", "why", decided_at=1.0)
    store.put_migration(record)
    from dataclasses import replace

    store.put_migration(replace(record, status="done", switched_at=1.5, lost=0))
    [back] = store.migrations()
    assert back.status == "done" and back.switch_s == 0.5
    assert store.pin("m", tier="fog").tier == "fog"
    with pytest.raises(ValueError, match="one of them"):
        store.pin("m", node="a", tier="fog")
    assert set(store.pins()) == {"m"} and store.unpin("m") and not store.unpin("m")
    store.put_deployment(DeploymentRecord("m", "{}", "v1", "edge", None, "cam", {"s": 2.0}))
    [dep] = store.deployments()
    assert dep.agent == "cam" and dep.sources == {"s": 2.0}
    store.remove_deployment("m")
    assert store.deployments() == []


def test_store_survives_reopening(tmp_path: Any) -> None:
    path = tmp_path / "mesh.db"
    store = PlacementStore(path)
    store.add_plan(trigger="t", policy="ours", feasible=True, cost_per_h=0.0, routes={})
    store.pin("m", node="n")
    store.close()
    again = PlacementStore(path)
    latest = again.latest_plan()
    assert latest is not None and latest.version == 1 and again.pins()["m"].node == "n"
    again.close()


def test_store_keeps_pipelines_across_reopening(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mesh.db"
    store = PlacementStore(path)
    assert store.pipelines() == []
    store.put_pipelines(PipelineRecord("counter", {"cam-1": "s1", "cam-2": "s2"}, 10.0, 1.0))
    store.put_pipelines(PipelineRecord("detector", {"cam-3": "s3"}, 2.5, 2.0))
    store.put_pipelines(PipelineRecord("counter", {"cam-1": "s9"}, 4.0, 3.0))  # replaces
    store.close()
    again = PlacementStore(path)
    assert again.pipelines() == [
        PipelineRecord("counter", {"cam-1": "s9"}, 4.0, 3.0),
        PipelineRecord("detector", {"cam-3": "s3"}, 2.5, 2.0),
    ]
    assert again.remove_pipelines("detector") and not again.remove_pipelines("detector")
    # A row another writer damaged is logged and left out; the others still read.
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO placement_pipelines VALUES ('torn', '{\"cam-1\": ', 1.0, 0.0)")
        db.execute("INSERT INTO placement_pipelines VALUES ('listed', '[\"cam-1\"]', 1.0, 0.0)")
    with caplog.at_level(logging.WARNING, logger="mesh.control._store"):
        assert [r.module for r in again.pipelines()] == ["counter"]
    skipped = {r.getMessage().split(":")[0] for r in caplog.records}
    assert skipped == {"listed", "torn"}
    again.close()


# ---------------------------------------------------------------- migrations


def test_serving_manager_reports_phases_in_order() -> None:
    w = world()
    phases: list[str] = []
    w.manager.deploy(spec(), artifact("v1"), tier="fog", on_phase=phases.append)
    assert phases == ["ready", "switching", "switched", "drained", "removed"]
    view = w.manager.deployments()[0]
    assert view.tier == "fog" and view.nodes == (FOG,) and view.agent is None


def test_migration_is_recorded_with_timings_and_agents_follow() -> None:
    w = world()
    executor = w.controller.executor
    record = executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason="test", explanation="e"
    )
    assert record.status == "done" and record.from_node == AGENT and record.to_node == FOG
    assert record.decided_at <= (record.ready_at or 0) <= (record.switched_at or 0)
    assert (record.switched_at or 0) <= (record.drained_at or 0) <= (record.removed_at or 0)
    assert w.served_on() == FOG
    agent, module, mode, target = w.installer.routes[-1]
    assert (agent, module, mode) == (AGENT, "counter", "offload")
    assert target is not None and target.startswith("counter-v1-")
    back = executor.migrate("counter", Target(AGENT, "edge", "s1", "agent"), site="s1", reason="b")
    assert back.status == "done" and w.installer.routes[-1][2:] == ("local", None)
    assert [m.id for m in w.store.migrations()] == [back.id, record.id]


def test_failed_migration_keeps_the_source() -> None:
    w = world()
    launcher: Any = w.manager._launcher
    launcher.fail = "no room"
    record = w.controller.executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason="test"
    )
    assert record.status == "failed" and "no room" in (record.error or "")
    assert w.served_on() == AGENT and w.store.migrations()[0].status == "failed"
    with pytest.raises(KeyError):
        w.controller.executor.migrate("nope", Target(FOG, "fog", "f", "ray"), site="s", reason="")


# ---------------------------------------------------------------- the controller


def test_slo_violation_moves_to_fog_and_recovery_brings_it_back_after_dwell() -> None:
    w = world()
    first = w.controller.step()
    assert "period" in first.triggers and first.plan_version == 1 and not first.migrations
    assert w.served_on() == AGENT

    w.advance(1.0)
    w.load(AGENT, ms=3.0)
    assert not w.controller.step().migrations  # within SLO: no trigger, nothing moves

    w.advance(1.0)
    w.canary.ms = 80.0
    w.load(AGENT, ms=60.0)
    moved = w.controller.step()
    [record] = moved.migrations
    assert record.to_node == FOG and record.status == "done" and "observed p95" in record.reason
    assert "fog" in record.explanation and moved.plan_version == 2
    assert w.served_on() == FOG

    # The agent is probed while the hog runs: still slow, the mark stays.
    for _ in range(8):
        w.advance(0.3)
        w.load(FOG, ms=4.0, n=3)
        assert not w.controller.step().migrations
    assert w.canary.calls and all(node == AGENT for _, node in w.canary.calls)
    assert w.controller.describe()["modules"][0]["saturated"] == [AGENT]

    # The load stops: canaries meet the SLO, the mark lifts, and after the dwell it returns.
    w.canary.ms = 2.0
    for _ in range(10):
        w.advance(0.3)
        assert not w.controller.step().migrations
    assert w.controller.describe()["modules"][0]["saturated"] == []
    returned: list[MigrationRecord] = []
    for _ in range(40):
        w.advance(0.5)
        returned += w.controller.step().migrations
        if returned:
            break
    [back] = returned
    assert back.to_node == AGENT and w.served_on() == AGENT
    assert back.decided_at - record.decided_at >= 0  # wall clock; the dwell is on the fake one
    assert w.clock.now - 102.0 >= 10.0


def test_node_left_re_places_its_modules() -> None:
    w = world()
    w.controller.executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason=""
    )
    w.controller.step()
    w.nodes.alive[FOG] = False
    w.nodes.alive[AGENT] = False
    w.advance(1.0)
    result = w.controller.step()
    assert any("node left" in t for t in result.triggers)
    [record] = result.migrations
    assert record.to_node == CLOUD and w.served_on() == CLOUD


def test_pins_fix_the_tier_or_the_node() -> None:
    w = world()
    w.controller.step()
    with pytest.raises(ValueError, match="unknown node"):
        w.controller.pin("counter", node="nowhere")
    w.controller.pin("counter", tier="cloud")
    w.advance(1.0)
    [record] = w.controller.step().migrations
    assert record.to_node == CLOUD
    w.controller.pin("counter", node=FOG)
    w.advance(1.0)
    [record] = w.controller.step().migrations
    assert record.to_node == FOG and record.reason == f"pinned to {FOG}"
    assert w.controller.unpin("counter") and not w.controller.unpin("counter")
    latest = w.store.latest_plan()
    assert latest is not None and latest.routes["counter"]["node"] == FOG


def test_new_version_is_a_trigger_and_deployments_are_recorded() -> None:
    w = recorded()
    w.controller.step()
    [dep] = w.store.deployments()
    assert dep.agent == AGENT and dep.version == "v1"
    w.manager.deploy_to_agent(spec(), AGENT, artifact("v2"))
    assert w.store.deployments()[0].version == "v2"  # recorded before its route switched
    w.advance(0.5)
    assert "new version: counter v2" in w.controller.step().triggers
    w.manager.undeploy("counter")
    w.controller.step()
    assert w.store.deployments() == []


def test_restore_redeploys_recorded_modules() -> None:
    w = world()
    w.controller.step()
    fresh = ServingManager(RouteTable(), FakeLauncher(), probe=FakeProbe(), installer=Installer())

    assert w.controller.restore(Registryless(fresh)) == ["counter"]
    route = fresh.routes.get("counter")
    assert route is not None and route.endpoints == (AgentEndpoint(AGENT, "v1"),)


def test_the_loop_runs_and_stops() -> None:
    w = world()
    w.controller.start()
    try:
        w.controller.wake()
        deadline = 200
        while w.store.latest_plan() is None and deadline:
            time.sleep(0.01)
            deadline -= 1
        assert w.store.latest_plan() is not None
    finally:
        w.controller.close()


# ---------------------------------------------------------------- REST


def test_rest_api_lists_explains_pins_and_shows_history() -> None:
    w = world()
    w.controller.step()
    app = FastAPI()
    install_error_handlers(app)  # as the gateway's app does
    app.include_router(create_placements_router(w.controller))
    client = TestClient(app)
    doc = client.get("/v1/placements").json()
    [module] = doc["modules"]
    assert module["module"] == "counter" and module["node"] == AGENT and module["tier"] == "edge"
    assert "counter@s1 -> cam-1" in module["decision"] and doc["plan_version"] == 1
    nope = client.post("/v1/placements/nope/pin", json={"tier": "fog"})
    assert_error(nope, 404, "ModelNotServedError", "served: counter")
    assert_error(client.post("/v1/placements/counter/pin", json={}), 422, "InvalidRequestError")
    moon = client.post("/v1/placements/counter/pin", json={"tier": "moon"})
    assert_error(moon, 422, "InvalidRequestError", "unknown tier 'moon'")
    assert client.post("/v1/placements/counter/pin", json={"node": "x", "y": 1}).status_code == 422
    pinned = client.post("/v1/placements/counter/pin", json={"tier": "fog"})
    assert pinned.status_code == 200 and pinned.json()["tier"] == "fog"
    w.advance(1.0)
    w.controller.step()
    [record] = client.get("/v1/placements/history").json()
    assert record["to_node"] == FOG and record["status"] == "done"
    assert isinstance(record["switch_s"], float) and not math.isnan(record["switch_s"])
    assert client.get("/v1/placements/history?module=other").json() == []
    assert client.delete("/v1/placements/counter/pin").status_code == 204
    assert_error(client.delete("/v1/placements/counter/pin"), 404, "NotFoundError", "not pinned")
    assert isinstance(w.manager.routes.get("counter").endpoints[0], ReplicaEndpoint)  # type: ignore[union-attr]
