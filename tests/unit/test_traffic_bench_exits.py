"""The traffic bench's exit model on any junction: which camera sees each approach's exit."""

from __future__ import annotations

from bench._traffic_runs import exit_slots, slot_storage
from functions.traffic.sim.network import Approach


def _arm(name: str, incoming: str, outgoing: str, neighbour: str | None) -> Approach:
    return Approach(name, incoming, outgoing, 2, 150.0, neighbour)


def _empty(name: str) -> Approach:
    return Approach(name, "", "", 0, 0.0, None)


def test_a_four_arm_junction_exits_straight_on_to_the_neighbours_camera() -> None:
    arms = (
        _arm("north", "in_n", "out_n", "N"),
        _arm("east", "in_e", "out_e", None),
        _arm("south", "in_s", "out_s", "S"),
        _arm("west", "in_w", "out_w", "W"),
    )
    # out_s enters S in its north slot (0); out_n enters N in its south slot (2).
    slot_of = {"out_s": ("S", 0), "out_n": ("N", 2), "out_w": ("W", 1)}
    assert exit_slots(arms, slot_of) == [[("S", 0)], [("W", 1)], [("N", 2)], []]


def test_the_side_road_of_a_t_watches_both_turns() -> None:
    arms = (
        _arm("north", "in_n", "out_n", "N"),
        _empty("east"),
        _arm("south", "in_s", "out_s", "S"),
        _arm("west", "in_w", "out_w", None),
    )
    slot_of = {"out_s": ("S", 0), "out_n": ("N", 2)}
    exits = exit_slots(arms, slot_of)
    assert exits[3] == [("N", 2), ("S", 0)]  # west has no road ahead: it turns
    assert exits[0] == [("S", 0)]
    assert exits[1] == []  # the empty slot


def test_each_slot_holds_its_own_roads() -> None:
    shared = Approach("south", "in_s", "out_s", 2, 150.0, "S", shared=(("in_x", 1, 75.0),))
    arms = (
        _arm("north", "in_n", "out_n", "N"),
        _empty("east"),
        shared,
        _arm("west", "in_w", "", None),
    )
    # 2 lanes x 150 m / 7.5 m = 40; the shared slot adds 1 x 75 / 7.5 = 10.
    assert slot_storage(arms, 33.0) == (40.0, 33.0, 50.0, 40.0)
