"""Migrations as persisted state machines, stepped round by round with fakes.

A gated deployer (behind :class:`ModuleDeployer`) holds each move at a phase
until the test opens the next gate, so every step is observed: the round
returns at once, the phase is in the store, agents are re-pointed before the
drain, and a crash mid-phase is resumed or rolled back with nothing orphaned.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from mesh.control._migrations import MigrationBusyError, MigrationExecutor, Target, spawn_thread
from mesh.control._store import (
    _SCHEMA,
    PHASES,
    DeploymentRecord,
    MigrationRecord,
    PlacementStore,
)
from mesh.core._sqlite import Schema, open_sqlite
from mesh.sdk._specs import ModuleSpec
from mesh.serving._contract import DeployError
from mesh.serving._manager import DeploymentView, ModelArtifact, PhaseHook
from mesh.serving._routes import AgentEndpoint, ModuleRoute, ReplicaEndpoint, RouteTable
from tests.support.serving import wait_until
from tests.unit import test_placement_controller_pipelines as pipelines
from tests.unit.test_gateway_serving import FakeLauncher, artifact, spec
from tests.unit.test_placement_controller import AGENT, FOG, World, world

WAIT_S = 30.0  # a generous bound on a worker reaching a gate; never a timing assertion


class Gate:
    """Where a worker stops until the test opens it, and says it got there."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.reached = threading.Event()

    def pass_through(self) -> None:
        self.reached.set()
        assert self.opened.wait(WAIT_S), "the test never opened the gate"


@dataclass
class GatedDeployer:
    """A :class:`ModuleDeployer` whose moves stop at gates: start, switch, drain."""

    views: dict[str, DeploymentView]
    routes: RouteTable = field(default_factory=RouteTable)
    gates: dict[str, dict[str, Gate]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    fail: str | None = None

    def gate(self, module: str, name: str) -> Gate:
        return self.gates.setdefault(module, {}).setdefault(name, Gate())

    def open(self, module: str, name: str) -> None:
        self.gate(module, name).opened.set()

    def deployments(self) -> list[DeploymentView]:
        return [self.views[m] for m in sorted(self.views)]

    def deploy(
        self,
        spec: ModuleSpec,
        version: Any = "production",
        *,
        tier: str | None = None,
        site: str | None = None,
        on_phase: PhaseHook | None = None,
        node: str | None = None,
    ) -> ModuleRoute:
        assert isinstance(version, ModelArtifact) and tier is not None and node is not None
        replica = f"{spec.name}-{version.version}-{len(self.started)}"
        self.started.append(replica)
        self.gate(spec.name, "start").pass_through()
        if self.fail:
            self.stopped.append(replica)  # as the manager does: a failed start leaves nothing
            raise DeployError(self.fail)
        return self._switch(
            spec,
            version,
            tier,
            node,
            [ReplicaEndpoint(replica, node, "127.0.0.1", 9000, version.version)],
            on_phase,
        )

    def deploy_to_agent(
        self,
        spec: ModuleSpec,
        agent_id: str,
        version: Any = "production",
        *,
        timeout_s: float = 60.0,
        on_phase: PhaseHook | None = None,
    ) -> ModuleRoute:
        assert isinstance(version, ModelArtifact)
        self.gate(spec.name, "start").pass_through()
        endpoints = [AgentEndpoint(agent_id, version.version)]
        return self._switch(spec, version, "edge", agent_id, endpoints, on_phase, agent=agent_id)

    def _switch(
        self,
        spec: ModuleSpec,
        version: ModelArtifact,
        tier: str,
        node: str,
        endpoints: list[Any],
        on_phase: PhaseHook | None,
        agent: str | None = None,
    ) -> ModuleRoute:
        assert on_phase is not None
        on_phase("ready")
        self.gate(spec.name, "switch").pass_through()
        route = self.routes.set(spec.name, version.version, endpoints, tier=tier)
        self.views[spec.name] = DeploymentView(spec, version, tier, None, agent, (node,))
        self.events.append(f"switched {spec.name}")
        on_phase("switched")
        self.gate(spec.name, "drain").pass_through()
        self.events.append(f"drained {spec.name}")
        on_phase("drained")
        on_phase("removed")
        return route


@dataclass
class Router:
    """A :class:`PipelineRouter` that notes each call among the deployer's events."""

    events: list[str]
    calls: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    def set_route(
        self,
        agent_id: str,
        module: str,
        route_mode: str,
        target: str | None,
        timeout_s: float,
        *,
        source: Any = None,
    ) -> int:
        self.events.append(f"route {agent_id} {route_mode}")
        self.calls.append((agent_id, module, route_mode, target))
        return len(self.calls)


def on_agent(name: str = "counter") -> DeploymentView:
    return DeploymentView(spec(name=name), artifact("v1"), "edge", None, AGENT, (AGENT,))


def plane(path: str = ":memory:", *modules: str) -> tuple[GatedDeployer, Router, PlacementStore]:
    deployer = GatedDeployer({m: on_agent(m) for m in modules or ("counter",)})
    store = PlacementStore(path)
    for name in modules or ("counter",):
        store.put_deployment(
            DeploymentRecord(name, spec(name=name).model_dump_json(), "v1", "edge", None, AGENT)
        )
    return deployer, Router(deployer.events), store


def status(store: PlacementStore, record: MigrationRecord) -> str:
    [now] = [r for r in store.migrations() if r.id == record.id]
    return now.status


def reached(deployer: GatedDeployer, module: str, name: str) -> None:
    assert deployer.gate(module, name).reached.wait(WAIT_S), f"{module} never reached {name}"


TO_FOG = Target(FOG, "fog", "fog-0", "ray")


# ---------------------------------------------------------------- stepping one migration


def test_each_round_returns_at_once_and_the_phases_advance_in_the_store() -> None:
    deployer, router, store = plane()
    executor = MigrationExecutor(deployer, store, installer=router)

    record = executor.start("counter", TO_FOG, site="s1", reason="slo")
    assert record.status == "planned" and status(store, record) == "planned"
    assert executor.advance() == []  # returns while the target has not even started
    reached(deployer, "counter", "start")
    assert status(store, record) == "starting" and executor.busy("counter")
    with pytest.raises(MigrationBusyError, match="starting"):
        executor.start("counter", TO_FOG, site="s1", reason="again")

    deployer.open("counter", "start")
    reached(deployer, "counter", "switch")
    assert executor.advance() == [] and status(store, record) == "ready"
    assert store.deployment("counter").agent == AGENT  # type: ignore[union-attr]

    deployer.open("counter", "switch")
    reached(deployer, "counter", "drain")
    assert executor.advance() == [] and status(store, record) == "draining"
    moved = store.deployment("counter")
    assert moved is not None and (moved.tier, moved.agent) == ("fog", None)
    # The agent's pipelines follow the switch before the source drains.
    assert router.calls == [(AGENT, "counter", "offload", "counter-v1-0")]
    assert deployer.events == ["switched counter", f"route {AGENT} offload"]

    deployer.open("counter", "drain")
    assert executor.wait("counter", WAIT_S)
    [done] = executor.advance()
    assert done.id == record.id and done.status == "done" and not executor.busy("counter")
    assert deployer.events[-1] == "drained counter"
    stamps = [done.decided_at, done.started_at, done.ready_at, done.switched_at]
    stamps += [done.drained_at, done.removed_at, done.finished_at]
    assert None not in stamps and stamps == sorted(stamps)  # type: ignore[type-var]
    assert status(store, record) == "done" and executor.advance() == []


def test_modules_migrate_in_parallel_one_migration_each() -> None:
    deployer, router, store = plane(":memory:", "counter", "detector")
    executor = MigrationExecutor(deployer, store, installer=router)
    first = executor.start("counter", TO_FOG, site="s1", reason="slo")
    second = executor.start("detector", TO_FOG, site="s1", reason="slo")
    executor.advance()
    reached(deployer, "counter", "start")
    reached(deployer, "detector", "start")  # both under way at once
    assert {r.id for r in executor.running()} == {first.id, second.id}
    for name in ("start", "switch", "drain"):
        deployer.open("detector", name)
    assert executor.wait("detector", WAIT_S)
    [ended] = executor.advance()
    assert ended.module == "detector" and ended.status == "done"
    assert status(store, first) == "starting" and executor.busy("counter")
    for name in ("start", "switch", "drain"):
        deployer.open("counter", name)
    assert executor.wait("counter", WAIT_S)
    assert [r.module for r in executor.advance()] == ["counter"]


def test_a_target_that_fails_to_start_leaves_the_source_and_nothing_running() -> None:
    deployer, router, store = plane()
    deployer.fail = "no room on fog"
    executor = MigrationExecutor(deployer, store, installer=router)
    record = executor.start("counter", TO_FOG, site="s1", reason="slo")
    executor.advance()
    deployer.open("counter", "start")
    assert executor.wait("counter", WAIT_S)
    [failed] = executor.advance()
    assert failed.status == "failed" and "no room on fog" in (failed.error or "")
    assert failed.finished_at is not None and failed.switched_at is None
    assert deployer.started == deployer.stopped and router.calls == []
    assert store.deployment("counter").agent == AGENT  # type: ignore[union-attr]
    assert status(store, record) == "failed"


# ---------------------------------------------------------------- a crash mid-phase


def crash_at(tmp_path: Path, gate: str) -> tuple[MigrationRecord, GatedDeployer, Path]:
    """Run a migration up to ``gate`` in a 'process' whose store then dies; returns its record."""
    path = tmp_path / "mesh.db"
    deployer, router, store = plane(str(path))
    executor = MigrationExecutor(deployer, store, installer=router)
    record = executor.start("counter", TO_FOG, site="s1", reason="slo")
    executor.advance()
    for name in ("start", "switch", "drain"):
        reached(deployer, "counter", name)
        if name == gate:
            break
        deployer.open("counter", name)
    store.close()  # the process dies: nothing more of it reaches the file
    for name in ("start", "switch", "drain"):
        deployer.open("counter", name)  # let its worker thread end (its writes fail)
    executor.wait("counter", WAIT_S)
    return record, deployer, path


def restarted(path: Path) -> tuple[MigrationExecutor, PlacementStore, GatedDeployer]:
    store = PlacementStore(path)
    deployer = GatedDeployer({})
    return MigrationExecutor(deployer, store), store, deployer


@pytest.mark.parametrize("gate", ["start", "switch"])
def test_a_crash_before_the_switch_is_rolled_back_to_the_source(tmp_path: Path, gate: str) -> None:
    record, _, path = crash_at(tmp_path, gate)
    executor, store, deployer = restarted(path)
    [left] = store.unfinished_migrations()
    assert left.id == record.id and left.status == ("starting" if gate == "start" else "ready")
    [ended] = executor.recover(alive=lambda node: True)
    assert ended.status == "rolled_back" and "before the switch" in (ended.error or "")
    assert store.unfinished_migrations() == [] and status(store, record) == "rolled_back"
    # The restore reads the source: nothing is started at the target.
    dep = store.deployment("counter")
    assert dep is not None and (dep.tier, dep.agent) == ("edge", AGENT)
    assert deployer.started == [] and executor.recover(alive=lambda node: True) == []


def test_a_crash_after_the_switch_is_resumed_when_the_target_answers(tmp_path: Path) -> None:
    record, _, path = crash_at(tmp_path, "drain")
    executor, store, _ = restarted(path)
    [ended] = executor.recover(alive=lambda node: node == FOG)
    assert ended.id == record.id and ended.status == "done" and ended.finished_at is not None
    dep = store.deployment("counter")
    assert dep is not None and (dep.tier, dep.agent) == ("fog", None)


def test_a_crash_after_the_switch_is_rolled_back_when_the_target_is_gone(tmp_path: Path) -> None:
    record, _, path = crash_at(tmp_path, "drain")
    executor, store, _ = restarted(path)
    [ended] = executor.recover(alive=lambda node: node == AGENT)
    assert ended.status == "rolled_back" and FOG in (ended.error or "")
    assert status(store, record) == "rolled_back"
    dep = store.deployment("counter")
    assert dep is not None and (dep.tier, dep.agent) == ("edge", AGENT)


def test_rows_from_before_phases_are_read_and_resolved(tmp_path: Path) -> None:
    path = str(tmp_path / "mesh.db")
    old = open_sqlite(path, Schema("placements", _SCHEMA.create))  # version 1 tables
    columns = "id, module, site, from_node, to_node, from_tier, to_tier, reason, explanation"
    for id_, switched in (("a", None), ("b", 5.0), ("c", None)):
        old.execute(
            f"INSERT INTO placement_migrations ({columns}, status, decided_at, switched_at) "
            "VALUES (?, 'm', 's', 'x', 'y', 'edge', 'fog', 'r', '', ?, 1.0, ?)",
            (id_, "done" if id_ == "c" else "running", switched),
        )
    old.close()
    store = PlacementStore(path)
    assert {r.id: r.status for r in store.migrations()} == {
        "a": "running",
        "b": "running",
        "c": "done",
    }
    assert store.migrations()[0].kind == "module"
    resolved = MigrationExecutor(GatedDeployer({}), store).recover(alive=lambda node: True)
    assert {r.id: r.status for r in resolved} == {"a": "rolled_back", "b": "done"}
    with sqlite3.connect(path) as db:
        [(version,)] = db.execute("SELECT version FROM schema_versions WHERE store='placements'")
    assert version == _SCHEMA.version == 3


# ---------------------------------------------------------------- the reconcile round


def slow_world() -> tuple[World, FakeLauncher]:
    """The controller's world with a threaded executor and replicas that start when told."""
    w = world()
    w.controller.executor = MigrationExecutor(
        w.manager, w.store, requests=w.monitors, installer=w.installer
    )
    launcher: Any = w.manager._launcher
    launcher.polls_until_ready = 10**9
    return w, launcher


def test_the_round_returns_while_a_replica_starts_and_a_later_round_ends_the_move() -> None:
    w, launcher = slow_world()
    w.controller.step()
    w.controller.pin("counter", node=FOG)
    w.advance(1.0)
    first = w.controller.step()
    assert first.migrations == ()  # the replica has not started: the round did not wait
    wait_until(lambda: bool(launcher.handles), WAIT_S, "the target replica launched")
    [running] = w.controller.executor.running()
    assert running.status in ("starting", "planned") and w.served_on() == AGENT
    w.advance(1.0)
    assert w.controller.step().migrations == ()  # busy: no second migration of counter
    assert len(launcher.handles) == 1
    for handle in launcher.handles:
        handle.polls_until_ready = 0  # it serves now
    assert w.controller.executor.wait("counter", WAIT_S)
    w.advance(1.0)
    [done] = w.controller.step().migrations
    assert done.status == "done" and done.to_node == FOG and w.served_on() == FOG
    assert w.controller.describe()["running"] == []
    w.controller.close(migrations_timeout_s=WAIT_S)


def test_the_first_round_resolves_migrations_a_crash_left() -> None:
    w = world()
    left = MigrationRecord(
        "crashed1", "counter", "s1", AGENT, FOG, "edge", "fog", "slo", "", status="ready"
    )
    w.store.put_migration(left)
    first = w.controller.step()
    assert "migration crashed1 of counter rolled back after a restart" in first.triggers
    [ended] = w.store.migrations()
    assert ended.status == "rolled_back" and w.store.unfinished_migrations() == []
    w.store.put_migration(replace(left, id="crashed2"))
    w.advance(1.0)
    w.controller.step()  # once only: later records are this process's own
    assert [r.id for r in w.store.unfinished_migrations()] == ["crashed2"]


def test_a_pipeline_route_waits_for_its_agent_on_a_worker_not_in_the_round() -> None:
    w = pipelines.world(spawn=spawn_thread)
    gate = Gate()
    acknowledge = w.installer.set_route

    def set_route(*args: Any, **kwargs: Any) -> int:
        gate.pass_through()  # the agent has not acknowledged yet
        return acknowledge(*args, **kwargs)

    w.installer.set_route = set_route  # type: ignore[method-assign]
    planned = pipelines.slow_site_moves(w)  # the round returned while the agent waits
    assert planned.kind == "pipeline" and planned.status == "planned"
    assert gate.reached.wait(WAIT_S) and w.controller.executor.routing("counter", "s1")
    assert w.round() == [] and w.pipeline(pipelines.A1)["route"] == "local"  # one at a time
    gate.opened.set()
    wait_until(lambda: not w.controller.executor.routing("counter", "s1"), WAIT_S, "the switch")
    [(agent, _, mode, target)] = w.installer.routes
    assert (agent, mode) == (pipelines.A1, "offload")
    assert w.pipeline(pipelines.A1)["route"] == f"offload:{target}"
    assert [r.status for r in w.store.migrations()] == ["done"]


def test_counts_show_every_phase_under_way_and_ended() -> None:
    deployer, router, store = plane()
    executor = MigrationExecutor(deployer, store, installer=router)
    assert set(executor.counts()) == set(PHASES) and not any(executor.counts().values())
    executor.start("counter", TO_FOG, site="s1", reason="slo")
    assert executor.counts()["planned"] == 1
    executor.advance()
    reached(deployer, "counter", "start")
    assert executor.counts()["starting"] == 1
    for name in ("start", "switch", "drain"):
        deployer.open("counter", name)
    assert executor.wait("counter", WAIT_S)
    assert executor.counts() == dict.fromkeys(PHASES, 0) | {"done": 1}


def test_a_broken_worker_still_ends_its_migration() -> None:
    deployer, router, store = plane()

    class Broken:
        def requests_since(self, module: str, t0: float) -> tuple[int, int, float]:
            raise RuntimeError("monitors broke")

    executor = MigrationExecutor(deployer, store, installer=router, requests=Broken())
    executor.start("counter", TO_FOG, site="s1", reason="slo")
    executor.advance()
    for name in ("start", "switch", "drain"):
        deployer.open("counter", name)
    assert executor.wait("counter", WAIT_S)
    [ended] = executor.advance()
    assert ended.status == "failed" and "monitors broke" in (ended.error or "")
    assert not executor.busy("counter") and store.unfinished_migrations() == []
