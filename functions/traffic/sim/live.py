"""The live part of a traffic scenario: cameras out, plans in, SUMO stepped.

:class:`TrafficStepper` does the SUMO session's work in the thread that steps
it (libsumo is not thread safe); the mesh's live loop calls :meth:`step`,
starting and ending the faults due and pacing the run. Every step it

1. renders each camera junction's approaches into an occupancy frame
   (:func:`functions.traffic.occupancy.render_junction`) every
   ``camera_every_s`` and publishes it to the junction's agent, keeping the
   exact counts as truth;
2. hands the signal plans that arrived from the fog to the actuator bridge
   (:meth:`SumoSession.request_phase`, which enforces min green and yellow);
3. steps SUMO.

What crosses threads is small and locked: plans arrive on the MQTT thread into
a dict (the latest plan per junction wins).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from functions.traffic.sim.records import JunctionObservation
from functions.traffic.sim.session import SumoSession

__all__ = ["CameraFrame", "LiveStats", "TrafficStepper"]

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
    sim_s: float = 0.0
    #: (sim second, junction, wall seconds from the frame to the plan that used it)
    control_delay: list[tuple[float, str, float]] = field(default_factory=list)


class TrafficStepper:
    """Steps a SUMO session for the mesh's live loop (see the module docstring).

    The mesh's :class:`~mesh.scenario._live.LiveLoop` calls :meth:`step` and
    owns the pace and the faults; this owns the SUMO thread's work.

    Args:
        session: a started session with ``control="external"``.
        cameras: junctions that have a camera (an agent); others follow SUMO's
            fallback rotation.
        render: a junction's observation -> its frame and exact counts.
        publish_frame: sends a frame to the junction's agent (thread safe).
        camera_every_s: simulated seconds between two frames of a camera.
    """

    def __init__(
        self,
        session: SumoSession,
        *,
        cameras: Mapping[str, str],
        render: Callable[[JunctionObservation], tuple[np.ndarray[Any, Any], tuple[int, ...]]],
        publish_frame: Callable[[CameraFrame], None],
        camera_every_s: float,
    ) -> None:
        """Nothing stepped yet."""
        self._sim = session
        self._cameras = list(cameras)
        self._render = render
        self._publish = publish_frame
        self._camera_every = camera_every_s
        self._next_frame = 0.0
        self._lock = threading.Lock()
        self._plans: dict[str, tuple[int, float]] = {}
        self.stats = LiveStats()

    @property
    def time_s(self) -> float:
        """SUMO's simulated time."""
        return self._sim.time_s

    def offer_plan(self, junction: str, phase: int, frame_wall_ts: float | None = None) -> None:
        """A plan from the fog (any thread): serve green ``phase`` at ``junction``."""
        with self._lock:
            self._plans[junction] = (phase, frame_wall_ts or 0.0)

    def step(self) -> bool:
        """Frames when due, the plans that arrived, one SUMO step; False once SUMO is done."""
        sim = self._sim
        if sim.done:
            return False
        now_s = sim.time_s
        if now_s >= self._next_frame:
            self._frames(now_s)
            self._next_frame = now_s + self._camera_every
        self._apply_plans(now_s)
        sim.step()
        self.stats.sim_s = sim.time_s
        return not sim.done

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
