"""Per-site placement of agents' pipelines, with fakes.

Two agents run ``counter`` pipelines at sites s1 and s2; the module's gateway
deployment is on the fog node (the fake launcher's replicas), the offload
target. Pipeline events and canaries are fed by hand on a fake clock.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol import Event, InstalledModule, ObservedState, Topics
from mesh.control._controller import PlacementController
from mesh.control._migrations import MigrationExecutor, Spawn, run_inline
from mesh.control._monitors import Monitors
from mesh.control._settings import ControllerSettings
from mesh.control._snapshot import NodeSample, NodeState
from mesh.control._store import MigrationRecord, PipelineRecord, PlacementStore
from mesh.edge._registry import AgentRegistry
from mesh.serving._leases import PipelineSource
from mesh.serving._manager import ServingManager
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.unit.test_gateway_serving import (
    Clock,
    FakeLauncher,
    FakeProbe,
    Registryless,
    artifact,
    spec,
)

A1, A2 = "cam-1", "cam-2"
FOG, CLOUD = "node-fog", "node-cloud"  # the fake launcher's replicas report node-{tier}
SLO_MS = 20.0  # spec()'s
DWELL_S = 10.0


@dataclass
class FakeNodes:
    """Two agents and two Ray nodes as the monitors see them."""

    alive: dict[str, bool] = field(
        default_factory=lambda: {A1: True, A2: True, FOG: True, CLOUD: True}
    )

    def nodes(self) -> list[NodeState]:
        shapes = {
            A1: ("agent", "edge", "s1", 1),
            A2: ("agent", "edge", "s2", 1),
            FOG: ("ray", "fog", "fog-0", 4),
            CLOUD: ("ray", "cloud", "cloud", 8),
        }
        return [
            NodeState(name, kind, tier, site, self.alive[name], servers)
            for name, (kind, tier, site, servers) in shapes.items()
        ]

    busy: dict[str, float] = field(default_factory=dict)

    def sample(self) -> list[NodeSample]:
        return [NodeSample(node, cpu, 10.0, 1000.0, 4) for node, cpu in self.busy.items()]

    def ping(self, node: str, timeout_s: float) -> float | None:
        return 1.0


@dataclass
class FakeCanary:
    """Canary latency per agent; a list cycles (noisy)."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def infer_ms(self, module: str, node: NodeState, timeout_s: float) -> float:
        self.calls.append((module, node.name))
        values = self.ms.get(node.name, [2.0])
        return values[len(self.calls) % len(values)]


class Installer:
    def __init__(self) -> None:
        self.routes: list[tuple[str, str, str, str | None]] = []
        self.fail: str | None = None

    def install(self, agent_id: str, module: str, art: Any, timeout_s: float) -> None:
        pass

    def set_route(
        self,
        agent_id: str,
        module: str,
        mode: str,
        target: str | None,
        timeout_s: float,
        source: Any = None,
    ) -> int:
        if self.fail is not None:
            raise RuntimeError(self.fail)
        self.routes.append((agent_id, module, mode, target))
        return len(self.routes)


@dataclass
class World:
    clock: Clock
    canary: FakeCanary
    monitors: Monitors
    manager: ServingManager
    installer: Installer
    store: PlacementStore
    controller: PlacementController

    def events(self, agent: str, ms: float | list[float], route: str = "local") -> None:
        for value in ms if isinstance(ms, list) else [ms] * 10:
            self.monitors.observe_event(
                Event(
                    agent=agent,
                    site={A1: "s1", A2: "s2"}[agent],
                    stream="counts",
                    module="counter",
                    route=route,
                    latency_ms=value,
                )
            )

    def fog_replicas(self) -> set[str]:
        route = self.manager.routes.get("counter")
        assert route is not None
        return {
            e.replica_id
            for e in route.endpoints
            if isinstance(e, ReplicaEndpoint) and e.node_id == FOG
        }

    def pipeline(self, agent: str) -> dict[str, Any]:
        entries: list[dict[str, Any]] = self.controller.describe()["pipelines"]
        [entry] = [p for p in entries if p["agent"] == agent]
        return entry

    def round(self, dt: float = 0.5) -> list[MigrationRecord]:
        self.clock.now += dt
        return list(self.controller.step().migrations)


def world(
    *,
    store: PlacementStore | None = None,
    agents: Any = None,
    fresh: bool = True,
    node_probe: FakeNodes | None = None,
    spawn: Spawn = run_inline,
    **settings: Any,
) -> World:
    """Two tracked sites on a fog deployment; ``fresh=False``: a restarted control plane.

    A restarted one has nothing deployed or tracked: ``restore`` brings back
    what ``store`` recorded.
    """
    clock = Clock()
    clock.now = 100.0
    canary = FakeCanary()
    monitors = Monitors(node_probe=node_probe or FakeNodes(), canary=canary, clock=clock)
    installer = Installer()
    manager = ServingManager(
        RouteTable(),
        FakeLauncher(),
        probe=FakeProbe(),
        installer=installer,
        drain_timeout_s=1.0,
        start_timeout_s=5.0,
    )
    store = store if store is not None else PlacementStore(":memory:")
    executor = MigrationExecutor(
        manager, store, requests=monitors, installer=installer, monotonic=clock, spawn=spawn
    )
    options: dict[str, Any] = {
        "window_s": 2.0,
        "min_samples": 5,
        "dwell_s": DWELL_S,
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
        agents=agents,
        clock=clock,
    )
    manager.on_replacing(controller.follow_replicas)  # as mesh up wires it
    w = World(clock, canary, monitors, manager, installer, store, controller)
    if fresh:
        manager.deploy(spec(), artifact("v1"), tier="fog")
        controller.track_pipelines("counter", {A1: "s1", A2: "s2"}, rate_per_s=10.0)
        assert not w.round(0.0)  # the first round plans the gateway route: it stays on fog
    return w


def slow_site_moves(w: World) -> MigrationRecord:
    """s1's pipeline misses the SLO, s2's meets it: s1 offloads to the fog replica."""
    w.clock.now += 2.5  # past the first window
    w.canary.ms[A1] = [80.0]
    w.events(A1, 60.0)
    w.events(A2, 3.0)
    [record] = w.round(0.0)
    return record


# ---------------------------------------------------------------- monitors


def test_monitors_keep_pipeline_events_per_route() -> None:
    w = world()
    w.events(A1, [3.0, 4.0])
    w.events(A1, [30.0], route="offload:counter-v1-abc")
    w.monitors.observe_event(Event(stream="counts", data={"n": 1}))  # not a pipeline's
    snap = w.monitors.snapshot(2.0)
    by_route = snap.pipelines["counter", A1]
    assert by_route["local"].count == 2 and by_route["local"].p95_ms == 4.0
    assert by_route["offload:counter-v1-abc"].p95_ms == 30.0
    assert set(snap.pipelines) == {("counter", A1)}
    assert w.monitors.pipeline_since("counter", A1, 0.0) == (3, 30.0)


def test_track_pipelines_validates() -> None:
    w = world()
    with pytest.raises(ValueError, match="at least one"):
        w.controller.track_pipelines("counter", {})
    with pytest.raises(ValueError, match="rate_per_s"):
        w.controller.track_pipelines("counter", {A1: "s1"}, rate_per_s=-1.0)
    assert w.controller.untrack_pipelines("counter")
    assert not w.controller.untrack_pipelines("counter")
    assert w.controller.describe()["pipelines"] == []


# ---------------------------------------------------------------- placement


def test_a_site_over_slo_offloads_to_fog_and_the_others_stay() -> None:
    w = world()
    record = slow_site_moves(w)
    assert record.status == "done" and record.site == "s1"
    assert (record.from_node, record.to_node) == (A1, FOG)
    assert (record.from_tier, record.to_tier) == ("edge", "fog")
    assert "counter@s1" in record.reason and "observed p95 60.0 ms > SLO 20" in record.reason
    assert "fog" in record.explanation and record.switched_at is not None
    assert record.decided_at <= (record.ready_at or 0) <= record.switched_at
    [(agent, module, mode, target)] = w.installer.routes
    assert (agent, module, mode) == (A1, "counter", "offload") and target in w.fog_replicas()
    assert w.pipeline(A1)["route"] == f"offload:{target}" and w.pipeline(A1)["saturated"]
    assert w.pipeline(A2)["route"] == "local" and not w.pipeline(A2)["saturated"]
    assert w.store.migrations() == [record]
    # The gateway route did not move: it is the offload target.
    route = w.manager.routes.get("counter")
    assert route is not None and {e.node for e in route.endpoints} == {FOG}


def test_the_site_returns_after_the_dwell_once_canaries_meet_the_slo() -> None:
    w = world()
    to_fog = slow_site_moves(w)
    target = w.installer.routes[-1][3]
    moved_at = w.clock.now

    # Offloaded, the site meets the SLO; the agent is still slow: it stays on fog.
    for _ in range(30):
        w.events(A1, 5.0, route=f"offload:{target}")
        w.events(A2, 3.0)
        assert not w.round()
    assert (A1 in {n for _, n in w.canary.calls}) and w.pipeline(A1)["saturated"]

    # The agent recovers: the canaries lift the mark; after the dwell the site returns.
    w.canary.ms[A1] = [2.0]
    returned: list[MigrationRecord] = []
    for _ in range(60):
        w.events(A1, 5.0, route=f"offload:{target}")
        returned += w.round(0.3)
        if returned:
            break
    [back] = returned
    assert back.status == "done" and back.site == "s1"
    assert (back.from_node, back.to_node, back.to_tier) == (FOG, A1, "edge")
    assert w.clock.now - moved_at >= DWELL_S
    assert w.installer.routes[-1] == (A1, "counter", "local", None)
    assert w.pipeline(A1)["route"] == "local" and not w.pipeline(A1)["saturated"]
    assert [m.id for m in w.store.migrations()] == [back.id, to_fog.id]


def _until_moved(w: World, route: str, ms: float, *, rounds: int = 200) -> MigrationRecord:
    """Rounds of 0.3 s with ``A1``'s events at ``ms`` on ``route`` until it moves."""
    for _ in range(rounds):
        w.events(A1, ms, route=route)
        w.events(A2, 3.0)
        if moved := w.round(0.3):
            [record] = moved
            return record
    raise AssertionError(f"s1 did not move from {route}")


def test_a_site_that_misses_again_soon_after_returning_stays_away_twice_as_long() -> None:
    w = world()
    slow_site_moves(w)
    away = f"offload:{w.installer.routes[-1][3]}"
    w.canary.ms[A1] = [2.0]
    back = _until_moved(w, away, 5.0)
    assert back.to_node == A1 and w.pipeline(A1)["relapses"] == 0

    # Slow again soon after returning: a relapse; the next stay away is 2 dwells.
    w.canary.ms[A1] = [80.0]
    again = _until_moved(w, "local", 60.0)
    left_at = w.clock.now
    assert again.to_node == FOG and w.pipeline(A1)["relapses"] == 1
    w.canary.ms[A1] = [2.0]
    back = _until_moved(w, f"offload:{w.installer.routes[-1][3]}", 5.0)
    assert back.to_node == A1 and 2 * DWELL_S <= w.clock.now - left_at < 2 * DWELL_S + 2.0

    # A long stint at home forgives: the next departure holds one dwell again.
    for _ in range(int(4 * DWELL_S / 0.5) + 1):
        w.events(A1, 3.0)
        w.events(A2, 3.0)
        assert not w.round()
    w.canary.ms[A1] = [80.0]
    _until_moved(w, "local", 60.0)
    assert w.pipeline(A1)["relapses"] == 0
    left_at = w.clock.now
    w.canary.ms[A1] = [2.0]
    _until_moved(w, f"offload:{w.installer.routes[-1][3]}", 5.0)
    assert DWELL_S <= w.clock.now - left_at < DWELL_S + 2.0


def test_a_remote_site_whose_replica_falls_silent_goes_back_to_its_agent() -> None:
    w = world()
    camera = PipelineSource("s1", "mesh/v1/sensors/s1/camera", "counts")
    w.controller.track_pipelines(
        "counter", {A1: "s1", A2: "s2"}, rate_per_s=10.0, sources={A1: camera}
    )
    record = slow_site_moves(w)
    [(_, _, mode, replica)] = w.installer.routes
    assert record.to_node == FOG and mode == "remote"

    # The replica answers: it keeps the site, the agent still slow.
    for _ in range(20):
        w.events(A1, 5.0, route=f"remote:{replica}")
        w.events(A2, 3.0)
        assert not w.round()
    # It falls silent (its node going, its link cut): the agent takes its frames back.
    silent_from = w.clock.now
    moves: list[MigrationRecord] = []
    for _ in range(20):
        w.events(A2, 3.0)
        if moves := w.round():
            break
    [back] = moves
    assert back.to_node == A1 and w.installer.routes[-1][2] == "local"
    assert 2.0 <= w.clock.now - silent_from <= 3.0
    assert f"replica {replica} on {FOG} answered 0 frame(s) in 2 s" in back.reason


def test_noisy_latency_does_not_flap() -> None:
    rng = random.Random(7)
    w = world()

    # Jitter under the SLO (a rare spike stays under the p95): nothing moves.
    for _ in range(40):
        w.events(A1, [rng.choice([3.0] * 99 + [40.0]) for _ in range(10)])
        w.events(A2, [rng.uniform(2.0, 15.0) for _ in range(10)])
        assert not w.round()

    # Around the SLO: one move, then the noisy canaries keep the agent marked.
    w.canary.ms[A1] = [rng.uniform(2.0, 40.0) for _ in range(20)]
    moves: list[MigrationRecord] = []
    for _ in range(200):
        route = w.pipeline(A1)["route"]
        w.events(A1, [rng.uniform(5.0, 25.0) for _ in range(10)], route=route)
        w.events(A2, [rng.uniform(2.0, 15.0) for _ in range(10)])
        moves += w.round()
    assert [(m.site, m.to_node) for m in moves] == [("s1", FOG)]
    assert w.pipeline(A2)["route"] == "local"


def test_a_failed_route_switch_is_recorded_and_nothing_changes() -> None:
    w = world()
    w.installer.fail = "agent cam-1 did not report epoch 2"
    record = slow_site_moves(w)
    assert record.status == "failed" and "did not report epoch 2" in (record.error or "")
    assert record.switched_at is None and record.to_node == FOG
    assert w.store.migrations()[0].status == "failed"
    assert w.installer.routes == [] and w.pipeline(A1)["route"] == "local"
    assert w.pipeline(A2)["route"] == "local"
    # The next attempt waits a window, then succeeds once the agent answers.
    w.installer.fail = None
    w.events(A1, 60.0)
    assert not w.round(0.5)
    w.events(A1, 60.0)
    [retry] = w.round(2.0)
    assert retry.status == "done" and w.pipeline(A1)["route"].startswith("offload:")


def test_a_gone_replica_sends_the_site_to_the_module_s_new_node() -> None:
    w = world(default_rtt_ms={"edge": 2.0, "fog": 5.0, "cloud": 8.0})
    slow_site_moves(w)
    w.controller.pin("counter", tier="cloud")  # the gateway route moves: fog replicas stop
    gateway, pipeline = w.round()
    assert (gateway.site, gateway.to_node) == ("gateway", CLOUD)
    assert pipeline.site == "s1" and "is gone" in pipeline.reason and pipeline.to_node == CLOUD
    agent, _, mode, target = w.installer.routes[-1]
    route = w.manager.routes.get("counter")
    assert route is not None
    assert target in {e.replica_id for e in route.endpoints if isinstance(e, ReplicaEndpoint)}
    assert (agent, mode) == (A1, "offload")


def test_a_redeploy_moves_an_offloaded_site_to_the_new_replica_before_the_old_stops() -> None:
    w = world()
    slow_site_moves(w)
    [old] = w.fog_replicas()
    stopped_with_site_on: list[str | None] = []
    launcher = w.manager._launcher
    assert isinstance(launcher, FakeLauncher)
    for handle in launcher.handles:
        real_stop = handle.stop

        def stop(real_stop: Any = real_stop) -> None:
            stopped_with_site_on.append(w.installer.routes[-1][3])
            real_stop()

        handle.stop = stop  # type: ignore[method-assign]
    w.manager.deploy(spec(), artifact("v2"), tier="fog")  # make-before-break
    [new] = w.fog_replicas()
    assert new != old and "v2" in new
    agent, module, mode, target = w.installer.routes[-1]
    assert (agent, module, mode, target) == (A1, "counter", "offload", new)
    assert stopped_with_site_on == [new]  # the site had moved before the old replica stopped
    [record] = [r for r in w.store.migrations() if "replaced" in r.reason]
    assert record.status == "done" and (record.from_node, record.to_node) == (FOG, FOG)
    assert record.reason == f"counter@s1: replica {old} replaced by {new}"
    assert w.pipeline(A1)["route"] == f"offload:{new}"
    assert w.pipeline(A2)["route"] == "local"  # a local site is not touched
    assert not w.round()  # nothing gone: no re-plan


def test_the_deployment_serving_an_offloaded_site_stays_on_an_overloaded_node() -> None:
    nodes = FakeNodes()
    w = world(node_probe=nodes)
    slow_site_moves(w)
    nodes.busy[FOG] = 99.0  # the engine alone would move the gateway route off fog
    assert not [r for r in w.round() if r.site == "gateway"]
    route = w.manager.routes.get("counter")
    assert route is not None and {e.node for e in route.endpoints} == {FOG}

    # Once no site is offloaded there, the overloaded node is left.
    w.installer.routes.clear()
    w.controller.track_pipelines("counter", {A2: "s2"}, rate_per_s=10.0)
    assert [r.to_node for r in w.round(6.0) if r.site == "gateway"] == [CLOUD]


# ---------------------------------------------------------------- after a restart


def report_route(agents: AgentRegistry, agent: str, mode: str, epoch: int) -> None:
    """``agent`` reports (retained observed state) that its pipelines run counter ``mode``."""
    observed = ObservedState(
        agent=agent,
        version=epoch + 1,
        installed=[
            InstalledModule(name="counter", version="v1", route_mode=mode, route_epoch=epoch)
        ],
    )
    topic = Topics().observed(agent)
    assert agents.handle_agent(agent, "observed", topic, observed.model_dump_json().encode())


def sites(w: World) -> set[tuple[str, str, float, str]]:
    return {
        (p["agent"], p["site"], p["rate_per_s"], p["route"])
        for p in w.controller.describe()["pipelines"]
    }


def test_tracked_pipelines_survive_a_restart(tmp_path: Path) -> None:
    before = world(store=PlacementStore(tmp_path / "mesh.db"))
    [recorded] = before.store.pipelines()
    assert (recorded.module, dict(recorded.sites), recorded.rate_per_s) == (
        "counter",
        {A1: "s1", A2: "s2"},
        10.0,
    )
    before.store.close()

    after = world(store=PlacementStore(tmp_path / "mesh.db"), fresh=False)
    assert sites(after) == set()
    assert after.controller.restore(Registryless(after.manager)) == ["counter"]
    # The declared rate (not the default of 1/s) and the sites came back from the store.
    assert sites(after) == {(A1, "s1", 10.0, "local"), (A2, "s2", 10.0, "local")}
    assert not after.round(0.0)
    # ... and they are placed again: the slow site offloads to the restored fog replica.
    record = slow_site_moves(after)
    assert (record.site, record.from_node, record.to_node) == ("s1", A1, FOG)
    assert after.installer.routes[-1][3] in after.fog_replicas()


def test_untracked_pipelines_are_forgotten_by_the_store() -> None:
    w = world()
    assert [r.module for r in w.store.pipelines()] == ["counter"]
    assert w.controller.untrack_pipelines("counter")
    assert w.store.pipelines() == []
    after = world(store=w.store, fresh=False)
    after.controller.restore(Registryless(after.manager))
    assert sites(after) == set()
    # A declaration that failed validation was never recorded.
    with pytest.raises(ValueError, match="at least one"):
        w.controller.track_pipelines("counter", {})
    assert w.store.pipelines() == []


def test_a_bad_recorded_entry_is_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    w = world()
    w.store.put_pipelines(PipelineRecord("broken", {A1: ""}, 1.0))
    w.store.put_pipelines(PipelineRecord("negative", {A2: "s2"}, -3.0))
    after = world(store=w.store, fresh=False)
    with caplog.at_level(logging.ERROR, logger="mesh.control._pipelines"):
        assert after.controller.restore(Registryless(after.manager)) == ["counter"]
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("could not restore broken pipelines") for m in failed), failed
    assert any(m.startswith("could not restore negative pipelines") for m in failed), failed
    assert after.controller.describe()["pipelines"] != []
    assert {p["module"] for p in after.controller.describe()["pipelines"]} == {"counter"}
    # The bad entries stay recorded until they are untracked.
    assert [r.module for r in after.store.pipelines()] == ["broken", "counter", "negative"]
    assert after.controller.untrack_pipelines("broken")
    assert [r.module for r in after.store.pipelines()] == ["counter", "negative"]


def test_a_restored_site_starts_on_the_route_its_agent_reports() -> None:
    w = world()
    agents = AgentRegistry()
    after = world(store=w.store, agents=agents, fresh=False)
    report_route(agents, A2, "local", 0)
    after.controller.restore(Registryless(after.manager))
    # A1 has not reported yet: taken as local, nothing moves.
    assert not after.round(0.0)
    assert sites(after) == {(A1, "s1", 10.0, "local"), (A2, "s2", 10.0, "local")}

    # A1 reports the offload route it was switched to before the restart (its
    # target replica is gone with the old control plane): it is re-planned at once.
    report_route(agents, A1, "offload", 3)
    [record] = after.round()
    assert record.status == "done" and record.site == "s1"
    assert "offloads to a replica not known here" in record.reason
    assert record.from_node == "(unknown)"
    [(agent, module, mode, target)] = after.installer.routes
    assert (agent, module) == (A1, "counter")
    # Its agent is not saturated and is the cheapest node: the site comes home.
    assert (mode, target, record.to_node) == ("local", None, A1)
    assert after.pipeline(A1)["route"] == "local"
    assert after.pipeline(A2)["route"] == "local"
    # Known now: the next rounds leave both sites where they are.
    assert not after.round() and not after.round()
