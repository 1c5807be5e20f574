"""Bearing to slot and phase derivation: how any junction becomes the controller's four slots."""

from __future__ import annotations

import pytest

from functions.traffic.sim.junction_map import (
    angle_between,
    assign_slots,
    bearing,
    served_approaches,
)


def test_bearing_is_compass_degrees_from_north() -> None:
    assert bearing(0.0, 5.0) == 0.0
    assert bearing(5.0, 0.0) == 90.0
    assert bearing(0.0, -1.0) == 180.0
    assert bearing(-2.0, 0.0) == 270.0
    assert bearing(1.0, 1.0) == pytest.approx(45.0)
    with pytest.raises(ValueError):
        bearing(0.0, 0.0)


def test_angle_between_wraps_around_north() -> None:
    assert angle_between(350.0, 10.0) == 20.0
    assert angle_between(0.0, 180.0) == 180.0
    assert angle_between(90.0, 90.0) == 0.0


def test_a_grid_junction_keeps_its_compass_arms() -> None:
    slots = assign_slots({"n": 0.0, "e": 90.0, "s": 180.0, "w": 270.0})
    assert slots == {"north": ("n",), "east": ("e",), "south": ("s",), "west": ("w",)}


def test_three_arms_leave_the_slot_nobody_comes_from_empty() -> None:
    slots = assign_slots({"a": 5.0, "b": 95.0, "c": 265.0})
    assert slots == {"north": ("a",), "east": ("b",), "south": (), "west": ("c",)}


def test_two_arms_nearest_the_same_slot_take_neighbouring_slots() -> None:
    # Both are nearest north, but a free slot is taken before a slot is shared:
    # the least total squared deviation puts the one further east into east.
    slots = assign_slots({"a": 350.0, "b": 40.0, "c": 180.0})
    assert slots["north"] == ("a",)
    assert slots["east"] == ("b",)
    assert slots["south"] == ("c",)
    assert slots["west"] == ()


def test_a_fifth_arm_shares_the_slot_nearest_its_bearing() -> None:
    slots = assign_slots({"a": 0.0, "b": 90.0, "c": 170.0, "d": 200.0, "e": 270.0})
    assert slots["north"] == ("a",)
    assert slots["east"] == ("b",)
    assert slots["west"] == ("e",)
    # c and d are both nearest south: the nearer one holds it, the other shares it.
    assert slots["south"] == ("c", "d")
    assert sorted(r for v in slots.values() for r in v) == ["a", "b", "c", "d", "e"]


def test_slots_are_deterministic_and_every_road_is_placed_once() -> None:
    bearings = {"x": 44.0, "y": 46.0, "z": 225.0, "w": 300.0}
    first = assign_slots(bearings)
    assert first == assign_slots(dict(reversed(list(bearings.items()))))
    placed = [r for v in first.values() for r in v]
    assert sorted(placed) == sorted(bearings)
    assert all(len(v) <= 1 for v in first.values())


def test_phases_of_a_grid_program_are_north_south_then_east_west() -> None:
    links = ["north"] * 4 + ["east"] * 4 + ["south"] * 4 + ["west"] * 4
    greens = ["GGGgrrrrGGGgrrrr", "rrrrGGGgrrrrGGGg"]
    assert served_approaches(greens, links) == (
        frozenset({"north", "south"}),
        frozenset({"east", "west"}),
    )


def test_a_right_turn_green_in_every_phase_does_not_serve_its_approach_there() -> None:
    # A T junction (SUMO's program for it): west's right turn is green in both phases.
    links = ["west"] * 2 + ["east"] * 4 + ["south"] * 2
    greens = ["GGGGGgrr", "GrrrrrGG"]
    assert served_approaches(greens, links) == (
        frozenset({"west", "east"}),
        frozenset({"south"}),
    )


def test_a_left_turn_only_phase_serves_no_approach() -> None:
    links = ["north"] * 3 + ["south"] * 3
    greens = ["GGgGGg", "rrGrrG"]
    assert served_approaches(greens, links) == (frozenset({"north", "south"}), frozenset())


def test_an_approach_never_green_by_half_gets_its_greenest_phases() -> None:
    # "east" is never green on half its links: it goes with the phases greenest for it.
    links = ["north", "north", "east", "east", "east", "east"]
    greens = ["GGGGrr", "rrrrGG"]
    served = served_approaches(greens, links)
    assert served == (frozenset({"north", "east"}), frozenset({"east"}))


def test_links_from_no_observed_approach_are_ignored() -> None:
    assert served_approaches(["GGr", "rrG"], ["north", None, "south"]) == (
        frozenset({"north"}),
        frozenset({"south"}),
    )


def test_a_shared_slot_is_served_by_each_phase_that_serves_one_of_its_roads() -> None:
    # Five arms: roads s1 and s2 share the south slot, each with its own phase.
    links = ["n"] * 3 + ["s1"] * 3 + ["s2"] * 3
    greens = ["GGgGGgrrr", "rrrrrrGGG"]
    slot_of = {"n": "north", "s1": "south", "s2": "south"}
    assert served_approaches(greens, links, slot_of) == (
        frozenset({"north", "south"}),
        frozenset({"south"}),
    )


def test_a_state_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="links"):
        served_approaches(["GG"], ["north"])
