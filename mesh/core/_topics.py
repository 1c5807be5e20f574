"""MQTT topic filters: matching a topic, and keeping broker subscriptions free of overlaps.

Pure functions on strings (``+`` matches one level, ``#`` the rest), shared by the
edge bus and the in-process :class:`~mesh.compute._streams.LocalBus` so both follow
the same rules, which are the broker's and paho's: a topic starting with ``$`` (such as
``$SYS/...``) is not matched by a filter whose first level is ``+`` or ``#`` (MQTT 3.1.1
section 4.7.2).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["cover_filters", "topic_covers", "topic_matches"]


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT ``pattern`` (``+`` one level, ``#`` the rest).

    Example:
        >>> topic_matches("traffic/+/counts", "traffic/j1/counts")
        True
        >>> topic_matches("traffic/#", "traffic")
        True
        >>> topic_matches("#", "$SYS/uptime")
        False
    """
    want = pattern.split("/")
    have = topic.split("/")
    if _hides_dollar(want[0], have[0]):
        return False
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def topic_covers(subscription: str, pattern: str) -> bool:
    """Whether every topic matching ``pattern`` also matches ``subscription``.

    Example:
        >>> topic_covers("mesh/v1/events/#", "mesh/v1/events/+/counts")
        True
        >>> topic_covers("a/+", "a/#")
        False
    """
    sub, pat = subscription.split("/"), pattern.split("/")
    if _hides_dollar(sub[0], pat[0]):
        return False
    for i, level in enumerate(sub):
        if level == "#":
            return True
        if i >= len(pat):
            return False
        if level == "+":
            if pat[i] == "#":
                return False
            continue
        if pat[i] != level:
            return False
    return len(sub) == len(pat)


def _hides_dollar(filter_level: str, topic_level: str) -> bool:
    """Whether a filter's first level, a wildcard, skips a ``$`` topic's first level."""
    return filter_level in ("+", "#") and topic_level.startswith("$")


def _overlaps(a: str, b: str) -> bool:
    la, lb = a.split("/"), b.split("/")
    if _hides_dollar(la[0], lb[0]) or _hides_dollar(lb[0], la[0]):
        return False
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


def _join(a: str, b: str) -> str:
    la, lb = a.split("/"), b.split("/")
    out: list[str] = []
    for x, y in zip(la, lb, strict=False):
        if "#" in (x, y):
            return "/".join([*out, "#"])
        out.append(x if x == y else "+")
    if len(la) != len(lb):
        out.append("#")
    return "/".join(out)


def cover_filters(patterns: Iterable[str]) -> set[str]:
    """Broker filters covering ``patterns`` with no two overlapping.

    Brokers send one copy of a message per matching subscription, so overlapping
    filters would deliver duplicates; overlapping patterns are merged into a wider
    filter instead, and handlers are matched locally.

    Example:
        >>> sorted(cover_filters(["a/+/c", "a/b/#", "x/y"]))
        ['a/+/#', 'x/y']
    """
    filters: list[str] = []
    for pattern in sorted(set(patterns)):
        current = pattern
        while not any(topic_covers(f, current) for f in filters):
            overlapping = [f for f in filters if _overlaps(f, current)]
            if not overlapping:
                filters.append(current)
                break
            for f in overlapping:
                filters.remove(f)
                current = _join(current, f)
    return set(filters)
