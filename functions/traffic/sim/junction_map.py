"""How any junction becomes the controller's four approach slots (pure functions).

The camera frame, the counter CNN and the controller all see a junction as
four approaches, ``north, east, south, west``
(:data:`functions.traffic.occupancy.APPROACHES`). A grid junction has exactly
those arms; a junction of a random network has three, four or five at any
angle. Two rules map one onto the other:

* :func:`assign_slots` — **bearing to slot**: each incoming road goes to the
  compass slot nearest the direction it comes from, no two roads in one slot
  while a slot is free: among all ways to give up to four roads a slot each,
  the one with the least total squared deviation wins (so a road at 40 deg
  takes ``east`` if another road at 10 deg holds ``north``). A slot no road
  maps to stays empty (its counts are always zero). Roads beyond four (a
  five-arm junction) **share** the slot nearest their bearing with the road
  that holds it: the camera draws both into that slot's frame, the counts
  add up, and the phase serving either serves the slot. The limit of four
  slots shows there: when the two roads go in different phases, the phase of
  the one sharing the slot with the other (``{south}`` beside
  ``{north, south}``) never out-pressures the other phase, and its road is
  served only when that one is empty or blocked (on the default random net
  all 14 teleports of the adaptive controller at ``medium``, seed 0, are on
  such a road). Per-road approaches (a layout of five) would fix it; the
  camera frame, the counter and the live relay are four-wide today.
* :func:`served_approaches` — **phase derivation**: the approaches each green
  phase of the junction's real program serves, read off its signal states
  rather than assumed north-south / east-west. An approach is served by a
  phase when more than half of its controlled links show green there (a
  right turn that is green in every phase, or a short protected left-turn
  phase, does not make the whole approach served); an approach that no phase
  serves so gets the phases where the largest share of its links is green,
  so no approach with vehicles is left without a phase. The rule runs per
  road, then maps roads to slots: a shared slot is served by every phase that
  serves one of its roads. On a grid every
  approach is all green or all red in each phase, so this is exactly "the
  approaches with a green link".
  The controller picks phases by index into this tuple, so it can only ever
  ask for a phase the program has.

Example:
    >>> assign_slots({"a": 10.0, "b": 40.0, "c": 200.0})
    {'north': ('a',), 'east': ('b',), 'south': ('c',), 'west': ()}
    >>> served_approaches(["GGgrr", "rrrGG"], ["north", "north", "north", "east", "east"])
    (frozenset({'north'}), frozenset({'east'}))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

__all__ = ["SLOT_BEARINGS", "angle_between", "assign_slots", "bearing", "served_approaches"]

#: Compass bearing (degrees clockwise from north) of each slot: where its vehicles come from.
SLOT_BEARINGS: Mapping[str, float] = {"north": 0.0, "east": 90.0, "south": 180.0, "west": 270.0}
_GREEN = frozenset("Gg")


def bearing(dx: float, dy: float) -> float:
    """Compass bearing in ``[0, 360)`` of the vector ``(dx, dy)`` (x east, y north).

    Example:
        >>> bearing(0.0, 1.0), bearing(1.0, 0.0), bearing(-1.0, -1.0)
        (0.0, 90.0, 225.0)
    """
    if dx == 0.0 and dy == 0.0:
        raise ValueError("a zero vector has no bearing")
    return math.degrees(math.atan2(dx, dy)) % 360.0


def angle_between(a: float, b: float) -> float:
    """The smaller angle between two bearings, in ``[0, 180]``.

    Example:
        >>> angle_between(350.0, 10.0)
        20.0
    """
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def assign_slots(bearings: Mapping[str, float]) -> dict[str, tuple[str, ...]]:
    """Slot -> the roads drawn into it (the one holding it first), by bearing.

    ``bearings`` maps each incoming road to the compass bearing it comes from,
    seen from the junction. See the module docstring for the rule; ties go to
    the slot order ``north, east, south, west`` and then the roads' names, so
    the result is deterministic.

    Example:
        >>> assign_slots({"a": 0.0, "b": 90.0, "c": 170.0, "d": 200.0, "e": 270.0})["south"]
        ('c', 'd')
    """
    slots = tuple(SLOT_BEARINGS)
    roads = sorted(bearings)
    k = min(len(roads), len(slots))

    def cost(pairs: Sequence[tuple[str, str]]) -> float:
        return sum(angle_between(bearings[r], SLOT_BEARINGS[s]) ** 2 for r, s in pairs)

    best: tuple[tuple[str, str], ...] = ()
    best_cost = math.inf
    # At most 5P4 = 120 candidates for a five-arm junction (the choice of the four
    # roads that hold a slot, then their slots); every loop is bounded by them.
    for chosen in itertools.permutations(roads, k):
        for placed in itertools.permutations(slots, k):
            pairs = tuple(zip(chosen, placed, strict=True))
            c = cost(pairs)
            if c < best_cost - 1e-9:
                best, best_cost = pairs, c
    held = {s: r for r, s in best}
    out: dict[str, list[str]] = {s: ([held[s]] if s in held else []) for s in slots}
    for road in roads:
        if road in held.values():
            continue
        nearest = min(slots, key=lambda s: angle_between(bearings[road], SLOT_BEARINGS[s]))
        out[nearest].append(road)
    return {s: tuple(v) for s, v in out.items()}


def served_approaches(
    greens: Sequence[str],
    link_approach: Sequence[str | None],
    slot_of: Mapping[str, str] | None = None,
) -> tuple[frozenset[str], ...]:
    """The approaches each green phase serves, from the program's signal states.

    Args:
        greens: each green phase's state string (one character per controlled link).
        link_approach: the road (or approach) each link comes from; None for a
            link from no observed road.
        slot_of: road -> the slot it is drawn into (default: each road is its own slot).

    Example:
        >>> links = ["w", "w", "e", "e", "e", "e", "s", "s"]
        >>> [sorted(p) for p in served_approaches(["GGGGGgrr", "GrrrrrGG"], links)]
        [['e', 'w'], ['s']]
    """
    for state in greens:
        if len(state) != len(link_approach):
            raise ValueError(
                f"state {state!r} has {len(state)} links, expected {len(link_approach)}"
            )
    approaches = sorted({a for a in link_approach if a is not None})
    links = {a: [k for k, x in enumerate(link_approach) if x == a] for a in approaches}
    share = [
        {a: sum(state[k] in _GREEN for k in links[a]) / len(links[a]) for a in approaches}
        for state in greens
    ]
    served: list[set[str]] = [{a for a in approaches if s[a] > 0.5} for s in share]
    for a in approaches:
        if any(a in p for p in served):
            continue
        most = max((s[a] for s in share), default=0.0)
        if most <= 0.0:
            continue  # never green: no phase serves it
        for p, s in zip(served, share, strict=True):
            if s[a] == most:
                p.add(a)
    slot = slot_of or {}
    return tuple(frozenset(slot.get(a, a) for a in p) for p in served)
