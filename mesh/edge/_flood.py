"""Flood limits: an agent sending too much is held to its rate, and reported.

One broken or hostile agent (a heartbeat loop without its sleep, a pipeline
emitting events per pixel) must not slow the thousands of others the control
plane hears through the same connection and dispatcher thread. Each agent has a
token bucket per kind of message (:class:`FloodLimits` states the rates):

- ``heartbeat``: heartbeats, checked on paho's network thread from the topic
  alone, before anything is parsed or queued. Over the limit they are
  **dropped**: a heartbeat is the latest of a stream and the next one replaces
  it. (``status`` and ``observed`` are not limited: they are retained state, and
  a dropped one, a last will say, would leave the registry wrong.)
- ``events``: application events, checked on the dispatcher thread once the
  event is parsed (its topic names the site, not the agent; the payload's
  ``agent`` field does), before deduplication and the handlers. Over the limit
  they are **deferred**, not dropped: an agent replaying its outbox after an
  outage sends a QoS 1 backlog at network speed, and those events must arrive.
  The dispatcher handles deferred events when nothing else waits, and all of an
  agent's later events join its deferred ones, so its events keep their order.
  Only past ``deferred_max`` waiting events (all agents) are they dropped.

Every message over a limit is counted per agent; :meth:`FloodGuard.reports` lists
the agents limited (the most recent ``max_reported``, for ``/metrics`` labels and
the agent listing), and each limited agent gets one warning line per
``report_every_s``, with its totals. (Not :class:`~mesh.core._log_repeats.RepeatLog`:
it would tell one agent's repeats in the next agent's line.)

The buckets are plain floats under one lock held for a few arithmetic steps; the
network thread and the dispatcher thread are its only takers on the hot path.

Example:
    >>> clock = iter([0.0, 0.0, 0.0, 0.0, 1.0]).__next__
    >>> guard = FloodGuard(FloodLimits(heartbeat_per_s=1.0, heartbeat_burst=2), clock=clock)
    >>> [guard.admit("heartbeat", "cam-07") for _ in range(3)]
    [True, True, False]
    >>> guard.dropped("heartbeat", "cam-07")  # the caller drops it, and says so
    >>> guard.admit("heartbeat", "cam-07")  # a second later: one token back
    True
    >>> guard.report("cam-07").dropped
    {'heartbeat': 1}
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mesh.core._metrics import MetricsRegistry

__all__ = ["FloodGuard", "FloodLimits", "FloodReport", "Kind"]

logger = logging.getLogger(__name__)

Kind = Literal["heartbeat", "events"]

#: Buckets remembered at most; past it, the idle (full) ones are forgotten first.
_MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Per-agent rates the control plane takes messages at (``MESH_FLOOD_*`` settings).

    Attributes:
        heartbeat_per_s: heartbeats per second per agent (an agent sends one every
            few seconds).
        heartbeat_burst: how many heartbeats may come at once.
        events_per_s: application events per second per agent.
        events_burst: how many events may come at once (an outbox replay's first window).
        deferred_max: events over the limit waiting at most (all agents); past it they
            are dropped.
        report_every_s: a limited agent's warning line is written at most this often.
        max_reported: limited agents listed by name at most (``/metrics`` labels).

    Raises:
        ValueError: a rate, burst or bound not positive (names the field).
    """

    heartbeat_per_s: float = 5.0
    heartbeat_burst: int = 20
    events_per_s: float = 200.0
    events_burst: int = 1000
    deferred_max: int = 50_000
    report_every_s: float = 60.0
    max_reported: int = 50

    def __post_init__(self) -> None:
        """Check every field is positive."""
        for name in (
            "heartbeat_per_s",
            "heartbeat_burst",
            "events_per_s",
            "events_burst",
            "deferred_max",
            "report_every_s",
            "max_reported",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"FloodLimits.{name}: expected a number > 0, got {value!r}")

    def rate(self, kind: Kind) -> tuple[float, int]:
        """``(per second, burst)`` of one kind of message."""
        if kind == "heartbeat":
            return self.heartbeat_per_s, self.heartbeat_burst
        return self.events_per_s, self.events_burst


@dataclass(frozen=True, slots=True)
class FloodReport:
    """An agent that went over a limit since the control plane started.

    Attributes:
        agent_id: the agent (for events without one, ``site:<site>``).
        dropped: messages dropped, by kind (``heartbeat``, ``events``).
        deferred: events over the limit handled late, when the dispatcher was idle.
        last_at: Unix time it last went over a limit.
    """

    agent_id: str
    dropped: dict[str, int] = field(default_factory=dict)
    deferred: int = 0
    last_at: float = 0.0

    @property
    def limited(self) -> int:
        """Messages over the limit in all (dropped or deferred)."""
        return sum(self.dropped.values()) + self.deferred


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class FloodGuard:
    """Token buckets per agent and kind of message, and who went over them.

    Thread-safe; :meth:`admit` is a dict lookup and a few float operations.

    Args:
        limits: the rates.
        name: who owns the guard, for log lines (the gateway's client id).
        clock: monotonic seconds (injected in tests).
        wall: Unix time, for :attr:`FloodReport.last_at`.
    """

    def __init__(
        self,
        limits: FloodLimits | None = None,
        *,
        name: str = "gateway",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """No agent limited yet."""
        self.limits = limits or FloodLimits()
        self._name = name
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._buckets: dict[tuple[Kind, str], _Bucket] = {}
        # Limited agents, most recently limited last: (dropped by kind,
        # [deferred, last_at, warned_at]).
        self._limited: OrderedDict[str, tuple[dict[str, int], list[float]]] = OrderedDict()

    def admit(self, kind: Kind, key: str) -> bool:
        """Take a token from ``key``'s ``kind`` bucket; False when it is empty.

        A False is not counted here: the caller drops or defers the message and
        says which (:meth:`dropped`, :meth:`deferred`).
        """
        per_s, burst = self.limits.rate(kind)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get((kind, key))
            if bucket is None:
                if len(self._buckets) >= _MAX_BUCKETS:
                    self._forget_idle(now)
                bucket = self._buckets[(kind, key)] = _Bucket(float(burst), now)
            else:
                bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * per_s)
                bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return True
            return False

    def dropped(self, kind: Kind, key: str) -> None:
        """Count a message of ``key``'s that went over its limit and was dropped."""
        self._count(kind, key, deferred=False)

    def deferred(self, kind: Kind, key: str) -> None:
        """Count a message of ``key``'s that went over its limit and waits."""
        self._count(kind, key, deferred=True)

    def _count(self, kind: Kind, key: str, *, deferred: bool) -> None:
        now = self._clock()
        with self._lock:
            entry = self._limited.pop(key, None)
            if entry is None:
                entry = ({}, [0.0, 0.0, -math.inf])
            dropped, tail = entry
            if deferred:
                tail[0] += 1
            else:
                dropped[kind] = dropped.get(kind, 0) + 1
            tail[1] = self._wall()
            warn = now - tail[2] >= self.limits.report_every_s
            if warn:
                tail[2] = now
                counts = dict(dropped), int(tail[0])
            self._limited[key] = entry
            while len(self._limited) > self.limits.max_reported:
                self._limited.popitem(last=False)
        if warn:  # one line per agent per report_every_s, with the totals so far
            per_s, burst = self.limits.rate(kind)
            logger.warning(
                "gateway %s: agent %s sends %s messages faster than %g/s (burst %d); "
                "since start %s dropped, %d events deferred (mesh_edge_flood_limited)",
                self._name,
                key,
                kind,
                per_s,
                burst,
                ", ".join(f"{n} {k}" for k, n in sorted(counts[0].items())) or "none",
                counts[1],
            )

    def _forget_idle(self, now: float) -> None:
        # Under the lock. A full bucket is what a new one would be: forget those;
        # if every bucket is in use, the oldest half.
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.at) * self.limits.rate(k[0])[0] >= self.limits.rate(k[0])[1]
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= _MAX_BUCKETS:
            for k in list(self._buckets)[: _MAX_BUCKETS // 2]:
                del self._buckets[k]

    def report(self, agent_id: str) -> FloodReport | None:
        """What ``agent_id`` had limited, or None (never, or no longer among the listed)."""
        with self._lock:
            entry = self._limited.get(agent_id)
            if entry is None:
                return None
            return FloodReport(agent_id, dict(entry[0]), int(entry[1][0]), entry[1][1])

    def reports(self) -> list[FloodReport]:
        """The agents limited (at most ``max_reported``, the most recent), by id."""
        with self._lock:
            items = [
                FloodReport(k, dict(d), int(t[0]), t[1]) for k, (d, t) in self._limited.items()
            ]
        return sorted(items, key=lambda r: r.agent_id)

    def expose(self, metrics: MetricsRegistry) -> None:
        """Serve ``mesh_edge_flood_limited{agent,kind}`` on ``metrics``, read at each scrape.

        Messages over the limit since start, per limited agent (the most recent
        ``max_reported``: the labels stay bounded) and ``kind``:
        ``heartbeat_dropped``, ``events_deferred`` or ``events_dropped``.
        """

        def read() -> list[tuple[tuple[str, ...], float]]:
            samples: list[tuple[tuple[str, ...], float]] = []
            for r in self.reports():
                for kind, n in sorted(r.dropped.items()):
                    samples.append(((r.agent_id, f"{kind}_dropped"), float(n)))
                if r.deferred:
                    samples.append(((r.agent_id, "events_deferred"), float(r.deferred)))
            return samples

        metrics.gauge_callback(
            "mesh_edge_flood_limited",
            "Messages an agent sent over its rate since start (dropped or deferred).",
            ("agent", "kind"),
            read,
        )
