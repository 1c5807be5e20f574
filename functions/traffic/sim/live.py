"""The live part of a traffic scenario: SUMO stepping, cameras out, plans in, faults on time.

:class:`TrafficLoop` owns the SUMO session's thread (libsumo is not thread
safe): every step it

1. starts and ends the faults due (:class:`~mesh.scenario._faults.FaultTimeline`);
2. renders each camera junction's approaches into an occupancy frame
   (:func:`functions.occupancy.render_junction`) every ``camera_every_s`` and
   publishes it to the junction's agent, keeping the exact counts as truth;
3. hands the signal plans that arrived from the fog to the actuator bridge
   (:meth:`SumoSession.request_phase`, which enforces min green and yellow);
4. steps SUMO and paces the simulation at ``speedup`` simulated seconds per
   wall second, so the mesh's real latency shows up in simulated time.

What crosses threads is small and locked: plans arrive on the MQTT thread into
a dict (the latest plan per junction wins), events' latencies into lists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from functions.traffic.sim.session import JunctionObservation, SumoSession
from mesh.scenario._faults import FaultActions, FaultTimeline

__all__ = ["CameraFrame", "LiveStats", "TrafficLoop"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """One rendered camera frame: what the agent gets and the truth it is scored on."""

    junction: str
    sim_s: float
    frame: np.ndarray[Any, np.dtype[np.float32]]
    counts: tuple[int, ...]


@dataclass(slots=True)
class LiveStats:
    """What the loop saw, for the report."""

    frames_sent: int = 0
    plans_applied: int = 0
    plans_late: int = 0
    sim_s: float = 0.0
    wall_s: float = 0.0
    queue: list[tuple[float, float]] = field(default_factory=list)
    fault_log: list[tuple[float, str]] = field(default_factory=list)
    #: (sim second, junction, wall seconds from the frame to the plan that used it)
    control_delay: list[tuple[float, str, float]] = field(default_factory=list)


class TrafficLoop:
    """Run a SUMO session in step with the mesh (see the module docstring).

    Args:
        session: a started session with ``control="external"``.
        cameras: junctions that have a camera (an agent); others follow SUMO's
            fallback rotation.
        publish_frame: sends a frame to the junction's agent (thread safe).
        timeline: the faults; ``actions`` carries them out.
        speedup: simulated seconds per wall second (0: as fast as possible).
        camera_every_s: simulated seconds between two frames of a camera.
        on_progress: called about once per wall second with the stats.
    """

    def __init__(
        self,
        session: SumoSession,
        *,
        cameras: Mapping[str, str],
        render: Callable[[JunctionObservation], tuple[np.ndarray[Any, Any], tuple[int, ...]]],
        publish_frame: Callable[[CameraFrame], None],
        timeline: FaultTimeline,
        actions: FaultActions,
        speedup: float,
        camera_every_s: float,
        on_progress: Callable[[LiveStats], None] | None = None,
    ) -> None:
        """Nothing runs before :meth:`run`."""
        self._sim = session
        self._cameras = dict(cameras)
        self._render = render
        self._publish = publish_frame
        self._timeline = timeline
        self._actions = actions
        self._speedup = speedup
        self._camera_every = camera_every_s
        self._progress = on_progress
        self._lock = threading.Lock()
        self._plans: dict[str, tuple[int, float]] = {}
        self._stop = threading.Event()
        self.stats = LiveStats()
        self._sim_at_wall: list[tuple[float, float]] = []

    def offer_plan(self, junction: str, phase: int, frame_wall_ts: float | None = None) -> None:
        """A plan from the fog (any thread): serve green ``phase`` at ``junction``."""
        with self._lock:
            self._plans[junction] = (phase, frame_wall_ts or 0.0)

    def stop(self) -> None:
        """End the loop after the current step (any thread)."""
        self._stop.set()

    def sim_time_at(self, wall_ts: float) -> float:
        """The simulated time at Unix time ``wall_ts`` (for events stamped in wall time)."""
        with self._lock:
            points = list(self._sim_at_wall)
        if not points:
            return 0.0
        best = points[0][1]
        for wall, sim in points:
            if wall > wall_ts:
                break
            best = sim
        return best

    def run(self) -> LiveStats:
        """Step until the session is done or :meth:`stop`; returns the stats."""
        sim = self._sim
        wall0 = time.monotonic()
        next_frame = 0.0
        next_progress = wall0 + 1.0
        while not sim.done and not self._stop.is_set():
            now_s = sim.time_s
            for what in self._timeline.advance(now_s, self._actions):
                self.stats.fault_log.append((now_s, what))
                logger.info("t=%.0f s: %s", now_s, what)
            if now_s >= next_frame:
                self._frames(now_s)
                next_frame = now_s + self._camera_every
            self._apply_plans(now_s)
            sim.step()
            with self._lock:
                self._sim_at_wall.append((time.time(), sim.time_s))
            if self._speedup > 0:
                due = wall0 + sim.time_s / self._speedup
                delay = due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
            if self._progress is not None and time.monotonic() >= next_progress:
                self.stats.sim_s = sim.time_s
                self.stats.wall_s = time.monotonic() - wall0
                self._progress(self.stats)
                next_progress = time.monotonic() + 1.0
        self.stats.sim_s = sim.time_s
        self.stats.wall_s = time.monotonic() - wall0
        self._timeline.finish(sim.time_s, self._actions)
        return self.stats

    def _frames(self, now_s: float) -> None:
        for junction in self._cameras:
            obs = self._sim.observe(junction)
            frame, counts = self._render(obs)
            self._publish(CameraFrame(junction, now_s, frame.astype(np.float32), counts))
            self.stats.frames_sent += 1

    def _apply_plans(self, now_s: float) -> None:
        with self._lock:
            plans, self._plans = self._plans, {}
        for junction, (phase, frame_ts) in plans.items():
            try:
                self._sim.request_phase(junction, phase)
            except (KeyError, ValueError) as exc:
                logger.warning("plan for %s refused: %s", junction, exc)
                continue
            self.stats.plans_applied += 1
            if frame_ts:
                self.stats.control_delay.append((now_s, junction, time.time() - frame_ts))
