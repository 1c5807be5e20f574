"""LiveErrors: outputs joined with late labels, the error over windows, bounded memory."""

from __future__ import annotations

import re

import pytest

from mesh.control._live_error import ErrorWindow, Label, LiveErrors, parse_label


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_joins_either_way_round_on_the_millisecond() -> None:
    clock = Clock()
    errors = LiveErrors(clock=clock)
    assert not errors.add_output("c", "j1", "v1", 5.0001, [3.0, 1.0])
    assert errors.add_label("c", "j1", 5.0, [1.0, 1.0])  # output first
    assert not errors.add_label("c", "j1", 6.0, [2.0, 2.0])
    assert errors.add_output("c", "j1", "v1", 6.0, [2.0, 4.0])  # label first
    assert errors.window("c", since=0.0) == ErrorWindow(2, 1.0)
    # Another site's label at the same ts does not join j1's output.
    assert not errors.add_output("c", "j1", "v1", 7.0, [1.0])
    assert not errors.add_label("c", "j2", 7.0, [1.0])
    assert errors.window("c", since=0.0).n == 2


def test_window_by_time_site_and_version() -> None:
    clock = Clock()
    errors = LiveErrors(clock=clock)
    for i, (site, version, err) in enumerate(
        [("j1", "v1", 1.0), ("j2", "v1", 3.0), ("j1", "v2", 0.5), ("j1", "v2", 1.5)]
    ):
        clock.now = 1000.0 + i * 10
        errors.add_output("c", site, version, float(i), [err])
        errors.add_label("c", site, float(i), [0.0])
    assert errors.window("c", since=0.0) == ErrorWindow(4, 1.5)
    assert errors.window("c", since=0.0, site="j1") == ErrorWindow(3, 1.0)
    assert errors.window("c", since=0.0, version="v2") == ErrorWindow(2, 1.0)
    assert errors.window("c", since=1015.0) == ErrorWindow(2, 1.0)  # joined at 1020, 1030
    assert errors.window("c", since=1015.0, site="j2") == ErrorWindow(0, None)
    assert errors.window("other", since=0.0) == ErrorWindow(0, None)
    assert errors.versions("c", "j1", since=0.0) == ["v2", "v1"]


def test_bad_samples_are_not_scored() -> None:
    errors = LiveErrors(clock=Clock())
    errors.add_output("c", "j1", "v1", 1.0, [1.0])
    assert not errors.add_label("c", "j1", 1.0, [1.0, 2.0])  # more labels than outputs
    assert errors.mismatched == 1
    assert not errors.add_output("c", "j1", "v1", 2.0, [float("nan")])
    assert not errors.add_output("c", "j1", "v1", float("inf"), [1.0])
    assert not errors.add_output("c", "j1", "v1", 3.0, [])
    assert not errors.add_label("c", "j1", 2.0, [1.0])  # the NaN output was never kept
    assert errors.window("c", since=0.0).n == 0


def test_memory_is_bounded() -> None:
    clock = Clock()
    errors = LiveErrors(clock=clock, max_pending=3, max_wait_s=10.0, max_errors=2, retain_s=100.0)
    for i in range(5):
        errors.add_output("c", "j1", "v1", float(i), [1.0])
    assert errors.dropped == 2
    assert not errors.add_label("c", "j1", 0.0, [1.0])  # dropped: the oldest went first
    assert errors.add_label("c", "j1", 4.0, [1.0])
    clock.now += 11  # the rest waited too long
    assert not errors.add_label("c", "j1", 3.0, [1.0])
    for i in range(3):
        errors.add_output("c", "j2", "v1", 100.0 + i, [2.0])
        errors.add_label("c", "j2", 100.0 + i, [0.0])
    assert errors.window("c", since=0.0, site="j2").n == 2  # max_errors
    clock.now += 101
    errors.add_output("c", "j2", "v1", 200.0, [0.0])
    errors.add_label("c", "j2", 200.0, [0.0])
    assert errors.window("c", since=0.0, site="j2") == ErrorWindow(1, 0.0)  # retain_s


def test_forget_and_bad_settings() -> None:
    errors = LiveErrors(clock=Clock())
    errors.add_output("c", "j1", "v1", 1.0, [1.0])
    errors.add_label("c", "j1", 1.0, [1.0])
    errors.forget("c")
    assert errors.window("c", since=0.0).n == 0
    with pytest.raises(ValueError, match="max_wait_s"):
        LiveErrors(max_wait_s=0)


def test_a_label_covers_the_first_outputs() -> None:
    errors = LiveErrors(clock=Clock())
    errors.add_output("c", "j1", "v1", 1.0, [1.0, 3.0, 9.0, 9.0])  # a second row, no truth
    assert errors.add_label("c", "j1", 1.0, [2.0, 3.0])
    assert errors.window("c", since=0.0) == ErrorWindow(1, 0.5)


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"ts": 1.0, "values": [1]}', "site: expected a non-empty string, got None"),
        (b'{"site": "j1", "ts": NaN, "values": [1]}', "ts: expected the frame's source_ts"),
        (b'{"site": "j1", "ts": true, "values": [1]}', "ts: expected"),
        (b'{"site": "j1", "ts": 1.0, "values": []}', "values: expected a non-empty list"),
        (b'{"site": "j1", "ts": 1.0, "values": [1, "a"]}', "values: expected"),
    ],
)
def test_a_bad_label_message_is_refused_saying_what_was_expected(payload: bytes, said: str) -> None:
    """One reading for the drift and fresh-data services (they disagreed on NaN and [])."""
    with pytest.raises(ValueError, match=re.escape(said)):
        parse_label(payload)
    assert parse_label(b'{"site": "j1", "ts": 2, "values": [1, 2.5]}') == Label(
        "j1", 2.0, (1.0, 2.5)
    )
