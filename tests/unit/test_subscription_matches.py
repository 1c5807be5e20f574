"""The edge bus's subscriptions remember each topic's handlers, and forget them on a change."""

from __future__ import annotations

import pytest

from mesh.edge import _subscriptions
from mesh.edge._subscriptions import Subscriptions


def _noop(topic: str, payload: bytes) -> None:
    pass


def test_a_handler_added_later_is_matched_on_a_topic_seen_before() -> None:
    subs = Subscriptions([], client=lambda: None)
    seen: list[str] = []
    subs.add("mesh/v1/agents/+/heartbeat", lambda t, p: seen.append("beats"))
    topic = "mesh/v1/agents/a1/heartbeat"
    assert len(subs.handlers_for(topic)) == 1
    subs.add("mesh/v1/#", lambda t, p: seen.append("all"))
    for handler in subs.handlers_for(topic):
        handler(topic, b"")
    assert seen == ["beats", "all"]  # both, in subscription order


def test_a_removed_handler_is_no_longer_matched() -> None:
    subs = Subscriptions([], client=lambda: None)
    remove = subs.add("mesh/v1/agents/#", _noop)
    topic = "mesh/v1/agents/a1/status"
    assert subs.handlers_for(topic) == (_noop,)
    remove()
    assert subs.handlers_for(topic) == ()


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_subscriptions, "MATCHES_MAX", 3)
    subs = Subscriptions([], client=lambda: None)
    subs.add("t/+", _noop)
    for i in range(10):
        assert subs.handlers_for(f"t/{i}") == (_noop,)
        assert len(subs._matches) <= 3
    assert subs.handlers_for("u/1") == ()
