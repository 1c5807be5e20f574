"""Quiet under stress: a condition that lasts triggers one plan and one log line, not one a round.

Counted in rounds on the fake clock of ``test_placement_controller``'s world,
never timed: a busy host once made every round (every ``tick_s``) re-plan and
log the same "node overloaded" line for minutes.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.test_placement_controller import FOG, world


def test_a_node_that_stays_overloaded_triggers_one_plan_not_one_a_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = world(period_s=60.0, tick_s=0.25)
    assert "period" in w.controller.step().triggers
    w.nodes.cpu[FOG] = 99.0  # over max_utilisation from now on
    planned = 0
    with caplog.at_level(logging.INFO, logger="mesh.control._round"):
        for _ in range(200):  # 50 s of rounds, under the period
            w.advance(w.controller.settings.tick_s)
            planned += bool(w.controller.step().triggers)
    assert planned == 1
    said = [r.getMessage() for r in caplog.records if "node overloaded" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"placement round: node overloaded: {FOG}")
    # The period still re-plans while it lasts; when it ends and comes back, it is new.
    w.advance(60.0)
    assert w.controller.step().triggers == ("period",)
    w.nodes.cpu[FOG] = 10.0
    w.advance(w.controller.settings.window_s + 1.0)
    assert not w.controller.step().triggers
    w.nodes.cpu[FOG] = 99.0
    w.advance(w.controller.settings.window_s + 1.0)
    assert w.controller.step().triggers == (f"node overloaded: {FOG}",)


def test_a_round_that_keeps_failing_logs_once_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world(tick_s=0.001)
    rounds = 0

    def failing() -> None:
        nonlocal rounds
        rounds += 1
        if rounds >= 30:
            w.controller._stop.set()  # bounded: the loop ends after 30 rounds
        raise RuntimeError("store is locked")

    monkeypatch.setattr(w.controller, "step", failing)
    with caplog.at_level(logging.ERROR, logger="mesh.control._controller"):
        w.controller._loop()
    failed = [r for r in caplog.records if r.getMessage().startswith("placement round failed")]
    assert rounds == 30 and len(failed) == 1
    assert w.controller._quiet_loop.suppressed == 29


def test_a_node_source_failing_every_poll_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    from mesh.control._monitors import Monitors

    class Busy:
        def nodes(self) -> list[Any]:
            raise TimeoutError("Ray head busy")

        def sample(self) -> list[Any]:
            return []

        def ping(self, node: str, timeout_s: float) -> float | None:
            return None

    monitors = Monitors(node_probe=Busy(), clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="mesh.control._monitors"):
        for _ in range(50):
            monitors.poll()
    assert [r.getMessage() for r in caplog.records] == ["monitors: reading Ray nodes failed"]
