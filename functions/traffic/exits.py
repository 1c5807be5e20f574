"""Exit roads as the signal controller sees them: how full, how fast filling, how much room.

An approach's exit road is the neighbour's camera count of the arm its
straight-on traffic enters (a border exit is free: 0). The controller
(:mod:`functions.traffic.control`) keeps each exit's trend, its rise per
second smoothed over a few seconds (:func:`exit_trend`), and judges an exit
by its count plus that rise some seconds ahead (:func:`exit_room`): spillback
is seen while the exit is still filling, not once it is full.

Example:
    >>> now = (21.0, 0.0)  # exit counts a second after (10, 0)
    >>> rate, at = exit_trend((0.0, 0.0), now, (10.0, 0.0), now, t=1.0, at_s=0.0, trend_s=10.0)
    >>> [round(r, 3) for r in rate], at
    ([1.0, 0.0], 1.0)
    >>> [round(r, 3) for r in exit_room(now, rate, limit_veh=34.0, lookahead_s=10.0)]
    [3.0, 34.0]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["exit_room", "exit_trend"]


def exit_trend(
    rate: Sequence[float],
    fresh: Sequence[float | None] | None,
    previous: Sequence[float],
    current: Sequence[float],
    *,
    t: float,
    at_s: float | None,
    trend_s: float,
) -> tuple[tuple[float, ...], float | None]:
    """Each exit's rise per second, an exponential average over ``trend_s``.

    Args:
        rate: the trend so far (veh/s per exit).
        fresh: this observation's exit counts (None: none came; the trend is held).
        previous: the exit counts at ``at_s``.
        current: the exit counts now (held where a value was missing).
        t: now.
        at_s: when exit counts last came (None: never).
        trend_s: smoothing time (s); a step of ``dt`` weighs ``dt / (dt + trend_s)``.

    Returns:
        The new trend and the time of the counts it is based on.
    """
    rate = tuple(rate) or (0.0,) * len(current)
    if fresh is None:
        return rate, at_s
    if at_s is None or t <= at_s:
        return rate, t if at_s is None else at_s
    dt = t - at_s
    alpha = dt / (dt + trend_s)
    return (
        tuple(
            r + alpha * ((new - old) / dt - r)
            for r, new, old in zip(rate, current, previous, strict=True)
        ),
        t,
    )


def exit_room(
    downstream: Sequence[float],
    rate: Sequence[float],
    *,
    limit_veh: float,
    lookahead_s: float,
) -> tuple[float, ...]:
    """Per exit, the vehicles it still takes before it counts as full.

    Its count plus ``lookahead_s`` seconds of its rise (a falling exit is taken
    as it is) against ``limit_veh``; 0 means the exit is held (full or
    filling). A border exit (count and trend 0) has the whole limit.

    Example:
        >>> room = exit_room((40, 30, 20, 0), (0, 1, -1, 0), limit_veh=40.8, lookahead_s=10.0)
        >>> [round(r, 1) for r in room]
        [0.8, 0.8, 20.8, 40.8]
    """
    return tuple(
        max(0.0, limit_veh - d - lookahead_s * max(0.0, r))
        for d, r in zip(downstream, rate, strict=True)
    )
