"""MQTT topic filters: matching, covering, and overlap-free broker filters."""

from __future__ import annotations

import itertools

import pytest

from mesh.core._topics import cover_filters, topic_covers, topic_matches

# Topics to probe filters with: every combination of these levels, 1 to 4 deep.
LEVELS = ["a", "b", "c", ""]
TOPICS = ["/".join(p) for n in range(1, 5) for p in itertools.product(LEVELS, repeat=n)]


def test_streams_and_gateway_share_one_topic_matches() -> None:
    import mesh
    from mesh.compute import _streams

    assert _streams.topic_matches is topic_matches
    assert mesh.core.topic_matches is topic_matches


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
    ],
)
def test_topic_matches(pattern: str, topic: str, match: bool) -> None:
    assert topic_matches(pattern, topic) is match


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
    ],
)
def test_topic_covers(subscription: str, pattern: str, covers: bool) -> None:
    assert topic_covers(subscription, pattern) is covers


@pytest.mark.parametrize(
    ("subscription", "pattern"),
    [(s, p) for s in ["a/#", "a/+", "+/b", "a/+/c", "#", "a"] for p in ["a", "a/b", "a/+", "+/b"]],
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
