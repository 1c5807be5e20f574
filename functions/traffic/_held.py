"""Held counts: a dropped frame is not an empty road.

The signal controller (:mod:`functions.traffic.control`) holds the last value
of every count that did not come (``None``) or is not finite.

Example:
    >>> hold((None, 3.0), (2.0, 1.0))
    (2.0, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["hold", "hold_segments"]


def hold(new: Sequence[float | None] | None, old: tuple[float, ...]) -> tuple[float, ...]:
    """Fresh values where present and finite; the last ones elsewhere."""
    if new is None:
        return old
    if len(new) != len(old):
        raise ValueError(f"expected {len(old)} values, got {len(new)}")
    return tuple(
        old[i] if v is None or not math.isfinite(float(v)) else max(0.0, float(v))
        for i, v in enumerate(new)
    )


def hold_segments(
    new: Sequence[Sequence[float | None] | None] | None,
    old: tuple[tuple[float, ...], ...],
    counts: tuple[float, ...],
    num_segments: int,
) -> tuple[tuple[float, ...], ...]:
    """Fresh segment counts where present, the last ones elsewhere; cumulative, within the count."""
    if new is None and not any(any(s) for s in old):
        # No segment counts at all: assume every vehicle may be near (no gap-out on guesses).
        return tuple((c,) * num_segments for c in counts)
    if new is not None and len(new) != len(old):
        raise ValueError(f"expected segments for {len(old)} approaches, got {len(new)}")
    held = []
    for i, prev in enumerate(old):
        fresh = hold(None if new is None else new[i], prev)
        # Cumulative and never above the whole approach.
        running = 0.0
        row = []
        for v in fresh:
            running = max(running, v)
            row.append(min(running, counts[i]))
        held.append(tuple(row))
    return tuple(held)
