"""Standing conditions: a condition that holds round after round triggers a plan once.

Some of the placement loop's triggers are events (a node joined, a pin
changed, an SLO miss newly marked); others are conditions read afresh every
round: a node overloaded, a violation the engine predicts for the current
placement. Re-planning every round while such a condition lasts is what made
a busy host spin the loop (a full engine plan, and the same "node overloaded"
line, every round for minutes) and so made the host busier. A
:class:`StandingConditions` lets each condition trigger a plan when it appears;
while it lasts, the loop plans again only for something new or at the period
(``ControllerSettings.period_s``). A condition that ends and comes back is new.

Example:
    >>> standing = StandingConditions()
    >>> standing.fresh("overloaded", ["fog-1"]), standing.fresh("overloaded", ["fog-1"])
    (['fog-1'], [])
    >>> standing.fresh("overloaded", ["fog-1", "fog-2"])
    ['fog-2']
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["StandingConditions"]


class StandingConditions:
    """What each kind of standing condition held at its last reading."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        """No condition seen yet."""
        self._held: dict[str, frozenset[str]] = {}

    def fresh(self, kind: str, conditions: Iterable[str]) -> list[str]:
        """The ``conditions`` of ``kind`` that did not hold at its last reading (sorted).

        Remembers ``conditions`` as what holds now: one not given is over.
        """
        now = frozenset(conditions)
        before = self._held.get(kind, frozenset())
        self._held[kind] = now
        return sorted(now - before)

    def held(self, kind: str) -> frozenset[str]:
        """The conditions of ``kind`` at its last reading."""
        return self._held.get(kind, frozenset())
