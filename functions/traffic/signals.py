"""The signal controller at the fog: camera frames to counts, counts to signal plans.

A junction's camera frame (:func:`camera_frames`: the whole approaches, then
the same frame cut at each of the controller's segment distances) and its
:func:`still_frame` go through the vehicle counter; the counts reach the fog
stream function :func:`signal_plan`, which runs the controller
(:mod:`functions.traffic.control`) for every junction heard in a window
(:func:`plans_for_window`, with each junction's downstream counts taken from
its neighbours' messages) and publishes one plan per junction.

The rules are explained rule by rule in :mod:`functions.traffic.control`,
including how the controller degrades into oversaturation: an exit road's
count and its trend tell when it is full or filling, and no green is extended
into it; a junction whose green nobody can leave yields to a phase that can
move (gridlock prevention); pressures count only the vehicles that fit in
their exits, and when queues cannot clear on either side a green runs at
least ``saturated_green_s`` (fewer switches, more vehicles carried); a green
is not gapped out while a queue (over ``clear_queue_veh`` standing vehicles
that can leave) still discharges on it.

Example:
    >>> counts = {"north": 0, "east": 3, "south": 0, "west": 2}
    >>> plans_for_window([{"site": "A0", "t": 10.0, "counts": counts}], {})[0]["phase"]
    1
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh import Mesh, Resources

from .control import (
    ControllerConfig,
    ControllerState,
    JunctionLayout,
    Observation,
    SignalReport,
    decide,
    initial_state,
)
from .occupancy import (
    DEFAULT_CELLS,
    DEFAULT_LANE_LENGTH_M,
    DEFAULT_LANES,
    ApproachState,
    count_visible,
    render_junction,
)

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "app",
    "camera_frames",
    "plans_for_window",
    "signal_plan",
    "still_frame",
]

logger = logging.getLogger(__name__)

app = Mesh("traffic-signals")

PLAN_SCHEMA_VERSION = 1
_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


# -- the camera ----------------------------------------------------------------------


def still_frame(
    frame: npt.NDArray[np.float32], previous: npt.NDArray[np.float32] | None
) -> npt.NDArray[np.float32]:
    """What stood still between two frames: their cell-wise minimum.

    A standing vehicle covers the same cells in both; one moving faster than a
    cell per frame (3.75 m/s at the defaults) leaves nothing, so the counter
    counts the queue on it. Without a previous frame, the frame itself.
    """
    return frame if previous is None else np.minimum(frame, previous)


def camera_frames(
    approaches: Sequence[Any],
    *,
    segments_m: Sequence[float] = (),
    lane_length_m: float = DEFAULT_LANE_LENGTH_M,
    num_lanes: int = DEFAULT_LANES,
    cells: int = DEFAULT_CELLS,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A junction's camera frame and its segments, with the exact counts of each.

    ``approaches`` are objects with ``positions_m``, ``lanes`` and ``lengths_m``
    (a :class:`~functions.traffic.sim.records.ApproachObservation` or an
    :class:`~functions.traffic.occupancy.ApproachState`). Segment ``k`` is the same
    image with the cells past ``segments_m[k]`` blanked, so the same counter
    counts the vehicles within that distance of the stop line (a queue
    estimate and an arrival profile from one frame).

    Returns:
        ``frames [1 + K, A, lanes, cells]`` (the whole frame first, then each
        segment) and the exact counts ``[1 + K, A]`` (a vehicle is in a segment
        when its front bumper is).

    Example:
        >>> state = ApproachState(np.array([5.0, 50.0]), np.array([0, 1]), np.array([5.0, 5.0]))
        >>> frames, exact = camera_frames([state] * 4, segments_m=[30.0])
        >>> frames.shape, exact[:, 0].tolist()
        ((2, 4, 2, 64), [2.0, 1.0])
    """
    states = [
        ApproachState(
            np.asarray(a.positions_m, dtype=np.float64),
            np.asarray(a.lanes, dtype=np.int64),
            np.asarray(a.lengths_m, dtype=np.float64),
        )
        for a in approaches
    ]
    frame, counts = render_junction(
        states, lane_length_m, num_lanes=num_lanes, cells=cells, noise_std=noise_std, rng=rng
    )
    frames = [frame]
    exact = [counts]
    cell_m = lane_length_m / cells
    for reach in segments_m:
        keep = max(1, round(reach / cell_m))
        cut = frame.copy()
        cut[..., keep:] = 0.0
        frames.append(cut)
        exact.append(
            np.array([count_visible(s.positions_m, keep * cell_m) for s in states], np.float32)
        )
    return np.stack(frames), np.stack(exact)


# -- the fog stream function ----------------------------------------------------------

#: Controller state per junction, in the worker that runs the stream function.
#: The signal's own state comes with every message, so a fresh worker only
#: loses the held counts (and then holds from the first message it sees).
_STATES: dict[str, ControllerState] = {}
_STATES_LOCK = threading.Lock()


def _per_approach(value: Any, approaches: Sequence[str]) -> list[float | None] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [None if value.get(a) is None else float(value[a]) for a in approaches]
    return [None if v is None else float(v) for v in value]


def _layout_of(message: Mapping[str, Any]) -> JunctionLayout:
    phases = message.get("phases")
    if not phases:
        return JunctionLayout.two_phase()
    return JunctionLayout(phases=tuple(frozenset(p) for p in phases))


def plans_for_window(
    window: Sequence[Mapping[str, Any]],
    states: dict[str, ControllerState],
    config: ControllerConfig | None = None,
) -> list[dict[str, Any]]:
    """The stream function's logic over explicit ``states`` (updated in place).

    A message: ``{"site", "t", "counts": {approach: n | null}, "segments"?:
    {approach: [n within each of segments_m] | null}, "queued"?: {approach: n
    standing (the counter on :func:`still_frame`)}, "forecast"?: {approach:
    predicted mean vehicles on it over the next minute}, "signal"?: {"phase",
    "stage", "elapsed_s", "target"?},
    "neighbours"?: {side: site}, "phases"?: [[approach, ...], ...]}``.
    Downstream counts come from the neighbours' messages in the same window
    (a side without a neighbour is a free border exit). One plan per site:
    ``{"schema_version", "site", "t", "phase", "reason", "switch"}``.
    """
    config = config or ControllerConfig()
    latest: dict[str, dict[str, Any]] = {}
    for message in sorted(window, key=lambda m: float(m.get("t", 0.0))):
        site = message.get("site")
        if not isinstance(site, str):
            continue
        merged = latest.setdefault(site, {})
        for key, value in message.items():
            if key in ("counts", "segments", "queued") and isinstance(value, Mapping):
                # A later message with a dropped approach keeps the earlier count.
                held = dict(merged.get(key) or {})
                held.update({k: v for k, v in value.items() if v is not None})
                merged[key] = held
            else:
                merged[key] = value
    plans = []
    for site, message in sorted(latest.items()):
        layout = _layout_of(message)
        approaches = layout.approaches
        counts = _per_approach(message.get("counts"), approaches) or [None] * len(approaches)
        downstream: list[float | None] = []
        neighbours = message.get("neighbours") or {}
        for a in approaches:
            # Vehicles from the north leave southwards, onto the south neighbour's north arm.
            neighbour = neighbours.get(_OPPOSITE.get(a, ""))
            if neighbour is None:
                downstream.append(0.0)  # a border exit: traffic leaves freely
                continue
            other = latest.get(str(neighbour))
            value = (other.get("counts") or {}).get(a) if other else None
            downstream.append(None if value is None else float(value))
        report = message.get("signal")
        signal = (
            SignalReport(
                phase=int(report["phase"]),
                stage=str(report.get("stage", "green")),
                elapsed_s=float(report.get("elapsed_s", 0.0)),
                target=None if report.get("target") is None else int(report["target"]),
            )
            if isinstance(report, Mapping)
            else None
        )
        t = float(message.get("t", 0.0))
        # A controller new to a junction assumes its green has run the minimum
        # (the junction's report, when there is one, corrects it at once).
        state = states.get(site) or initial_state(
            layout, config, t=t - config.min_green_s, phase=signal.phase if signal else 0
        )
        forecast = _per_approach(message.get("forecast"), approaches)
        raw_segments = message.get("segments")
        segments = (
            [None if raw_segments.get(a) is None else list(raw_segments[a]) for a in approaches]
            if isinstance(raw_segments, Mapping)
            else None
        )
        obs = Observation(
            t=t,
            counts=counts,
            segments=segments,
            queued=_per_approach(message.get("queued"), approaches),
            downstream=downstream,
            forecast=forecast,
            signal=signal,
        )
        states[site], decision = decide(layout, config, state, obs)
        plans.append(
            {
                "schema_version": PLAN_SCHEMA_VERSION,
                "site": site,
                "t": t,
                "phase": decision.phase,
                "reason": decision.reason,
                "switch": decision.switch,
            }
        )
    return plans


@app.stream(
    tier="fog",
    topic="traffic/+/counts",
    window_s=1.0,
    output_topic="traffic/plans",
    resources=Resources(cpus=0.25),
)
def signal_plan(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signal plans for the junctions heard in this window (one per junction).

    State (held counts, pending switches) lives in a process-level dict keyed by
    junction; the signal state itself arrives with each message, so a restart
    or a move to another worker costs only the held counts.
    """
    with _STATES_LOCK:
        return plans_for_window(window, _STATES)
