"""The scenario's live camera path, between SUMO and the signal controller.

Each sim step :class:`CameraRelay` renders a junction's approaches as the
camera's occupancy frames (:meth:`CameraRelay.render`); the junction's agent,
or the replica its source was handed to, counts them with the CNN and
publishes an event. :meth:`CameraRelay.on_event` tallies the event
(:class:`EventTally`: each frame sent must be answered by an event; latency
against the SLO by route), asks the forecaster for the junction's next
minute, and relays the counts to the fog stream function that plans the
signals.

Example:
    >>> tally = EventTally(slo_ms=25.0)
    >>> tally.add("j-A0", 1, "local", 3.0); tally.add("j-A0", 3, "local", 40.0)
    >>> tally.gaps(), tally.by_route, tally.over_slo
    (1, {'local': 2}, {'local': 1})
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CAMERA_STREAM", "STALE_AFTER_S", "CameraRelay", "EventTally"]

logger = logging.getLogger(__name__)

#: The stream name of the cameras' pipelines (their events' ``stream``).
CAMERA_STREAM = "counts"

#: An event made this long after its frame's capture counts over the SLO, as
#: late by its age, whatever latency the module reports (that is timed from
#: the frame's arrival: a frame queued in the broker while its agent was down
#: would otherwise look timely). Cameras and agents share this host's clock.
STALE_AFTER_S = 1.0


@dataclass(slots=True)
class EventTally:
    """Camera events by sender and sequence number (to find gaps) and by route.

    Attributes:
        slo_ms: the counter's SLO (None: no latency is judged).
        received: events seen.
        by_route: events by where they ran (``local``, ``offload``, ``remote``).
        over_slo: of those, the ones whose latency was over ``slo_ms``.
        stale: events made over :data:`STALE_AFTER_S` after their frame's capture.
    """

    slo_ms: float | None = None
    received: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    over_slo: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    seqs: dict[str, set[int]] = field(default_factory=dict)
    frames: dict[str, set[float]] = field(default_factory=dict)
    answered: dict[str, set[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, site: str, ts: float) -> None:
        """A camera frame of ``site`` stamped ``ts`` went out: some event should answer it."""
        with self.lock:
            self.frames.setdefault(site, set()).add(ts)

    def add(
        self,
        sender: str,
        seq: int,
        route: str,
        latency_ms: float | None,
        *,
        site: str | None = None,
        source_ts: float | None = None,
        stale: bool = False,
    ) -> None:
        """Count one event of ``sender`` (an agent, or a replica holding its source)."""
        where = route.partition(":")[0]
        late = self.slo_ms is not None and latency_ms is not None and latency_ms > self.slo_ms
        with self.lock:
            self.seqs.setdefault(sender, set()).add(seq)
            self.received += 1
            self.stale += stale
            self.by_route[where] = self.by_route.get(where, 0) + 1
            if late:
                self.over_slo[where] = self.over_slo.get(where, 0) + 1
            if site is not None and source_ts is not None:
                self.answered.setdefault(site, set()).add(source_ts)

    def gaps(self) -> int:
        """Sequence numbers missing between each sender's first and last event."""
        with self.lock:
            return sum(max(s) - min(s) + 1 - len(s) for s in self.seqs.values() if s)

    def unanswered(self) -> int:
        """Frames :meth:`sent` that no event answered (dropped, or their event lost)."""
        with self.lock:
            return sum(len(ts - self.answered.get(site, set())) for site, ts in self.frames.items())

    def unanswered_by_site(self) -> dict[str, list[float]]:
        """Each site's frames that no event answered (capture times), for the report."""
        with self.lock:
            return {
                site: sorted(missing)
                for site, ts in sorted(self.frames.items())
                if (missing := ts - self.answered.get(site, set()))
            }

    def lost(self) -> int:
        """Events lost: frames never answered, or sequence gaps where frames were not recorded."""
        return max(self.gaps(), self.unanswered())


class CameraRelay:
    """Renders camera frames and turns the counter's events into the controller's input.

    Args:
        junctions: junction -> its arms' neighbour junctions, by approach.
        segments_m: the queue profile's segments from the stop line.
        publish: sends a counts message (topic, payload).
        output: the counts topic, ``{site}`` replaced by the junction (None: no relay).
        tally: where each event is counted.
        on_latency: receives (sim second, latency ms) of each event.
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
        tally: EventTally,
        on_latency: Callable[[tuple[float, float]], None] | None,
        sim_time_at: Callable[[float], float],
        forecast: Callable[[str, float, list[float]], Any] | None = None,
    ) -> None:
        """Nothing rendered yet."""
        self._junctions = junctions
        self._segments_m = tuple(segments_m)
        self._publish = publish
        self._output = output
        self._tally = tally
        self._on_latency = on_latency
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
        """Tally a camera event and relay its counts (other events are ignored)."""
        from functions.traffic.occupancy import APPROACHES

        if event.stream != CAMERA_STREAM or event.agent is None:
            return
        # A replica holding a site's source numbers its events itself.
        remote = event.route.startswith("remote:")
        sender = f"{event.agent}@{event.route}" if remote else event.agent
        latency = event.latency_ms
        age_s = event.ts - event.source_ts if event.source_ts is not None else 0.0
        stale = latency is not None and age_s > STALE_AFTER_S
        if stale:
            latency = max(latency or 0.0, age_s * 1e3)
        self._tally.add(
            sender,
            event.seq,
            event.route,
            latency,
            site=event.site,
            source_ts=event.source_ts,
            stale=stale,
        )
        sim_t = self._sim_time_at(event.source_ts or time.time())
        if self._on_latency is not None and latency is not None:
            self._on_latency((sim_t, latency))
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
