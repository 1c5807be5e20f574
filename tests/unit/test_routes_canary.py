"""A candidate's endpoints in a route beside production's: the weighted pick and its edges."""

from __future__ import annotations

from collections import Counter

import pytest

from mesh.serving._routes import AgentEndpoint, ModuleRoute, ReplicaEndpoint, RouteTable

V1A = ReplicaEndpoint("m-v1-a", "node-1", "10.0.0.1", 8001, "v1")
V1B = ReplicaEndpoint("m-v1-b", "node-2", "10.0.0.2", 8002, "v1")
V2 = ReplicaEndpoint("m-v2-c", "node-1", "10.0.0.1", 8003, "v2")
SPARE = ReplicaEndpoint("m-v1-s", "node-3", "10.0.0.3", 8004, "v1")


def table_with_canary(share: float) -> tuple[RouteTable, ModuleRoute]:
    table = RouteTable()
    table.set("m", "v1", [V1A, V1B], standby=[SPARE])
    route = table.set_canary("m", [V2], share)
    assert route is not None
    return table, route


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 1 / 3])
def test_the_canary_takes_exactly_its_share_of_picks(share: float) -> None:
    table, route = table_with_canary(share)
    picks = Counter(table.pick(route) for _ in range(1200))
    assert picks[V2] == int(1200 * share)
    assert picks[V1A] + picks[V1B] == 1200 - int(1200 * share)
    assert abs(picks[V1A] - picks[V1B]) <= 1  # production's still share alike


def test_the_least_loaded_canary_endpoint_is_picked() -> None:
    other = ReplicaEndpoint("m-v2-d", "node-2", "10.0.0.2", 8005, "v2")
    table = RouteTable()
    table.set("m", "v1", [V1A])
    route = table.set_canary("m", [V2, other], 0.5)
    assert route is not None
    table.acquire(V2)
    picks = [table.pick(route) for _ in range(20)]
    assert {e for e in picks if e is not None and e.version == "v2"} == {other}


def test_setting_a_canary_is_a_switch_and_the_managers_switches_keep_it() -> None:
    table = RouteTable()
    seen: list[tuple[int, int]] = []
    table.on_change(
        lambda old, new: seen.append((old.epoch if old else 0, new.epoch if new else 0))
    )
    first = table.set("m", "v1", [V1A], standby=[SPARE])
    route = table.set_canary("m", [V2], 0.25)
    assert route is not None and route.epoch == first.epoch + 1 and seen[-1] == (1, 2)
    assert route.standby == (SPARE,) and route.endpoints == (V1A,)
    # a health switch or a redeploy of production: the canary stays
    again = table.set("m", "v1", [V1A, V1B])
    assert again.canary == (V2,) and again.canary_share == 0.25 and again.epoch == 3
    described = again.describe()
    assert described["canary"][0]["version"] == "v2" and described["canary_share"] == 0.25
    cleared = table.set_canary("m", [], 0.25)
    assert cleared is not None and cleared.canary == () and cleared.canary_share == 0.0
    assert cleared.epoch == 4 and seen[-1] == (3, 4)
    assert {table.pick(cleared) for _ in range(10)} == {V1A, V1B}


def test_a_bad_share_or_an_unknown_module_changes_nothing() -> None:
    table = RouteTable()
    route = table.set("m", "v1", [V1A])
    with pytest.raises(ValueError, match=r"canary share of 'm' must be in \[0, 1\], got 1.5"):
        table.set_canary("m", [V2], 1.5)
    assert table.get("m") == route
    assert table.set_canary("nope", [V2], 0.5) is None and table.get("nope") is None


def test_a_canary_marked_down_sends_its_turns_to_production() -> None:
    table, route = table_with_canary(0.5)
    assert table.mark_down("m", V2)  # a canary endpoint is the route's own
    assert V2 not in {table.pick(route) for _ in range(20)}
    # dropped from the route, its mark is forgotten
    cleared = table.set_canary("m", [], 0.0)
    assert cleared is not None and not table.is_down(V2)


def test_a_retry_goes_to_production_and_the_canary_is_a_last_resort() -> None:
    table, route = table_with_canary(1.0)
    assert table.pick(route) == V2  # share 1: every first pick
    assert table.pick(route, [V2]) in {V1A, V1B}  # the retry of a request it failed
    table.mark_down("m", V1A)
    table.mark_down("m", V1B)
    table.mark_down("m", SPARE)
    assert table.pick(route, [V1A]) == V2  # nothing else answers


def test_routes_without_a_canary_pick_as_before() -> None:
    table = RouteTable()
    route = table.set("m", "v1", [V1A, V1B])
    assert route.canary == () and route.canary_share == 0.0
    assert {table.pick(route) for _ in range(10)} == {V1A, V1B}
    agent = table.set("e", "v1", [AgentEndpoint("cam-1", "v1")])
    assert table.pick(agent) == AgentEndpoint("cam-1", "v1") and agent.agent == "cam-1"


def test_removing_a_route_drops_its_canary() -> None:
    table, _ = table_with_canary(0.5)
    assert table.remove("m") is not None
    route = table.set("m", "v1", [V1A])
    assert route.canary == () and route.epoch == 1


def test_a_request_for_productions_version_is_not_sent_to_the_candidate() -> None:
    from mesh.core._metrics import MetricsRegistry
    from mesh.serving._gateway import Gateway
    from mesh.serving._oip import UpstreamError

    table, _ = table_with_canary(1.0)
    gateway = Gateway(table, metrics=(metrics := MetricsRegistry()))
    assert gateway.route("m").canary == (V2,)
    pinned = gateway.route("m", "v1")
    assert pinned.canary == () and {table.pick(pinned) for _ in range(4)} == {V1A, V1B}
    # the candidate's failures are counted under its version, not as an unknown one
    gateway.count_error("m", "v2", V2.node, UpstreamError("reset", model="m"))
    assert 'version="v2"' in metrics.render() and "<unknown>" not in metrics.render()
