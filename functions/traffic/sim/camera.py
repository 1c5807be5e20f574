"""The traffic scenario's live camera path, between SUMO and the signal controller.

Each sim step :class:`CameraRelay` renders a junction's approaches as the
camera's occupancy frames (:meth:`CameraRelay.render`); the junction's agent,
or the replica its source was handed to, counts them with the CNN and
publishes an event (the mesh counts it against the frame: latency, loss).
:meth:`CameraRelay.on_event` asks the forecaster for the junction's next
minute, and relays the counts to the fog stream function that plans the
signals.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CameraRelay"]

logger = logging.getLogger(__name__)


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

    def render(self, obs: Any) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
        """A junction's camera frames and its exact counts.

        One frame of each approach and its segments from the stop line (a queue
        profile), plus what stood still since the last frame; the counter counts
        them in one batch.
        """
        from functions.traffic.occupancy import DEFAULT_LANE_LENGTH_M
        from functions.traffic.signals import camera_frames, still_frame

        frames, _ = camera_frames(
            obs.approaches, segments_m=self._segments_m, lane_length_m=DEFAULT_LANE_LENGTH_M
        )
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

    def on_event(self, event: Any) -> None:
        """Relay a camera event's counts to the signal controller (other events are ignored)."""
        from functions.traffic.occupancy import APPROACHES

        if event.stream != self._stream or event.agent is None:
            return
        sim_t = self._sim_time_at(event.source_ts or time.time())
        counts = event.outputs.get("counts") or next(iter(event.outputs.values()), None)
        if self._output is None or counts is None or event.site is None:
            return
        # counts [2 + K, 4]: the whole approach, each segment from the stop line,
        # and what stood still since the previous frame (the queue).
        values = [float(v) for v in counts.data]
        rows = [values[i : i + 4] for i in range(0, len(values), 4)]
        if len(rows) != len(self._segments_m) + 2:
            logger.warning("counts event from %s has %d rows", event.site, len(rows))
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
