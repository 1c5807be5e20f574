"""MQTT topic filters: matching, covering, and overlap-free broker filters."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from amqtt.broker import Broker
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.matcher import MQTTMatcher

from mesh.core._topics import cover_filters, topic_covers, topic_matches

# Topics to probe filters with: every combination of these levels, 1 to 4 deep.
LEVELS = ["a", "b", "c", "", "$s"]
TOPICS = ["/".join(p) for n in range(1, 5) for p in itertools.product(LEVELS, repeat=n)]


def test_streams_and_gateway_share_one_topic_matches() -> None:
    import mesh
    from mesh.compute import _streams

    assert _streams.topic_matches is topic_matches
    assert mesh.core.topic_matches is topic_matches


def _agent_transport_matches(pattern: str, topic: str) -> bool:
    # The agent's transport routes messages with paho's filter trie.
    matcher = MQTTMatcher()
    matcher[pattern] = pattern
    return pattern in matcher.iter_match(topic)


def _embedded_broker_matches(pattern: str, topic: str) -> bool:
    # The embedded broker (amqtt) decides what each subscription is sent.
    broker = SimpleNamespace(logger=logging.getLogger("amqtt.broker"))
    return bool(Broker._matches(broker, topic, pattern))


MATCHERS: dict[str, Callable[[str, str], bool]] = {
    "mesh": topic_matches,
    "paho": topic_matches_sub,
    "agent-transport": _agent_transport_matches,
    "embedded-broker": _embedded_broker_matches,
}


@pytest.mark.parametrize("matcher", MATCHERS)
@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a", False),
        ("a/+", "a/b/c", False),
        ("+", "", True),
        ("+/+", "/b", True),
        ("#", "a/b", True),
        ("a/b", "a/b/", False),
        ("a/b", "a/c", False),
        # Topics starting with "$" are hidden from a first-level wildcard (MQTT 4.7.2).
        ("#", "$SYS/x", False),
        ("#", "$SYS", False),
        ("+/x", "$SYS/x", False),
        ("+", "$SYS", False),
        ("+/#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+", "$SYS/x", True),
        ("$SYS/x", "$SYS/x", True),
        ("a/#", "a/$b", True),
        ("a/+", "a/$b", True),
        ("#", "a$/b", True),
    ],
)
def test_every_matcher_agrees(matcher: str, pattern: str, topic: str, match: bool) -> None:
    assert MATCHERS[matcher](pattern, topic) is match


@pytest.mark.parametrize(
    ("subscription", "pattern", "covers"),
    [
        ("mesh/v1/events/#", "mesh/v1/events/+/counts", True),
        ("a/#", "a", True),
        ("a/#", "a/#", True),
        ("#", "a/+/#", True),
        ("a/+", "a/b", True),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),
        ("a/+", "a/b/c", False),
        ("a/b", "a/+", False),
        ("a/b/c", "a/b", False),
        ("a/+/c", "a/b/#", False),
        ("#", "$SYS/x", False),
        ("+/#", "$SYS/#", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/+", True),
        ("$SYS/#", "+/x", False),
    ],
)
def test_topic_covers(subscription: str, pattern: str, covers: bool) -> None:
    assert topic_covers(subscription, pattern) is covers


@pytest.mark.parametrize(
    ("subscription", "pattern"),
    [
        (s, p)
        for s in ["a/#", "a/+", "+/b", "a/+/c", "#", "a", "$s/#"]
        for p in ["a", "a/b", "a/+", "+/b", "$s/b", "$s/+"]
    ],
)
def test_topic_covers_agrees_with_matching(subscription: str, pattern: str) -> None:
    # Wildcard-free patterns stand for themselves; "+" ones for every topic they match.
    matched = [t for t in TOPICS if topic_matches(pattern, t)]
    if topic_covers(subscription, pattern):
        assert all(topic_matches(subscription, t) for t in matched)


@pytest.mark.parametrize(
    ("patterns", "filters"),
    [
        (["a/+/c", "a/b/#", "x/y"], {"a/+/#", "x/y"}),
        (["a/b", "a/c"], {"a/b", "a/c"}),
        (["a/b", "a/+"], {"a/+"}),
        (["a/b", "a/b"], {"a/b"}),
        (["a/b", "a/b/c"], {"a/b", "a/b/c"}),
        (["a/+", "a/b/c"], {"a/+", "a/b/c"}),
        (["a/#", "a/b", "a/+/c"], {"a/#"}),
        (["+/b", "a/+"], {"+/+"}),
        (["#", "$SYS/x"], {"#", "$SYS/x"}),
        (["+/x", "$SYS/x", "$SYS/y"], {"+/x", "$SYS/x", "$SYS/y"}),
        (["$SYS/x", "$SYS/+"], {"$SYS/+"}),
        ([], set()),
    ],
)
def test_cover_filters(patterns: list[str], filters: set[str]) -> None:
    assert cover_filters(patterns) == filters


@pytest.mark.parametrize(
    "patterns",
    [
        ["a/+/c", "a/b/#", "x/y"],
        ["+/b", "a/+", "c"],
        ["a/b/c", "a/+/d", "+/b/+", "c/#", "c/d"],
        ["mesh/v1/agents/+/status", "mesh/v1/agents/+/heartbeat", "mesh/v1/events/#"],
        ["#", "$s/a", "+/b", "$s/+"],
    ],
)
def test_cover_filters_cover_every_pattern_without_overlap(patterns: list[str]) -> None:
    filters = cover_filters(patterns)
    for pattern in patterns:
        assert any(topic_covers(f, pattern) for f in filters), pattern
    for topic in TOPICS + [p.replace("+", "z").replace("#", "z") for p in patterns]:
        # A broker sends one copy per matching filter: exactly one if any pattern matches.
        copies = sum(topic_matches(f, topic) for f in filters)
        assert copies <= 1, (topic, filters)
        if any(topic_matches(p, topic) for p in patterns):
            assert copies == 1, (topic, filters)
