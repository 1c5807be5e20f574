"""RepeatLog: a repeated line is written once, then with how often it repeated."""

from __future__ import annotations

import logging

import pytest

from mesh.core._log_repeats import RepeatLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_repeated_line_is_written_once_then_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    quiet = RepeatLog(logging.getLogger("test.repeats.count"), every_s=300.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.repeats.count"):
        for _ in range(240):  # a round a second for four minutes
            quiet.info("placement round: node overloaded: %s; %d move(s)", "fog-1", 0)
            clock.now += 1.0
        assert lines(caplog) == ["placement round: node overloaded: fog-1; 0 move(s)"]
        assert quiet.suppressed == 239
        clock.now = 300.0  # every few minutes it says so again, with the count
        quiet.info("placement round: node overloaded: %s; %d move(s)", "fog-1", 0)
    assert lines(caplog)[-1] == (
        "placement round: node overloaded: fog-1; 0 move(s) (repeated 239 times in 300 s)"
    )


def test_a_changed_condition_is_written_at_once_with_the_old_ones_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet = RepeatLog(logging.getLogger("test.repeats.change"), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="test.repeats.change"):
        for _ in range(5):
            quiet.warning("%s is pinned to %s, which is not up", "counter", "fog-1")
        quiet.warning("%s is pinned to %s, which is not up", "counter", "fog-2")
        quiet.warning("something else")
    assert lines(caplog) == [
        "counter is pinned to fog-1, which is not up",
        "counter is pinned to fog-2, which is not up "
        "(before: 'counter is pinned to fog-1, which is not up' repeated 4 times)",
        "something else",
    ]


def test_the_same_error_repeats_and_a_new_one_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet = RepeatLog(logging.getLogger("test.repeats.errors"), clock=Clock(), max_lines=2)
    with caplog.at_level(logging.ERROR, logger="test.repeats.errors"):
        assert quiet.exception("round failed", exc=RuntimeError("locked"))
        assert not quiet.exception("round failed", exc=RuntimeError("locked"))
        assert quiet.exception("round failed", exc=ValueError("bad"))
    assert [r.exc_info is not None for r in caplog.records] == [True, True]
    assert caplog.records[0].funcName == "test_the_same_error_repeats_and_a_new_one_is_written"


def test_bounded_and_checked() -> None:
    quiet = RepeatLog(logging.getLogger("test.repeats.bound"), clock=Clock(), max_lines=3)
    for i in range(100):
        quiet.warning("line %d", i)
    assert len(quiet._lines) == 3
    with pytest.raises(ValueError, match="every_s must be > 0"):
        RepeatLog(logging.getLogger("x"), every_s=0)


def test_the_note_of_an_old_condition_names_its_text_not_its_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet = RepeatLog(logging.getLogger("test.repeats.key"), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="test.repeats.key"):
        for _ in range(3):
            quiet.log(logging.WARNING, "%s: waits", "A0", key="A0-why")
        quiet.log(logging.WARNING, "%s: waits", "B1", key="B1-why")
    assert lines(caplog)[-1] == "B1: waits (before: 'A0: waits' repeated 2 times)"
