"""A fleet rollout's phases come from each simulated agent's own timestamps."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from tests.support.fleet_mesh import _rollout_phases


def _agent(desired_at: float | None, began: float | None, ended: float | None) -> Any:
    return SimpleNamespace(desired_at=desired_at, apply_began=began, apply_ended=ended)


def test_the_last_delivery_and_install_and_the_install_spread() -> None:
    agents = [_agent(10.5, 10.5, 10.6), _agent(12.0, 13.0, 13.5), _agent(11.0, 11.1, 11.2)]
    phases = _rollout_phases(agents, 10.0)
    assert math.isclose(phases["rollout_delivered_s"], 2.0)  # the broker's part
    assert math.isclose(phases["rollout_installed_s"], 3.5)
    assert math.isclose(phases["rollout_install_p50_s"], 0.1)
    assert math.isclose(phases["rollout_install_p95_s"], 0.5)
    assert math.isclose(phases["rollout_install_wait_p95_s"], 1.0)  # waited for a thread


def test_agents_that_never_acted_are_left_out_and_none_gives_nan() -> None:
    phases = _rollout_phases([_agent(10.5, 10.5, 10.6), _agent(None, None, None)], 10.0)
    assert math.isclose(phases["rollout_installed_s"], 0.6)
    assert math.isnan(_rollout_phases([_agent(11.0, None, None)], 10.0)["rollout_delivered_s"])
