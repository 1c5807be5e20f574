"""The live phase's clock: a simulation run stepped with the fault timeline, paced.

:class:`LiveLoop` owns the thread that steps the simulation (a plugin's
:class:`~mesh.scenario.SimulationRun`, or a :class:`~mesh.scenario.WallClock`
for a scenario without one). Each step it

1. starts and ends the faults due at the run's simulated time
   (:class:`~mesh.scenario._faults.FaultTimeline`);
2. steps the run;
3. paces it at ``run.speedup`` simulated seconds per wall second, so the
   mesh's real latency shows up in simulated time;
4. records the (wall, simulated) time pair, so events stamped in wall time
   can be placed on the simulated timeline (:meth:`LiveLoop.sim_time_at`).

Example:
    >>> from mesh.scenario._plugin import WallClock
    >>> from mesh.scenario._faults import FaultTimeline
    >>> loop = LiveLoop(WallClock(0.2, step_s=0.1), FaultTimeline([]), actions=None)
    >>> round(loop.run().sim_s, 1)
    0.2
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.scenario._faults import FaultActions, FaultTimeline
from mesh.scenario._plugin import SimulationRun

__all__ = ["LiveLoop", "LiveStats"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LiveStats:
    """What the loop saw, for the report and the progress line."""

    sim_s: float = 0.0
    wall_s: float = 0.0
    steps: int = 0
    fault_log: list[tuple[float, str]] = field(default_factory=list)


class LiveLoop:
    """Step a simulation run in time with the mesh (see the module docstring).

    Args:
        run: a started run.
        timeline: the faults; ``actions`` carries them out (None: a timeline
            without faults needs none).
        on_progress: called about once per wall second with the stats.
        on_fault: called with the simulated time and the words of each fault that
            starts or ends, as it does.
    """

    def __init__(
        self,
        run: SimulationRun,
        timeline: FaultTimeline,
        actions: FaultActions | None,
        *,
        on_progress: Callable[[LiveStats], None] | None = None,
        on_fault: Callable[[float, str], None] | None = None,
    ) -> None:
        """Nothing runs before :meth:`run`."""
        self._run = run
        self._timeline = timeline
        self._actions: Any = actions
        self._progress = on_progress
        self._on_fault = on_fault
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._walls: list[float] = []
        self._sims: list[float] = []
        self.stats = LiveStats()

    def stop(self) -> None:
        """End the loop after the current step (any thread)."""
        self._stop.set()

    def sim_time_at(self, wall_ts: float) -> float:
        """The simulated time at Unix time ``wall_ts`` (0 before the first step)."""
        with self._lock:
            i = bisect.bisect_right(self._walls, wall_ts)
            return self._sims[i - 1] if i else (self._sims[0] if self._sims else 0.0)

    def run(self) -> LiveStats:
        """Step until the run ends or :meth:`stop`; returns the stats."""
        sim = self._run
        wall0 = time.monotonic()
        next_progress = wall0 + 1.0
        self._mark(sim.time_s)
        try:
            while not self._stop.is_set():
                now_s = sim.time_s
                for what in self._timeline.advance(now_s, self._actions):
                    self.stats.fault_log.append((now_s, what))
                    logger.info("t=%.0f s: %s", now_s, what)
                    if self._on_fault is not None:
                        self._on_fault(now_s, what)
                more = sim.step()
                self.stats.steps += 1
                self._mark(sim.time_s)
                if not more:
                    break
                if sim.speedup > 0:
                    delay = wall0 + sim.time_s / sim.speedup - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                if self._progress is not None and time.monotonic() >= next_progress:
                    self.stats.sim_s = sim.time_s
                    self.stats.wall_s = time.monotonic() - wall0
                    self._progress(self.stats)
                    next_progress = time.monotonic() + 1.0
        finally:
            self.stats.sim_s = sim.time_s
            self.stats.wall_s = time.monotonic() - wall0
            self._timeline.finish(sim.time_s, self._actions)
        return self.stats

    def _mark(self, sim_s: float) -> None:
        with self._lock:
            self._walls.append(time.time())
            self._sims.append(sim_s)
