"""The actuator bridge: a plan names a green phase, the actuator switches the signal safely.

A plan only says which green phase a junction should serve.
:class:`SignalActuator` stands in front of the simulator and owns safety: a
switch waits for the minimum green and always passes through yellow (the
links losing green turn yellow: :func:`transition_state`), so no plan, late or
wrong, can make an unsafe switch; without plans for a while it rotates the
phases itself. It is pure Python over SUMO's signal state strings (one
character per controlled link) and never calls SUMO:
:class:`~functions.traffic.sim.session.SumoSession` sets the states it returns.

Example:
    >>> transition_state("GGgrrr", "rrrGGg")
    'yyyrrr'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = ["GREEN_LINKS", "SignalActuator", "transition_state"]

#: Link states that let traffic through (SUMO's priority and yielding green).
GREEN_LINKS = frozenset("Gg")


def transition_state(current: str, target: str) -> str:
    """The yellow state between two signal states: links losing green turn ``y``.

    Links green in both keep the target's state; every other link is red.

    Example:
        >>> transition_state("GGgrrr", "rrrGGg")
        'yyyrrr'
    """
    if len(current) != len(target):
        raise ValueError(f"states differ in length: {current!r} vs {target!r}")
    out = []
    for now, nxt in zip(current, target, strict=True):
        if now in GREEN_LINKS and nxt not in GREEN_LINKS:
            out.append("y")
        elif now in GREEN_LINKS and nxt in GREEN_LINKS:
            out.append(nxt)
        else:
            out.append("r")
    return "".join(out)


class SignalActuator:
    """Safe signal switching for one junction: minimum green, then yellow, then the new green.

    Plans only name the green phase wanted (:meth:`request`); :meth:`tick`
    decides the signal state for each step. A switch starts once the current
    green has lasted ``min_green_s``; links that lose green show yellow for
    ``yellow_s`` (then ``all_red_s`` of red, if any) before the new green. A
    request that arrives during yellow re-targets the switch only to a phase
    reachable safely (otherwise it waits for the next green). Without a request
    for ``fallback_after_s`` (the fog is gone) it rotates the phases itself with
    ``fallback_green_s`` greens. ``history`` records every state change.

    Example:
        >>> act = SignalActuator(["GGrr", "rrGG"], yellow_s=3, min_green_s=5)
        >>> act.request(1, now=0.0)
        >>> [act.tick(float(t)) for t in range(0, 12, 2)]
        ['GGrr', 'GGrr', 'GGrr', 'yyrr', 'yyrr', 'rrGG']
    """

    def __init__(
        self,
        greens: Sequence[str],
        *,
        yellow_s: float = 3.0,
        min_green_s: float = 5.0,
        all_red_s: float = 0.0,
        start_phase: int = 0,
        fallback_after_s: float | None = None,
        fallback_green_s: float = 30.0,
        now: float = 0.0,
    ) -> None:
        """Start in ``start_phase``'s green at ``now``."""
        if not greens or len({len(g) for g in greens}) != 1:
            raise ValueError(f"greens must be non-empty states of one length, got {greens!r}")
        if yellow_s <= 0 or min_green_s < 0 or all_red_s < 0:
            raise ValueError(
                f"need yellow_s > 0, min_green_s >= 0, all_red_s >= 0; got {yellow_s}, "
                f"{min_green_s}, {all_red_s}"
            )
        self.greens = tuple(greens)
        self.yellow_s = float(yellow_s)
        self.min_green_s = float(min_green_s)
        self.all_red_s = float(all_red_s)
        self.fallback_after_s = fallback_after_s
        self.fallback_green_s = float(fallback_green_s)
        self._check(start_phase)
        self.phase = start_phase
        self.stage: Literal["green", "yellow", "red"] = "green"
        self.stage_since = now
        self.green_since = now
        self.target = start_phase
        self.wanted = start_phase
        self.last_request_s = now
        self.requests = 0
        self.switches = 0
        self.state = self.greens[start_phase]
        self.history: list[tuple[float, str]] = [(now, self.state)]

    def _check(self, phase: int) -> None:
        if not 0 <= phase < len(self.greens):
            raise ValueError(f"phase {phase} out of range 0..{len(self.greens) - 1}")

    def request(self, phase: int, now: float) -> None:
        """Ask for ``phase``'s green; it comes as soon as it is safe."""
        self._check(phase)
        self.wanted = phase
        self.last_request_s = now
        self.requests += 1

    def green_elapsed(self, now: float) -> float:
        """Seconds the current green has shown (0 outside green)."""
        return now - self.green_since if self.stage == "green" else 0.0

    def tick(self, now: float) -> str:
        """The signal state from ``now`` until the next tick."""
        if (
            self.fallback_after_s is not None
            and now - self.last_request_s > self.fallback_after_s
            and self.stage == "green"
            and now - self.green_since >= self.fallback_green_s
        ):
            self.wanted = (self.phase + 1) % len(self.greens)
        if self.stage == "green":
            if self.wanted != self.phase and now - self.green_since >= self.min_green_s:
                self.target = self.wanted
                yellow = transition_state(self.greens[self.phase], self.greens[self.target])
                if "y" in yellow:
                    self._enter("yellow", yellow, now)
                else:
                    self._enter_green(now)
        elif self.stage == "yellow" and now - self.stage_since >= self.yellow_s:
            if self.all_red_s > 0:
                red = "".join(
                    c if c in GREEN_LINKS and self.state[i] in GREEN_LINKS else "r"
                    for i, c in enumerate(self.greens[self.target])
                )
                self._enter("red", red, now)
            else:
                self._enter_green(now)
        elif self.stage == "red" and now - self.stage_since >= self.all_red_s:
            self._enter_green(now)
        return self.state

    def _enter(self, stage: Literal["green", "yellow", "red"], state: str, now: float) -> None:
        self.stage = stage
        self.stage_since = now
        self._set(state, now)

    def _enter_green(self, now: float) -> None:
        self.phase = self.target
        self.green_since = now
        self.switches += 1
        self._enter("green", self.greens[self.phase], now)

    def _set(self, state: str, now: float) -> None:
        if state != self.state:
            self.state = state
            self.history.append((now, state))
