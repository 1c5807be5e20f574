"""The traffic scenario's live camera path, between SUMO and the signal controller.

Each sim step :class:`CameraRelay` renders a junction's approaches as the
camera's occupancy frames (:meth:`CameraRelay.render`, through the cameras'
impairments: :func:`camera_view`); the junction's agent,
or the replica its source was handed to, counts them with the CNN and
publishes an event (the mesh counts it against the frame: latency, loss).
:meth:`CameraRelay.on_event` asks the forecaster for the junction's next
minute, and relays the counts to the fog stream function that plans the
signals; with the exact counts of the frame the event answers
(:meth:`CameraRelay.expect`) it scores the counter (:attr:`CameraRelay.count_error`,
and per site over simulated time: :attr:`CameraRelay.error_series`). A junction
whose camera changed (:meth:`CameraRelay.set_drift`, the scenario's ``drift``
fault) renders through :func:`~functions.traffic.camera_drift.drift_frames`;
given the counter that served before the change (:meth:`CameraRelay.set_reference`),
the relay also counts what that camera would have shown without it, and scores
those counts in :attr:`CameraRelay.undrifted_series`: the error the sites would
have had over the same seconds had nothing drifted, the level a retrained
counter is judged against (traffic grows over a run, and so does the error).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from functions.traffic.camera_drift import CameraDrift, drift_frames
from functions.traffic.impairments import Impairments, cut_reach, impair_vehicles, reach_cells
from functions.traffic.occupancy import DEFAULT_CELLS, DEFAULT_LANE_LENGTH_M, DEFAULT_LANES
from functions.traffic.sim.count_error import CountError, ErrorSeries

__all__ = ["CameraRelay", "camera_view"]

logger = logging.getLogger(__name__)

#: Frames sent whose events may still come: the oldest truths go first.
_PENDING_TRUTHS = 4096


def camera_view(
    approaches: Sequence[Any],
    impairments: Impairments,
    rng: np.random.Generator | None,
    *,
    segments_m: Sequence[float] = (),
    lane_length_m: float = DEFAULT_LANE_LENGTH_M,
    num_lanes: int = DEFAULT_LANES,
    cells: int = DEFAULT_CELLS,
    noise_std: float = 0.0,
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """What a junction's camera sees: its frame and segments (``camera_frames``), impaired.

    ``approaches`` have ``positions_m``, ``lanes`` and ``lengths_m``; each is
    impaired (:func:`~functions.traffic.impairments.impair_vehicles`) before it
    is drawn, then the cells past the camera's reach are emptied. With
    :meth:`Impairments.none` this is exactly ``camera_frames(...)[0]``.

    Returns:
        ``[1 + K, A, lanes, cells]``: the whole frame, then each segment.
    """
    from functions.traffic.occupancy import ApproachState
    from functions.traffic.signals import camera_frames

    seen = []
    for a in approaches:
        positions, lanes, lengths = impair_vehicles(
            np.asarray(a.positions_m, dtype=np.float64),
            np.asarray(a.lanes, dtype=np.int64),
            np.asarray(a.lengths_m, dtype=np.float64),
            impairments,
            rng,
            lane_length_m=lane_length_m,
            num_lanes=num_lanes,
        )
        seen.append(ApproachState(positions, lanes, lengths))
    frames, _ = camera_frames(
        seen,
        segments_m=segments_m,
        lane_length_m=lane_length_m,
        num_lanes=num_lanes,
        cells=cells,
        noise_std=noise_std,
        rng=rng,
    )
    return cut_reach(frames, impairments, lane_length_m)


class CameraRelay:
    """Renders camera frames and turns the counter's events into the controller's input.

    Args:
        junctions: junction -> its arms' neighbour junctions, by approach.
        segments_m: the queue profile's segments from the stop line.
        publish: sends a counts message (topic, payload).
        output: the counts topic, ``{site}`` replaced by the junction (None: no relay).
        stream: the event stream of the cameras' pipelines.
        sim_time_at: wall time -> sim second (0 before the simulation runs).
        forecast: (junction, sim second, approach counts) -> the next minute's
            forecast, or None (no forecaster, or none yet).
        impairments: what the cameras get wrong (default: perfect cameras).
        rng: the source of the impairments (seed it: runs repeat).
    """

    def __init__(
        self,
        *,
        junctions: Mapping[str, Mapping[str, str]],
        segments_m: Sequence[float],
        publish: Callable[[str, bytes], None],
        output: str | None,
        stream: str,
        sim_time_at: Callable[[float], float],
        forecast: Callable[[str, float, list[float]], Any] | None = None,
        impairments: Impairments | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Nothing rendered yet."""
        self._junctions = junctions
        self._segments_m = tuple(segments_m)
        self._publish = publish
        self._output = output
        self._stream = stream
        self._sim_time_at = sim_time_at
        self._forecast = forecast
        self._frame_info: dict[str, dict[str, Any]] = {}
        self._previous: dict[str, np.ndarray[Any, Any]] = {}
        self._impairments = impairments or Impairments.none()
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._truths: collections.OrderedDict[tuple[str, float], tuple[int, ...]] = (
            collections.OrderedDict()
        )
        self._truth_lock = threading.Lock()
        #: The counter's counts against the exact ones, per approach (see :meth:`expect`).
        self.count_error = CountError()
        #: The same error per site over simulated time (the report's chart).
        self.error_series = ErrorSeries()
        self._drift: dict[str, CameraDrift] = {}
        #: The drifted sites' error had their cameras not changed (see :meth:`set_reference`).
        self.undrifted_series = ErrorSeries()
        self._reference: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None = None
        self._previous_clean: dict[str, np.ndarray[Any, Any]] = {}

    def set_drift(self, junction: str, drift: CameraDrift | None) -> None:
        """From the next frame, ``junction``'s camera sees through ``drift`` (None: as before)."""
        if drift is None or drift.is_none:
            self._drift.pop(junction, None)
        else:
            self._drift[junction] = drift

    def set_reference(
        self, counter: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None
    ) -> None:
        """Count each drifted camera's frames as they would have been without the change.

        ``counter`` maps a junction's frame batch ``[rows, 4, lanes, cells]`` to
        its counts ``[rows, 4]`` (the first row: the whole approaches); the
        counter that served before the drift is the fair reference. Each
        frame of a drifted junction is also rendered without its change and
        counted so; the error against the exact counts goes to
        :attr:`undrifted_series`. None: no reference (the default).
        """
        self._reference = counter

    def drifted(self) -> dict[str, CameraDrift]:
        """The junctions whose camera changed, and how."""
        return dict(self._drift)

    def _visible_cells(self, rows: int, cells: int) -> list[int]:
        """Cells each frame row shows: the camera's reach, and each segment's cut within it."""
        reach = reach_cells(self._impairments, DEFAULT_LANE_LENGTH_M, cells)
        cell_m = DEFAULT_LANE_LENGTH_M / cells
        cuts = [max(1, round(m / cell_m)) for m in self._segments_m]
        return [reach, *[min(reach, c) for c in cuts][: rows - 1]]

    def render(self, obs: Any) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
        """A junction's camera frames and its exact counts.

        One frame of each approach and its segments from the stop line (a queue
        profile), plus what stood still since the last frame; the counter counts
        them in one batch.
        """
        from functions.traffic.signals import still_frame

        frames = camera_view(
            obs.approaches, self._impairments, self._rng, segments_m=self._segments_m
        )
        drift = self._drift.get(obs.junction)
        clean = frames
        if drift is not None:
            visible = self._visible_cells(frames.shape[0], frames.shape[-1])
            frames = drift_frames(frames, drift, self._rng, visible_cells=visible)
            if self._reference is not None:
                self._score_undrifted(obs, clean)
        self._previous_clean[obs.junction] = clean[0]
        still = still_frame(frames[0], self._previous.get(obs.junction))
        self._previous[obs.junction] = frames[0]
        self._frame_info[obs.junction] = {
            "t": obs.time_s,
            "signal": {
                "phase": obs.phase,
                "stage": obs.stage,
                "elapsed_s": obs.stage_elapsed_s,
                "target": obs.target,
            },
        }
        return np.concatenate([frames, still[None]]), obs.counts

    def _score_undrifted(self, obs: Any, clean: np.ndarray[Any, Any]) -> None:
        """The reference counter on the frame the camera would have shown: its error."""
        from functions.traffic.signals import still_frame

        assert self._reference is not None
        still = still_frame(clean[0], self._previous_clean.get(obs.junction))
        batch = np.concatenate([clean, still[None]]).astype(np.float32, copy=False)
        try:
            counted = np.asarray(self._reference(batch), dtype=np.float64).reshape(len(batch), -1)
        except Exception as exc:  # the reference is only a figure: never stop the frames
            logger.warning("the undrifted reference counter failed, dropped: %s", exc)
            self._reference = None
            return
        truth = np.asarray(obs.counts, dtype=np.float64)
        if counted.shape[1] != len(truth):
            return
        mae = float(np.abs(counted[0] - truth).mean())
        self.undrifted_series.add(obs.junction, float(obs.time_s), mae)

    def expect(self, junction: str, source_ts: float, counts: Sequence[int]) -> None:
        """A frame of ``junction`` stamped ``source_ts`` went out; ``counts`` are its truth.

        The event answering it (same site and ``source_ts``) is scored against
        them in :attr:`count_error`.
        """
        with self._truth_lock:
            self._truths[(junction, source_ts)] = tuple(counts)
            while len(self._truths) > _PENDING_TRUTHS:
                self._truths.popitem(last=False)

    def _score(self, site: str, source_ts: float | None, counted: Sequence[float]) -> None:
        if source_ts is None:
            return
        with self._truth_lock:
            truth = self._truths.pop((site, source_ts), None)
        if truth is not None and len(truth) == len(counted):
            self.count_error.add(counted, truth)
            mae = sum(abs(float(c) - float(t)) for c, t in zip(counted, truth, strict=True))
            self.error_series.add(site, self._sim_time_at(source_ts), mae / len(truth))

    def on_event(self, event: Any) -> None:
        """Relay a camera event's counts to the signal controller (other events are ignored)."""
        from functions.traffic.occupancy import APPROACHES

        if event.stream != self._stream or event.agent is None:
            return
        sim_t = self._sim_time_at(event.source_ts or time.time())
        counts = event.outputs.get("counts") or next(iter(event.outputs.values()), None)
        if counts is None or event.site is None:
            return
        # counts [2 + K, 4]: the whole approach, each segment from the stop line,
        # and what stood still since the previous frame (the queue).
        values = [float(v) for v in counts.data]
        rows = [values[i : i + 4] for i in range(0, len(values), 4)]
        if len(rows) != len(self._segments_m) + 2:
            logger.warning("counts event from %s has %d rows", event.site, len(rows))
            return
        # Scored as the controller gets them: the counter's raw counts.
        self._score(event.site, event.source_ts, rows[0])
        if self._output is None:
            return
        info = self._frame_info.get(event.site, {})
        forecast = self._forecast(event.site, sim_t, rows[0]) if self._forecast else None
        message = {
            "site": event.site,
            "t": info.get("t", sim_t),
            "counts": dict(zip(APPROACHES, rows[0], strict=True)),
            "segments": {a: [row[k] for row in rows[1:-1]] for k, a in enumerate(APPROACHES)},
            "queued": dict(zip(APPROACHES, rows[-1], strict=True)),
            "signal": info.get("signal"),
            "neighbours": dict(self._junctions.get(event.site, {})),
            "frame_ts": event.source_ts,
            "route": event.route,
        }
        if forecast is not None:
            message["forecast"] = forecast
        self._publish(self._output.replace("{site}", event.site), json.dumps(message).encode())
