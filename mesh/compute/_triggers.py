"""Trigger policies: when a schedule is due, what a missed firing becomes, debounce.

Pure functions and small state holders over times in seconds since the epoch
(UTC); nothing here reads a clock or sleeps, so the engine
(:mod:`mesh.compute._scheduler`) and its tests decide what "now" is. The
policies are Kubernetes CronJob's: a firing later than ``grace_s`` (CronJob's
``startingDeadlineSeconds``) is *missed*, and ``missed="catch_up_once"`` runs
once for every firing missed in a row, ``"skip"`` drops them; while a run of
the trigger still runs, ``concurrency`` forbids a new one, allows it, or
replaces the old one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from cronsim import CronSim

from mesh.sdk._specs import _CRON_NICKNAMES

__all__ = [
    "Clock",
    "CronTimes",
    "Debounce",
    "FiringTimes",
    "IntervalTimes",
    "ScheduleDecision",
    "admit",
    "schedule_decision",
]

# Firings counted within one grace window; a cron fires at most once a minute, so
# a window of a day is 1,440 and this bound only stops a pathological grace_s.
_MAX_FIRINGS = 10_000


class Clock(Protocol):
    """Where the engine reads "now": the wall clock, a scenario's simulated time, a test."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class CronTimes:
    """A cron schedule's firing times, as epoch seconds in UTC.

    Example:
        >>> CronTimes("*/5 * * * *").next_after(0.0)
        300.0
    """

    def __init__(self, schedule: str) -> None:
        """Parse ``schedule`` (five fields or a nickname; validated by the spec)."""
        self.schedule = schedule
        self._expression = _CRON_NICKNAMES.get(schedule.strip().lower(), schedule)

    def next_after(self, at: float) -> float:
        """The first firing strictly after ``at``."""
        start = datetime.fromtimestamp(at, tz=UTC)
        return next(CronSim(self._expression, start)).timestamp()


class FiringTimes(Protocol):
    """A schedule's firing times."""

    def next_after(self, at: float) -> float:
        """The first firing strictly after ``at`` (``inf``: none)."""
        ...


class IntervalTimes:
    """Every ``every_s`` from ``start_s``; with ``every_s`` None, once at ``start_s``.

    Example:
        >>> IntervalTimes(every_s=300, start_s=60).next_after(60.0)
        360.0
        >>> IntervalTimes(every_s=None, start_s=60).next_after(60.0)
        inf
    """

    def __init__(self, *, every_s: float | None, start_s: float) -> None:
        """Fire at ``start_s`` and (with ``every_s``) every ``every_s`` after it."""
        self.every_s = every_s
        self.start_s = start_s

    def next_after(self, at: float) -> float:
        """The first firing strictly after ``at``."""
        if at < self.start_s:
            return float(self.start_s)
        if self.every_s is None:
            return math.inf
        steps = math.floor((at - self.start_s) / self.every_s) + 1
        return float(self.start_s + steps * self.every_s)


@dataclass(frozen=True, slots=True)
class ScheduleDecision:
    """What a schedule does at one look at the clock.

    Attributes:
        fire_at: the scheduled time of the run to start now; None = no run.
        missed: firings that were due but later than ``grace_s`` (dropped, or
            folded into ``fire_at`` by ``catch_up_once``).
        cursor: the latest firing time considered; the next look starts after it.
    """

    fire_at: float | None
    missed: int
    cursor: float


def schedule_decision(
    times: FiringTimes,
    *,
    cursor: float,
    now: float,
    grace_s: float,
    missed: Literal["skip", "catch_up_once"],
) -> ScheduleDecision:
    """Which firing (if any) to start at ``now``, given every firing after ``cursor`` handled.

    A firing no older than ``grace_s`` starts; older ones are missed. With
    several on time (a long tick) only the latest starts: a schedule never
    starts two runs at one look.

    Example:
        >>> d = schedule_decision(CronTimes("* * * * *"), cursor=0.0, now=61.0,
        ...                       grace_s=10, missed="skip")
        >>> (d.fire_at, d.missed, d.cursor)
        (60.0, 0, 60.0)
    """
    first = times.next_after(cursor)
    if first > now:
        return ScheduleDecision(None, 0, cursor)
    deadline = now - grace_s
    late, last_late, at = _late(times, first, deadline)
    on_time: float | None = None
    for _ in range(_MAX_FIRINGS):
        if at > now:
            break
        on_time = at
        at = times.next_after(at)
    if on_time is not None:
        return ScheduleDecision(on_time, late, on_time)
    assert last_late is not None  # first <= now, and not on time: late
    fire_at = last_late if missed == "catch_up_once" else None
    return ScheduleDecision(fire_at, late, last_late)


def _late(times: FiringTimes, first: float, deadline: float) -> tuple[int, float | None, float]:
    """How many firings from ``first`` are before ``deadline``, the last of them, the next."""
    count, last, at = 0, None, first
    for _ in range(_MAX_FIRINGS):
        if at >= deadline:
            return count, last, at
        count, last = count + 1, at
        at = times.next_after(at)
    # So many were missed that counting on is pointless: go on from the window.
    return count, last, times.next_after(deadline - 1e-6)


def admit(
    policy: Literal["forbid", "allow", "replace"], running: int
) -> Literal["start", "skip", "replace"]:
    """What a firing does with ``running`` runs of its trigger still running.

    Example:
        >>> admit("forbid", 1), admit("allow", 1), admit("replace", 1), admit("forbid", 0)
        ('skip', 'start', 'replace', 'start')
    """
    if running == 0 or policy == "allow":
        return "start"
    return "skip" if policy == "forbid" else "replace"


class Debounce:
    """One burst of messages fires once, ``quiet_s`` after its last message.

    A stream that never pauses still fires, every ``max_wait_s`` (ten quiet
    periods), so a busy topic is not starved. Not thread-safe: the engine's
    loop owns it.

    Example:
        >>> d = Debounce(quiet_s=1.0)
        >>> d.message(0.0, "a"); d.message(0.5, "b")
        >>> d.due(1.0), d.due(1.5)
        (None, 'b')
    """

    def __init__(self, quiet_s: float) -> None:
        """Fire ``quiet_s`` after the last message of a burst."""
        self.quiet_s = quiet_s
        self.max_wait_s = max(10 * quiet_s, quiet_s)
        self._first: float | None = None
        self._last = 0.0
        self._payload: Any = None
        self.messages = 0

    def message(self, at: float, payload: Any) -> None:
        """A message arrived at ``at``; the latest payload is the one passed on."""
        if self._first is None:
            self._first = at
        self._last = at
        self._payload = payload
        self.messages += 1

    def due(self, now: float) -> Any:
        """The burst's last payload when it should fire now (once), else None."""
        if self._first is None:
            return None
        if now - self._last < self.quiet_s and now - self._first < self.max_wait_s:
            return None
        payload, self._first, self._payload = self._payload, None, None
        return payload
