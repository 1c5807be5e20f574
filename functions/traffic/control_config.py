"""The signal controller's settings: timings, distances and weights of its rules.

Each field is explained where :mod:`functions.traffic.control` states the rule
it tunes (rules 1-7 in that module's docstring).

Example:
    >>> ControllerConfig().min_green_s
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ControllerConfig"]


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Timings (seconds), distances (metres) and weights of the rule in the module docstring."""

    #: Shortest green (rule 6 lengthens it while a queue discharges).
    min_green_s: float = 4.0
    max_green_s: float = 60.0
    yellow_s: float = 3.0
    #: Cumulative camera segments: counts within these distances of the stop line.
    segments_m: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0)
    #: Length of an approach (the far end of the last, whole-approach band).
    approach_length_m: float = 180.0
    #: Speed at which approaching vehicles reach the stop line (the limit, 50 km/h).
    approach_speed_mps: float = 13.89
    #: Delay a vehicle cut off by a switch suffers beyond the red itself (stop and start).
    stop_penalty_s: float = 3.0
    #: Gap-out weight of the waiting side against the approaching green (higher cuts sooner).
    gap_weight: float = 1.0
    #: Max-pressure: switch when another phase's pressure exceeds the current one's by this.
    pressure_margin: float = 10.0
    #: Weight of moving (not yet standing) vehicles on the red side in the gap-out.
    moving_weight: float = 0.5
    #: Extra hysteresis per vehicle in both phases' pressure: longer greens (less
    #: lost time) as queues grow.
    pressure_ratio: float = 0.15
    #: Downstream weight in the pressure (1 = classic max-pressure, 0 = queue only).
    downstream_weight: float = 0.4
    #: Exits fuller than this fraction of capacity (now, or ``exit_lookahead_s`` ahead
    #: at their trend) hold their approach: its vehicles are not movable.
    spillback_ratio: float = 0.85
    #: Queues that cannot clear: both phases have more movable standing vehicles than this...
    saturation_veh: float = 16.0
    #: ...then a green lasts at least this long (throughput over responsiveness).
    saturated_green_s: float = 25.0
    #: Seconds of an exit's rise added to its count when judging it full (0: counts only).
    exit_lookahead_s: float = 10.0
    #: Smoothing time of an exit's trend (veh/s, an exponential average of its changes).
    exit_trend_s: float = 10.0
    #: Weight of a forecast's rise: an approach counts this times ``max(0, forecast -
    #: count)`` more in the pressure and the gap-out (forecast: the predicted mean number
    #: of vehicles on it over the next minute). 0 ignores forecasts. 0.5: on 14 peak
    #: seeds (3x3) mean wait 1.4% below no forecast, within seed noise; 0.25 and 1.0
    #: were not better.
    forecast_weight: float = 0.5
    #: Queue clearance: no gap-out while more than this many movable vehicles stand on
    #: the green (their discharge outlasts what the gap-out's distances say).
    clear_queue_veh: float = 8.0
    #: Seconds from an observation to its plan reaching the signal (the mesh's latency):
    #: vehicles that cross meanwhile need no green from this decision.
    latency_s: float = 1.0
    #: A switch the signal has not shown yet is kept asked for this long (plan latency).
    commit_s: float = 5.0
    #: Below this a count is zero (the counter's noise).
    zero_below: float = 0.5
    #: Rule 4 (max red): no phase with movable vehicles stays red longer than this (0: no
    #: bound). It matters where a junction has more than two phases: with two, a red
    #: outlasts ``max_green_s`` and the yellows only while that phase cannot move.
    max_red_s: float = 90.0

    def __post_init__(self) -> None:
        """Check the timings."""
        if self.min_green_s < 0 or self.yellow_s <= 0 or self.max_green_s < self.min_green_s:
            raise ValueError(
                "need min_green_s >= 0, yellow_s > 0 and max_green_s >= min_green_s; got "
                f"{self.min_green_s}, {self.yellow_s}, {self.max_green_s}"
            )
        if list(self.segments_m) != sorted(self.segments_m) or any(m <= 0 for m in self.segments_m):
            raise ValueError(f"segments_m must be increasing and > 0, got {self.segments_m}")
        if not (self.saturation_veh >= 0 and self.saturated_green_s >= 0):
            raise ValueError(
                "need saturation_veh >= 0 and saturated_green_s >= 0; got "
                f"{self.saturation_veh}, {self.saturated_green_s}"
            )
        if not (self.exit_lookahead_s >= 0 and self.exit_trend_s > 0):
            raise ValueError(
                "need exit_lookahead_s >= 0 and exit_trend_s > 0; got "
                f"{self.exit_lookahead_s}, {self.exit_trend_s}"
            )
        if not self.clear_queue_veh >= 0:
            raise ValueError(f"clear_queue_veh must be >= 0, got {self.clear_queue_veh}")
        if not self.forecast_weight >= 0:
            raise ValueError(f"forecast_weight must be >= 0, got {self.forecast_weight}")
        if not self.max_red_s >= 0:
            raise ValueError(f"max_red_s must be >= 0, got {self.max_red_s}")
