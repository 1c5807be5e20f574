"""Rule 5 weighs each approach's vehicles by the storage of its road."""

from __future__ import annotations

import pytest

from functions.traffic.control import (
    ControllerConfig,
    JunctionLayout,
    Observation,
    SignalController,
)

# (north, east, south, west): long north-south roads (64 vehicles jammed), short
# east-west ones (24).
STORAGE = (64.0, 24.0, 64.0, 24.0)
PHASES = (frozenset({"north", "south"}), frozenset({"east", "west"}))
# North-south holds 80 vehicles (62 % of its storage), east-west 40 (83 %).
COUNTS = (40.0, 20.0, 40.0, 20.0)
CONFIG = ControllerConfig(saturation_veh=1000.0, max_green_s=120.0)


def reasons(layout: JunctionLayout, seconds: int = 60) -> list[str]:
    """Each second's reason while east-west is green under steady counts."""
    ctl = SignalController(layout, CONFIG, phase=1)
    segments = [[c / 4, c / 3, c / 2, c] for c in COUNTS]
    return [
        ctl.step(Observation(t=float(t), counts=COUNTS, segments=segments, queued=COUNTS)).reason
        for t in range(1, seconds)
    ]


def test_by_count_the_long_roads_take_the_green_from_the_fuller_short_ones() -> None:
    layout = JunctionLayout(phases=PHASES, capacity_veh=48.0)
    assert "pressure" in reasons(layout)


def test_by_storage_the_fuller_short_roads_keep_it() -> None:
    layout = JunctionLayout(phases=PHASES, capacity_veh=48.0, storage_veh=STORAGE)
    got = reasons(layout)
    assert "pressure" not in got
    assert got[-1] == "clearing"


def test_equal_storage_changes_nothing() -> None:
    plain = JunctionLayout(phases=PHASES, capacity_veh=48.0)
    even = JunctionLayout(phases=PHASES, capacity_veh=48.0, storage_veh=(48.0,) * 4)
    assert reasons(plain) == reasons(even)


@pytest.mark.parametrize("storage", [(48.0, 48.0), (48.0, 0.0, 48.0, 48.0)])
def test_storage_needs_one_positive_value_per_approach(storage: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="storage_veh"):
        JunctionLayout(phases=PHASES, storage_veh=storage)
