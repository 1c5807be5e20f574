"""One source of where a module runs: the store's record, which the route and the controller follow.

The invariant, read from all three: after a deploy, a migration, an adoption
or a crash at the route switch, the store's record, the route table and the
controller (``describe``) name the same agent or node, and a serving manager
that strayed from the record is brought back to it. The real
:class:`ServingManager` on the fakes of ``test_gateway_serving``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from mesh.control._migration_recovery import recover_migrations
from mesh.control._migrations import Target
from mesh.control._store import DeploymentRecord, PlacementStore
from mesh.serving._deployment import DeploymentView
from mesh.serving._manager import ServingManager
from mesh.serving._routes import ModuleRoute, RouteTable
from tests.unit.test_gateway_serving import (
    FakeLauncher,
    FakeProbe,
    Registryless,
    artifact,
    manager,
    spec,
)
from tests.unit.test_placement_controller import (
    AGENT,
    CLOUD,
    FOG,
    Installer,
    World,
    recorded,
    world,
)


def three_agree(w: World) -> str:
    """The record, the route and the controller name one place; returns it."""
    [row] = w.store.deployments()
    route = w.manager.routes.get("counter")
    assert route is not None
    [module] = w.controller.describe()["modules"]
    assert row.where == route.endpoints[0].node == module["node"], (row, route, module)
    assert row.version == route.version == module["version"]
    assert module["epoch"] == row.epoch
    return route.endpoints[0].node


def test_the_record_is_written_before_each_route_switch_and_counts_moves() -> None:
    w = recorded()
    seen: list[tuple[str | None, str | None, str | None]] = []

    def at_switch(old: ModuleRoute | None, new: ModuleRoute | None) -> None:
        # What a kill -9 at the switch would leave on disk.
        assert new is not None
        row = w.store.deployment("counter")
        running = w.controller.executor.running()
        seen.append(
            (
                row.where if row else None,
                new.endpoints[0].node,
                running[0].status if running else None,
            )
        )

    w.manager.routes.on_change(at_switch)
    w.manager.deploy_to_agent(spec(), AGENT, artifact("v2"))
    w.controller.executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason=""
    )
    w.controller.executor.migrate(
        "counter", Target(AGENT, "edge", "s1", "agent"), site="s1", reason=""
    )
    # Each switch found the record naming the new place, and a migration's phase switched.
    assert seen == [(AGENT, AGENT, None), (FOG, FOG, "switched"), (AGENT, AGENT, "switched")]
    w.controller.step()
    assert three_agree(w) == AGENT
    [row] = w.store.deployments()
    assert row.epoch == 3 and row.version == "v2"  # the agent, the fog node, the agent again


class Recorder:
    """A :class:`PlacementRecorder` that notes the route's epoch each time it is told."""

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes
        self.told: list[tuple[str, tuple[str, ...], int]] = []

    def record_placement(self, view: DeploymentView) -> None:
        route = self.routes.get(view.spec.name)
        self.told.append(("record", view.nodes, route.epoch if route else 0))

    def forget_placement(self, module: str) -> None:
        route = self.routes.get(module)
        self.told.append(("forget", (), route.epoch if route else 0))


def test_the_manager_tells_its_recorder_before_every_switch_and_removal() -> None:
    launcher, probe = FakeLauncher(), FakeProbe()
    m = manager(launcher, probe, unhealthy_after=1)
    recorder = Recorder(m.routes)
    m.record_placements(recorder)
    m.deploy(spec(), artifact("v1"))  # epoch 1
    first = launcher.handles[0]
    probe.down.add(first.port)
    first.dead = True
    m.tick()  # lost: out of the route (epoch 2), a replacement asked for
    m.tick()  # the replacement serves (epoch 3)
    m.undeploy("counter")
    m.close()  # nothing left to forget; a shutdown forgets nothing anyway
    # Each was told while the route still had the epoch before its switch.
    assert recorder.told == [
        ("record", ("node-fog",), 0),
        ("record", (), 1),
        ("record", ("node-fog",), 2),
        ("forget", (), 3),
    ]


def test_a_shutdown_forgets_no_record() -> None:
    m = manager(FakeLauncher())
    recorder = Recorder(m.routes)
    m.record_placements(recorder)
    m.deploy(spec(), artifact("v1"))
    m.close()
    assert [t[0] for t in recorder.told] == ["record"]


def test_a_crash_at_the_route_switch_restarts_where_the_record_and_the_migration_say(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mesh.db"
    w = recorded(store_path=str(path))
    w.controller.step()
    crashed = tmp_path / "crashed.db"

    def crash(old: ModuleRoute | None, new: ModuleRoute | None) -> None:
        with sqlite3.connect(path) as live, sqlite3.connect(crashed) as copy:
            live.backup(copy)  # the disk as a kill -9 at this switch leaves it

    w.manager.routes.on_change(crash)
    w.controller.executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason=""
    )

    store = PlacementStore(crashed)
    [resolved] = recover_migrations(store, alive=lambda node: True)
    [row] = store.deployments()
    # The route had switched to the fog node: the migration ends done, and the
    # record (what the restart serves) names the fog node, not the agent.
    assert (resolved.status, resolved.to_node) == ("done", FOG)
    assert (row.tier, row.agent, row.node) == ("fog", None, FOG)
    # The restart: a controller on the crashed store restores it on a fresh manager.
    fresh = ServingManager(RouteTable(), FakeLauncher(), probe=FakeProbe(), installer=Installer())
    again = world(store_path=str(crashed))
    assert again.controller.restore(Registryless(fresh)) == ["counter"]
    route = fresh.routes.get("counter")
    assert route is not None and route.endpoints[0].node == FOG


def test_a_manager_that_strayed_from_the_record_is_moved_back_to_it() -> None:
    w = recorded()
    w.controller.executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason=""
    )
    w.controller.step()
    assert three_agree(w) == FOG
    # The record names the agent again (as a migration's roll-back writes it); the manager
    # still serves on the fog node.
    [row] = w.store.deployments()
    w.store.put_deployment(replace(row, tier="edge", agent=AGENT, node=None))

    first = w.controller.step()
    assert not first.migrations and w.served_on() == FOG  # once: a switch may be under way
    second = w.controller.step()
    [back] = second.migrations
    assert (back.to_node, back.status) == (AGENT, "done") and "recorded on cam-1" in back.reason
    assert any(t.startswith("off its record: counter") for t in second.triggers)
    w.controller.step()
    assert three_agree(w) == AGENT


def test_a_record_whose_node_is_down_follows_where_the_module_serves() -> None:
    w = recorded()
    w.controller.executor.migrate(
        "counter", Target(FOG, "fog", "fog-0", "ray"), site="s1", reason=""
    )
    [row] = w.store.deployments()
    w.store.put_deployment(replace(row, tier="cloud", node=CLOUD))
    w.nodes.alive[CLOUD] = False
    w.controller.step()
    assert not w.controller.executor.running()
    assert three_agree(w) == FOG


def test_the_recorded_node_is_one_a_replica_serves_on() -> None:
    w = world()
    [view] = w.manager.deployments()
    ray = replace(view, tier="fog", agent=None, nodes=("n2", "n3"), pinned_node="n1")
    w.controller.record_placement(ray)  # pinned to n1, which lost its replica: not n1
    assert w.store.deployments()[0].node == "n2"
    w.controller.record_placement(replace(ray, nodes=("n1", "n3")))  # pinned, and serving there
    assert w.store.deployments()[0].node == "n1"
    w.controller.record_placement(replace(ray, nodes=("n0", "n1")))  # n0 came: n1 stays
    w.controller.record_placement(replace(ray, nodes=(), pinned_node=None))  # none serves
    [row] = w.store.deployments()
    assert (row.node, row.epoch) == ("n1", 2)


def test_a_module_served_with_no_record_is_recorded_and_all_three_agree() -> None:
    w = world()  # deployed before the manager had a recorder: no record
    assert w.store.deployments() == []
    w.controller.step()
    assert three_agree(w) == AGENT


def test_the_store_counts_moves_not_versions_and_reads_rows_from_before_nodes(
    tmp_path: Path,
) -> None:
    store = PlacementStore(":memory:")
    first = DeploymentRecord("m", "{}", "v1", "fog", None, None, node="n1")
    assert store.put_deployment(first).epoch == 1
    assert store.put_deployment(replace(first, version="v2")).epoch == 1
    assert store.put_deployment(replace(first, node="n2")).epoch == 2
    assert store.put_deployment(replace(first, tier="edge", node=None, agent="a")).epoch == 3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a row from before nodes and epochs
        db.executescript(
            "CREATE TABLE placement_deployments (module TEXT PRIMARY KEY, spec_json TEXT NOT "
            "NULL, version TEXT NOT NULL, tier TEXT NOT NULL, site TEXT, agent TEXT, "
            "sources_json TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL);"
            "INSERT INTO placement_deployments VALUES ('m', '{}', 'v1', 'fog', NULL, NULL, "
            "'{}', 1.0);"
        )
    [old] = PlacementStore(path).deployments()
    assert (old.node, old.epoch, old.where) == (None, 0, None)
