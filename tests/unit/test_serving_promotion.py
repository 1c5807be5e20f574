"""A move to the node the warm standby is on promotes it, with fakes behind the Protocols.

The serving manager is the real one; its launcher places replicas on named
nodes, its probe answers per node (tests/unit/test_serving_standby.py's
fakes). A move is a deploy pinned to a node, the way a migration's worker
(:class:`~mesh.control._migrations.MigrationExecutor`) asks for it: when the
standby serves there, no replica starts before the switch, the old primary
drains, and the loop starts a new standby off the new primary's node.
"""

from __future__ import annotations

from typing import Any

from mesh.control._migrations import MigrationExecutor, Target, run_inline
from mesh.control._store import PlacementStore
from mesh.serving._manager import ServingManager
from mesh.serving._routes import ReplicaEndpoint
from tests.unit.test_serving_standby import (
    Launcher,
    Probe,
    artifact,
    current,
    nodes,
    spec,
    standby_manager,
)


def on_fog_0(launcher: Launcher, probe: Probe) -> ServingManager:
    """The module's primary pinned to fog-0, its warm standby on fog-1."""
    m = standby_manager(launcher, probe)
    route = m.deploy(spec(), artifact(), tier="fog", node="fog-0")
    assert nodes(route.endpoints) == ["fog-0"] and nodes(route.standby) == ["fog-1"]
    return m


def test_a_migration_to_the_standby_s_node_promotes_it_and_a_new_standby_follows() -> None:
    launcher, probe = Launcher(), Probe()
    m = on_fog_0(launcher, probe)
    primary, standby = launcher.handles
    executor = MigrationExecutor(m, PlacementStore(":memory:"), spawn=run_inline)
    launched_at: dict[str, int] = {}  # replicas launched when the route first changed
    m.routes.on_change(lambda _old, new: launched_at.setdefault("route", len(launcher.handles)))
    record = executor.migrate("counter", Target("fog-1", "fog", "fog", "ray"), site="s", reason="r")

    assert record.status == "done" and record.to_node == "fog-1", record.error
    assert launched_at["route"] == 2  # no replica started before the switch
    route = current(m)
    [endpoint] = route.endpoints
    assert isinstance(endpoint, ReplicaEndpoint)
    assert endpoint.replica_id == standby.replica_id and endpoint.node == "fog-1"
    assert route.standby == ()  # until the new one serves
    assert primary.stopped.is_set() and not standby.stopped.is_set()
    assert m.deployments()[0].nodes == ("fog-1",) and m.deployments()[0].pinned_node == "fog-1"

    m.tick()  # the loop: a new standby, off the new primary's node
    assert len(launcher.handles) == 3
    fresh = launcher.handles[2]
    assert "fog-1" in fresh.request.avoid_nodes and fresh.node == "fog-0"
    m.tick()
    assert nodes(current(m).standby) == ["fog-0"] and nodes(current(m).endpoints) == ["fog-1"]
    assert sorted(s.state for s in m.status()) == ["serving", "standby"]
    m.close()


def test_the_phases_of_a_promotion_come_in_order_with_nothing_launched() -> None:
    launcher, probe = Launcher(), Probe()
    m = on_fog_0(launcher, probe)
    seen: list[tuple[str, int]] = []
    m.deploy(
        spec(),
        artifact(),
        tier="fog",
        node="fog-1",
        on_phase=lambda phase: seen.append((phase, len(launcher.handles))),
    )
    assert seen == [
        (phase, 2) for phase in ("ready", "switching", "switched", "drained", "removed")
    ]
    m.close()


def cold_start_cases() -> list[tuple[str, dict[str, Any], set[str]]]:
    return [
        ("another version", {"version": artifact("v2")}, set()),
        ("another batching", {"batching": "off"}, set()),
        ("the standby does not answer", {}, {"fog-1"}),
    ]


def test_a_standby_that_does_not_fit_the_move_is_not_promoted() -> None:
    for why, options, gone in cold_start_cases():
        launcher, probe = Launcher(), Probe()
        m = on_fog_0(launcher, probe)
        _primary, standby = launcher.handles
        probe.gone |= gone
        route = m.deploy(
            spec(),
            options.get("version", artifact()),
            tier="fog",
            node="fog-1",
            batching=options.get("batching", "auto"),
        )
        [endpoint] = route.endpoints
        assert isinstance(endpoint, ReplicaEndpoint)
        assert endpoint.replica_id != standby.replica_id, why
        assert len(launcher.handles) >= 3, why  # a replica started for the move
        probe.gone.clear()
        m.close()


def test_a_deploy_without_a_node_or_to_the_primary_s_node_starts_replicas() -> None:
    for node in (None, "fog-0"):
        launcher, probe = Launcher(), Probe()
        m = on_fog_0(launcher, probe)
        _primary, standby = launcher.handles
        route = m.deploy(spec(), artifact(), tier="fog", node=node)
        assert standby.replica_id not in {
            e.replica_id for e in route.endpoints if isinstance(e, ReplicaEndpoint)
        }
        assert len(launcher.handles) >= 3
        m.close()


def test_a_module_of_two_replicas_starts_them_as_before() -> None:
    """A promotion stands in for one replica; a move of two starts both (no half-promotion)."""
    launcher, probe = Launcher(), Probe()
    m = standby_manager(launcher, probe)
    m.deploy(spec(min_replicas=2, max_replicas=2), artifact(), tier="fog", node="fog-0")
    before = len(launcher.handles)
    [standby] = current(m).standby
    route = m.deploy(spec(min_replicas=2, max_replicas=2), artifact(), tier="fog", node="fog-1")
    assert len(route.endpoints) == 2 and len(launcher.handles) >= before + 2
    assert standby.node == "fog-1"
    m.close()
