"""Rule 4's max red: at a junction of three or more phases, no phase with vehicles waits forever."""

from __future__ import annotations

import pytest

from functions.traffic.control import (
    ControllerConfig,
    ControllerState,
    JunctionLayout,
    Observation,
    SignalController,
    decide,
    initial_state,
)

# A junction whose third phase serves one road (a T's side road, a fifth road):
# its pressure never beats the busy through phases'.
LAYOUT = JunctionLayout(
    phases=(frozenset({"north", "south"}), frozenset({"east", "west"}), frozenset({"west"}))
)
# (north, east, south, west): both through phases stay busy, with arrivals all along.
COUNTS = (10.0, 10.0, 10.0, 3.0)
STREAM = [4.0, 6.0, 8.0, 10.0]
SEGMENTS = [STREAM, STREAM, STREAM, [1.0, 2.0, 3.0, 3.0]]


def run(config: ControllerConfig, seconds: int = 600) -> list[tuple[float, int, str]]:
    """Each second's decision (time, phase asked for, reason) under steady counts."""
    ctl = SignalController(LAYOUT, config)
    return [
        (float(t), d.phase, d.reason)
        for t in range(1, seconds)
        for d in [ctl.step(Observation(t=float(t), counts=COUNTS, segments=SEGMENTS))]
    ]


def greens_of(decisions: list[tuple[float, int, str]], phase: int) -> list[float]:
    return [t for t, p, reason in decisions if p == phase and reason == "max-red"]


def test_a_phase_max_pressure_passes_over_gets_its_green_within_max_red() -> None:
    config = ControllerConfig(max_red_s=90.0, max_green_s=40.0)
    decisions = run(config)
    asked = greens_of(decisions, 2)
    assert asked, "the side road's phase was never served"
    # Each time it is asked for, its red has just passed max_red_s (min green and the
    # yellow of the phase before it come on top once).
    first = asked[0]
    assert config.max_red_s < first <= config.max_red_s + config.min_green_s + 2 * config.yellow_s


def test_without_the_bound_max_pressure_never_serves_that_phase() -> None:
    decisions = run(ControllerConfig(max_red_s=0.0, max_green_s=40.0))
    assert all(p != 2 for _, p, _ in decisions)


def test_two_phase_junctions_whose_phases_both_move_never_reach_max_red() -> None:
    layout = JunctionLayout.two_phase()
    config = ControllerConfig()
    ctl = SignalController(layout, config)
    reasons = {
        ctl.step(Observation(t=float(t), counts=(30.0, 30.0, 30.0, 30.0))).reason
        for t in range(1, 900)
    }
    assert "max-red" not in reasons


def test_an_empty_or_blocked_phase_is_not_served_by_max_red() -> None:
    config = ControllerConfig(max_red_s=30.0, max_green_s=40.0)
    ctl = SignalController(LAYOUT, config)
    empty_west = (10.0, 10.0, 10.0, 0.0)
    reasons = [
        ctl.step(Observation(t=float(t), counts=empty_west, segments=SEGMENTS)).phase
        for t in range(1, 300)
    ]
    assert 2 not in reasons


def test_when_each_phase_was_served_round_trips_through_a_message() -> None:
    config = ControllerConfig()
    state = initial_state(LAYOUT, config)
    for t in range(1, 30):
        state, _ = decide(LAYOUT, config, state, Observation(t=float(t), counts=COUNTS))
    assert len(state.served_at_s) == 3
    assert ControllerState.from_dict(state.as_dict()) == state


def test_a_negative_max_red_is_refused() -> None:
    with pytest.raises(ValueError, match="max_red_s"):
        ControllerConfig(max_red_s=-1.0)


def test_a_state_from_a_layout_with_other_phases_starts_its_reds_afresh() -> None:
    config = ControllerConfig()
    two = JunctionLayout.two_phase()
    state = initial_state(two, config)
    state, _ = decide(two, config, state, Observation(t=1.0, counts=COUNTS))
    assert len(state.served_at_s) == 2
    state, _ = decide(LAYOUT, config, state, Observation(t=2.0, counts=COUNTS))
    assert state.served_at_s == (2.0, 2.0, 2.0)
