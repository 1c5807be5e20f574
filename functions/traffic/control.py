"""Adaptive signal control: per-approach vehicle counts in, signal plans out.

The controller is pure Python with explicit state (:func:`decide` returns the
next :class:`ControllerState` and a :class:`Decision`), so it runs the same in
the benchmark, in tests and as the fog stream function
:func:`functions.traffic.signals.signal_plan`.

Each decision (every second or so) sees, per approach, what the counter CNN
reads off the junction's camera frame: the vehicles on the whole approach, the
cumulative counts within 15/30/60/120 m of the stop line (the same frame with
the cells beyond blanked: an arrival profile), and the standing vehicles (the
counter run on the still part of two consecutive frames); optionally the
vehicles on each approach's exit road (the neighbour's camera) and a
short-term forecast: the mean number of vehicles the flow forecaster
predicts on each approach over the next minute. A missing value holds the
last one (a dropped frame is not an empty road); counts under half a vehicle
are none (counter noise).
Exits, and how the controller degrades into oversaturation: each approach's
exit road (the neighbour's count of its straight-on arm; a border exit is
free) is watched with its trend (the rise per second, smoothed over
``exit_trend_s``). An exit is **held** when it is full or filling: its count,
plus ``exit_lookahead_s`` seconds of its rise, reaches ``spillback_ratio`` of
its capacity. The vehicles of an approach whose exit is held cannot leave, so
they are not **movable**; a phase's movable vehicles are those on its
approaches with free exits, each approach counted at most up to the room left
on its exit (what a green there can really discharge).

Once the green has lasted ``min_green_s``:

1. **skip stuck phases** — only phases with movable vehicles are candidates
   (an empty phase, or one whose exits are held, gets no green); none: keep
   the green (every other phase is empty or blocked);
2. **gridlock prevention** — leave a green with no movable vehicles (all its
   exits held, spillback detected early by the trend): the junction yields to
   the phases that can move instead of holding a green that moves nobody and
   feeds the jam;
3. **empty green** — nobody on the served approaches: switch now;
4. **max green** — ``max_green_s`` bounds the wait on the other side;
   **max red** — no phase with movable vehicles stays red longer than
   ``max_red_s``: the one red longest gets the next green. Max-pressure alone
   can pass over a phase whose pressure is always lower (a T's side road, a
   fifth road sharing an approach slot) for as long as the others stay busy.
   With two phases a red outlasts max green only while the other phase
   cannot move (rule 1 keeps the green); on the 3x3 and 4x4 grids the rule
   changed no figure (directional, peak+10, peak+20, exact counts, seeds
   0-2). On the random
   network (``bench/traffic.py --grid rand``, seeds 0-2, exact counts) the
   medium level's mean wait fell from 60.8 s to 23.2 s;
   **saturated green** — when queues cannot clear (the green and the best
   other phase each have more than ``saturation_veh`` movable vehicles
   standing), the green lasts at least ``saturated_green_s``: fewer
   switches lose less time to yellows and starts, so the junction carries
   more when demand exceeds what it can serve;
5. **pressure** — max-pressure with hysteresis on movable vehicles
   (throughput-aware: a queue that cannot leave adds no pressure): switch
   when another phase's pressure (its movable vehicles, minus
   ``downstream_weight`` times those on its exits) exceeds the current one's
   by ``pressure_margin`` — what keeps a saturated grid moving. Where roads
   differ in length (``JunctionLayout.storage_veh``), each vehicle counts as
   the share of its road it fills: a full 180 m road presses no harder than a
   full 130 m one, so a long entry road cannot hold the green while a shorter
   road fed by the next junction fills and spills back into it (random net,
   seeds 0-2, exact counts, mean wait against actuated's: peak 1.53x ->
   1.41x, peak+20 1.73x -> 1.54x; on the 3x3 grid, whose border roads are
   190 m and inner ones 179 m, no level moved beyond its seeds' spread);
6. **queue clearance** — no gap-out while more than ``clear_queue_veh``
   movable vehicles still stand on the green: the gap-out (rule 7) sees
   vehicles by their distance, so a standing queue's head (within 15 m) looks
   as if it crossed at once however long the queue takes to discharge; cut
   there, the queue's tail creeps up and stops again (time loss without
   waiting time). The queue, not a fixed floor, sets how long a green lasts,
   so ``min_green_s`` is 4 s (5 before): a green for a few vehicles ends
   sooner. A small queue does not hold the green (a left turner waiting for
   a gap would hold it for nothing). On 3x3, seeds 0-2, exact counts: 1, 2,
   4 and 5 vehicles raised the peak's time loss, 10 tipped a seed into
   near-gridlock, 8 was best (peak, 9 seeds: time loss 0.97x -> 0.94x
   delay_based's); peak+20 no longer gridlocked on seed 2 (issue 20);
7. **look-ahead gap-out** — otherwise keep the green while the vehicles about
   to cross on it outweigh the wait it costs the other side: a vehicle ``tau``
   seconds from the stop line that a switch cuts off waits about ``red_s -
   tau`` (yellow, the other green, yellow, stop and start), while each second
   of green costs every standing vehicle on the other side a second (moving
   ones count ``moving_weight``). Arrival times subtract the plan's
   ``latency_s``: vehicles that cross before a plan lands need no green from
   it. Only approaches with free exits count: no green is extended into a
   full or filling exit.

A forecast sharpens rules 5 and 7 as a trend: an approach predicted to hold
more vehicles over the next minute than it holds now counts
``forecast_weight`` times the difference more, in its phase's pressure and
in the waiting side of the gap-out (a filling approach wins a near-tie; an
emptying one is not discounted). Which phases have vehicles to serve (rules
1 and 3) goes by the camera alone, so a forecast never calls a green for an
empty road; without a forecast nothing changes.

Yellow and minimum green are modelled here (the controller knows when its
switch completes) and enforced again by the actuator in front of the
simulator, so a late or wrong plan is never unsafe.

Example:
    >>> layout = JunctionLayout.two_phase()
    >>> ctl = SignalController(layout)
    >>> ctl.step(Observation(t=10.0, counts=(0, 3, 0, 2))).phase   # nobody on north-south
    1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ._held import hold, hold_segments
from .control_config import ControllerConfig
from .exits import exit_room, exit_trend
from .occupancy import APPROACHES

__all__ = [
    "ControllerConfig",
    "ControllerState",
    "Decision",
    "JunctionLayout",
    "Observation",
    "SignalController",
    "SignalReport",
    "decide",
    "initial_state",
]

Stage = Literal["green", "yellow"]


# -- model -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JunctionLayout:
    """What the controller knows of a junction: its approaches and the phases that serve them.

    Attributes:
        phases: the approaches each green phase serves, by phase index.
        approaches: the order of counts in an :class:`Observation`.
        capacity_veh: vehicles an approach (or an exit road) holds when jammed.
        storage_veh: what each approach (in :attr:`approaches` order) holds when
            jammed, where roads differ (empty: ``capacity_veh`` each). Rule 5
            weighs an approach's vehicles by ``capacity_veh`` over its own.
    """

    phases: tuple[frozenset[str], ...]
    approaches: tuple[str, ...] = APPROACHES
    capacity_veh: float = 48.0
    storage_veh: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        """Check that phases name known approaches."""
        if not self.phases:
            raise ValueError("a junction needs at least one phase")
        unknown = {a for p in self.phases for a in p} - set(self.approaches)
        if unknown:
            raise ValueError(f"phases name unknown approaches {sorted(unknown)}")
        if self.storage_veh and (
            len(self.storage_veh) != len(self.approaches) or min(self.storage_veh) <= 0
        ):
            raise ValueError(
                f"storage_veh needs one value > 0 per approach ({len(self.approaches)}), "
                f"got {self.storage_veh}"
            )

    @classmethod
    def two_phase(cls, capacity_veh: float = 48.0) -> JunctionLayout:
        """North-south, then east-west: the grid's programs."""
        return cls(
            phases=(frozenset({"north", "south"}), frozenset({"east", "west"})),
            capacity_veh=capacity_veh,
        )


@dataclass(frozen=True, slots=True)
class SignalReport:
    """The signal as the junction reports it: phase served (or left), stage, time in stage."""

    phase: int
    stage: str = "green"
    elapsed_s: float = 0.0
    target: int | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """One decision's input; per-approach values follow :attr:`JunctionLayout.approaches`.

    ``counts`` are the vehicles on each whole approach; ``segments`` (optional)
    each approach's cumulative counts within :attr:`ControllerConfig.segments_m`
    of the stop line; ``queued`` (optional) the standing vehicles (counted on
    the still part of two consecutive frames). ``None`` anywhere (or a missing sequence) means not
    received: the controller holds the last value. ``forecast`` (optional) is
    the predicted mean number of vehicles on each approach over the next
    minute; it is not held (``None`` for an approach: no forecast there).
    """

    t: float
    counts: Sequence[float | None]
    segments: Sequence[Sequence[float | None] | None] | None = None
    queued: Sequence[float | None] | None = None
    downstream: Sequence[float | None] | None = None
    forecast: Sequence[float | None] | None = None
    signal: SignalReport | None = None


@dataclass(frozen=True, slots=True)
class ControllerState:
    """Everything the controller carries between decisions (JSON-able via :meth:`as_dict`)."""

    phase: int
    stage: Stage
    stage_since_s: float
    green_since_s: float
    target: int
    counts: tuple[float, ...]
    segments: tuple[tuple[float, ...], ...]
    queued: tuple[float, ...]
    downstream: tuple[float, ...]
    counts_at_s: float
    committed_at_s: float | None = None
    decisions: int = 0
    switches: int = 0
    #: Each exit's trend (veh/s; empty: none yet) and when its counts last came.
    exit_rate: tuple[float, ...] = ()
    exit_at_s: float | None = None
    #: When each phase last showed green (rule 4's max red; empty: not yet).
    served_at_s: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain fields for a message."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["segments"] = [list(s) for s in self.segments]
        out["exit_rate"] = list(self.exit_rate)
        out["served_at_s"] = list(self.served_at_s)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControllerState:
        """Rebuild from :meth:`as_dict`."""
        committed = data.get("committed_at_s")
        exit_at = data.get("exit_at_s")
        return cls(
            phase=int(data["phase"]),
            stage="yellow" if data.get("stage") == "yellow" else "green",
            stage_since_s=float(data["stage_since_s"]),
            green_since_s=float(data["green_since_s"]),
            target=int(data["target"]),
            counts=tuple(float(x) for x in data["counts"]),
            segments=tuple(tuple(float(x) for x in s) for s in data["segments"]),
            queued=tuple(float(x) for x in data["queued"]),
            downstream=tuple(float(x) for x in data["downstream"]),
            counts_at_s=float(data["counts_at_s"]),
            committed_at_s=None if committed is None else float(committed),
            decisions=int(data.get("decisions", 0)),
            switches=int(data.get("switches", 0)),
            exit_rate=tuple(float(x) for x in data.get("exit_rate", ())),
            exit_at_s=None if exit_at is None else float(exit_at),
            served_at_s=tuple(float(x) for x in data.get("served_at_s", ())),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan: the green phase to serve (now or after the yellow), and why."""

    phase: int
    reason: str
    switch: bool = False
    pressures: tuple[float, ...] = field(default_factory=tuple)


def initial_state(
    layout: JunctionLayout,
    config: ControllerConfig | None = None,
    *,
    t: float = 0.0,
    phase: int = 0,
) -> ControllerState:
    """A controller that has just started ``phase``'s green at ``t`` and seen nothing yet."""
    if not 0 <= phase < len(layout.phases):
        raise ValueError(f"phase {phase} out of range 0..{len(layout.phases) - 1}")
    config = config or ControllerConfig()
    zeros = (0.0,) * len(layout.approaches)
    return ControllerState(
        phase=phase,
        stage="green",
        stage_since_s=t,
        green_since_s=t,
        target=phase,
        counts=zeros,
        segments=((0.0,) * len(config.segments_m),) * len(layout.approaches),
        queued=zeros,
        downstream=zeros,
        counts_at_s=t,
    )


# -- the rule ----------------------------------------------------------------------


def _advance_signal(
    state: ControllerState, obs: Observation, config: ControllerConfig
) -> ControllerState:
    """Bring the modelled signal to ``obs.t``: from the junction's report, or by the clock."""
    t = obs.t
    report = obs.signal
    if report is not None:
        if report.stage == "green":
            # A switch asked for and not shown yet (the plan is in flight) stays asked for.
            pending = (
                state.committed_at_s is not None
                and state.target != report.phase
                and t - state.committed_at_s <= config.commit_s
            )
            return replace(
                state,
                phase=report.phase,
                stage="green",
                stage_since_s=t - report.elapsed_s,
                green_since_s=t - report.elapsed_s,
                target=state.target if pending else report.phase,
                committed_at_s=state.committed_at_s if pending else None,
                switches=state.switches + (report.phase != state.phase),
            )
        return replace(
            state,
            phase=report.phase,
            stage="yellow",
            stage_since_s=t - report.elapsed_s,
            target=report.target if report.target is not None else state.target,
            committed_at_s=None,
        )
    if state.stage == "green" and state.committed_at_s is not None:
        # Our own model: the switch we asked for starts its yellow now.
        return replace(state, stage="yellow", stage_since_s=state.committed_at_s)
    if state.stage == "yellow" and t - state.stage_since_s >= config.yellow_s:
        since = state.stage_since_s + config.yellow_s
        return replace(
            state,
            phase=state.target,
            stage="green",
            stage_since_s=since,
            green_since_s=since,
            committed_at_s=None,
            switches=state.switches + 1,
        )
    return state


def _forecast_rise(
    forecast: Sequence[float | None] | None,
    counts: tuple[float, ...],
    config: ControllerConfig,
) -> tuple[float, ...]:
    """Per approach, ``forecast_weight`` times how far the forecast exceeds the count."""
    if forecast is not None and len(forecast) != len(counts):
        raise ValueError(f"expected {len(counts)} forecast values, got {len(forecast)}")
    if forecast is None or config.forecast_weight == 0:
        return (0.0,) * len(counts)
    return tuple(
        0.0
        if f is None or not math.isfinite(float(f))
        else config.forecast_weight * max(0.0, float(f) - c)
        for f, c in zip(forecast, counts, strict=True)
    )


def decide(
    layout: JunctionLayout,
    config: ControllerConfig,
    state: ControllerState,
    obs: Observation,
) -> tuple[ControllerState, Decision]:
    """One decision: the next state and the plan (see the module docstring for the rule).

    Deterministic: the same state and observation give the same result.
    """
    counts = hold(obs.counts, state.counts)
    fresh = all(v is not None for v in obs.counts)
    segments = hold_segments(obs.segments, state.segments, counts, len(config.segments_m))
    downstream = hold(obs.downstream, state.downstream)
    if obs.queued is None:
        # No still frames: the vehicles at the stop line stand for the queue.
        queued = tuple(seg[0] for seg in segments)
    else:
        queued = tuple(
            min(q, n) for q, n in zip(hold(obs.queued, state.queued), counts, strict=True)
        )
    exit_rate, exit_at_s = exit_trend(
        state.exit_rate,
        obs.downstream,
        state.downstream,
        downstream,
        t=obs.t,
        at_s=state.exit_at_s,
        trend_s=config.exit_trend_s,
    )
    state = _advance_signal(state, obs, config)
    state = replace(
        state,
        counts=counts,
        segments=segments,
        queued=queued,
        downstream=downstream,
        counts_at_s=obs.t if fresh else state.counts_at_s,
        decisions=state.decisions + 1,
        exit_rate=exit_rate,
        exit_at_s=exit_at_s,
    )
    t = obs.t
    # Every phase counts as served when the controller starts, or when its
    # phases change (rule 4).
    served = list(state.served_at_s)
    if len(served) != len(layout.phases):
        served = [t] * len(layout.phases)
    if state.stage == "green":
        served[state.phase] = t
    state = replace(state, served_at_s=tuple(served))
    if state.stage == "yellow" or state.target != state.phase:
        # A switch is under way (or asked for and not shown yet): keep asking for it.
        return state, Decision(phase=state.target, reason="switching")

    idx = {a: i for i, a in enumerate(layout.approaches)}
    zero = config.zero_below
    rise = _forecast_rise(obs.forecast, counts, config)
    # What each approach will hold: the count, plus the forecast's rise (rules 5 and 7).
    expected = tuple(c + r for c, r in zip(counts, rise, strict=True))
    room = exit_room(
        downstream,
        exit_rate,
        limit_veh=config.spillback_ratio * layout.capacity_veh,
        lookahead_s=config.exit_lookahead_s,
    )
    # Vehicles that can leave: none behind a held exit, at most the room left on a free one.
    movable = tuple(min(c, r) if r > 0 else 0.0 for c, r in zip(counts, room, strict=True))

    def total(values: Sequence[float], phase: int) -> float:
        # Per approach, a count below the counter's noise is no vehicle.
        return sum(v for a in layout.phases[phase] if (v := values[idx[a]]) >= zero)

    def free(values: Sequence[float]) -> tuple[float, ...]:
        # Only approaches whose exits are not held (rules 5 and 7).
        return tuple(v if r > 0 else 0.0 for v, r in zip(values, room, strict=True))

    def blocked(phase: int) -> bool:
        # Nobody on the served approaches can leave: a green there moves nobody (rule 2).
        return total(movable, phase) < zero

    # Rule 5 counts a vehicle by the share of its road's storage it fills.
    weight = tuple(layout.capacity_veh / s for s in layout.storage_veh) or (1.0,) * len(counts)
    pressures = tuple(
        sum(
            min(expected[idx[a]], room[idx[a]]) * weight[idx[a]]
            - config.downstream_weight * downstream[idx[a]]
            for a in layout.phases[p]
            if expected[idx[a]] >= zero and room[idx[a]] > 0
        )
        for p in range(len(layout.phases))
    )
    cur = state.phase
    elapsed = t - state.green_since_s

    def stay(reason: str) -> tuple[ControllerState, Decision]:
        return state, Decision(phase=cur, reason=reason, pressures=pressures)

    if elapsed < config.min_green_s:
        return stay("min-green")
    others = [p for p in range(len(layout.phases)) if p != cur and not blocked(p)]
    if not others:
        return stay("no-demand-elsewhere")
    best = max(others, key=lambda p: (pressures[p], total(expected, p), -p))

    def switch(reason: str) -> tuple[ControllerState, Decision]:
        new = replace(state, target=best, committed_at_s=t)
        return new, Decision(phase=best, reason=reason, switch=True, pressures=pressures)

    if total(counts, cur) < zero:
        return switch("empty-green")
    if blocked(cur):
        return switch("spillback")
    if elapsed >= config.max_green_s:
        return switch("max-green")
    starved = [p for p in others if config.max_red_s > 0 and t - served[p] > config.max_red_s]
    if starved:
        # The longest red first: a phase max-pressure never picks still gets its turn.
        best = max(starved, key=lambda p: (t - served[p], -p))
        return switch("max-red")
    stuck = tuple(min(q, m) for q, m in zip(queued, movable, strict=True))
    if (
        elapsed < config.saturated_green_s
        and min(total(stuck, cur), total(stuck, best)) > config.saturation_veh
    ):
        return stay("saturated")
    margin = config.pressure_margin + config.pressure_ratio * max(
        0.0, pressures[best] + pressures[cur]
    )
    if pressures[best] - pressures[cur] > margin:
        return switch("pressure")
    if total(stuck, cur) > config.clear_queue_veh:
        return stay("clearing")
    # Gap-out, looking ahead: keep the green while the vehicles about to cross on it,
    # each spared a red of ``red_s``, outweigh the wait it costs the other side.
    waiting = total(expected, best)
    if config.moving_weight != 1.0:
        standing = total(queued, best)
        waiting = standing + config.moving_weight * max(0.0, waiting - standing)
    red_s = 2 * config.yellow_s + config.min_green_s + config.stop_penalty_s
    # Each band of the green's arrival profile (between two segment ends) holds
    # vehicles that reach the stop line in about ``tau`` s (after the plan's
    # latency); cutting the green now makes each wait ``red_s - tau`` (those
    # arriving late in the red wait little). Keeping it until they cross
    # makes the other side wait ``horizon`` s each.
    # The whole approach closes the profile (its far end at ``approach_length_m``).
    reaches = (*config.segments_m, max(config.approach_length_m, config.segments_m[-1] + 1.0))
    arriving = [total(free([seg[k] for seg in segments]), cur) for k in range(len(reaches) - 1)]
    arriving.append(total(free(counts), cur))
    spared = 0.0
    previous = 0.0
    previous_m = 0.0
    for k, reach_m in enumerate(reaches):
        band = max(0.0, arriving[k] - previous)
        tau = (reach_m + previous_m) / 2 / config.approach_speed_mps - config.latency_s
        previous, previous_m = arriving[k], reach_m
        if tau <= 0:
            continue  # they cross before this plan takes effect
        spared += band * max(0.0, red_s - tau)
        horizon_s = max(0.5, reach_m / config.approach_speed_mps - config.latency_s)
        if spared > config.gap_weight * waiting * horizon_s:
            return stay("extend")
    return switch("gap-out")


class SignalController:
    """A junction's controller holding its own state: ``step(obs) -> Decision``.

    Example:
        >>> ctl = SignalController(JunctionLayout.two_phase(), ControllerConfig(min_green_s=5))
        >>> ctl.step(Observation(t=1.0, counts=(0, 4, 0, 0))).reason
        'min-green'
    """

    def __init__(
        self,
        layout: JunctionLayout,
        config: ControllerConfig | None = None,
        *,
        t: float = 0.0,
        phase: int = 0,
    ) -> None:
        """Start in ``phase``'s green at ``t``."""
        self.layout = layout
        self.config = config or ControllerConfig()
        self.state = initial_state(layout, self.config, t=t, phase=phase)

    def step(self, obs: Observation) -> Decision:
        """Decide for ``obs`` and keep the new state."""
        self.state, decision = decide(self.layout, self.config, self.state, obs)
        return decision
