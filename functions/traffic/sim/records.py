"""What a SUMO session reports: junction observations and a run's KPIs.

* :class:`JunctionObservation`, with an :class:`ApproachObservation` per
  approach, is the sensor bridge's output
  (:meth:`~functions.traffic.sim.session.SumoSession.observe`): the vehicles
  as the camera sees them, with the exact count and the halting vehicles as
  ground truth;
* :class:`Kpis` are a run's traffic figures, the means over SUMO's tripinfo
  (:func:`read_tripinfo`, unfinished trips included) and the sampled queues.

Example:
    >>> a = ApproachObservation("north", "n_A0", 180.0, 2, np.array([3.0, 40.0]),
    ...     np.array([0, 1]), np.array([5.0, 5.0]), np.array([0.0, 8.0]))
    >>> a.count, a.halting
    (2, 1)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HALTING_SPEED_MPS",
    "ApproachObservation",
    "JunctionObservation",
    "Kpis",
    "read_tripinfo",
]

#: Below this speed (m/s) a vehicle counts as halting, as SUMO's own counters do.
HALTING_SPEED_MPS = 0.1


@dataclass(frozen=True, slots=True)
class ApproachObservation:
    """The vehicles on one approach, as the camera sees them, and the ground truth.

    ``positions_m`` is each front bumper's distance to the stop line; ``lanes``
    counts from the right (0); the fields match :class:`functions.traffic.occupancy.ApproachState`.
    """

    name: str
    edge: str
    lane_length_m: float
    num_lanes: int
    positions_m: npt.NDArray[np.float64]
    lanes: npt.NDArray[np.int64]
    lengths_m: npt.NDArray[np.float64]
    speeds_mps: npt.NDArray[np.float64]

    @property
    def count(self) -> int:
        """Exact number of vehicles on the approach."""
        return int(self.positions_m.size)

    @property
    def halting(self) -> int:
        """Vehicles standing (speed below 0.1 m/s): the queue."""
        return int(np.count_nonzero(self.speeds_mps < HALTING_SPEED_MPS))


@dataclass(frozen=True, slots=True)
class JunctionObservation:
    """A junction at one instant: its approaches (north, east, south, west) and its signal.

    ``phase`` is the green being served, or during a switch the green being
    left; ``target`` the one switched to; ``stage`` is green, yellow or red;
    ``stage_elapsed_s`` how long the stage has lasted.
    """

    junction: str
    time_s: float
    approaches: tuple[ApproachObservation, ...]
    phase: int
    target: int
    stage: str
    stage_elapsed_s: float

    @property
    def counts(self) -> tuple[int, ...]:
        """Exact vehicles per approach (the counter's ground truth)."""
        return tuple(a.count for a in self.approaches)


@dataclass(frozen=True, slots=True)
class Kpis:
    """Traffic KPIs of one run; means are over every vehicle that departed.

    ``mean_trip_s`` is the trip duration (departure to arrival, or to the end
    for unfinished trips); ``mean_depart_delay_s`` the wait to enter the grid;
    ``mean_time_loss_s`` the time lost against free flow (it also counts the
    slow creeping that ``waitingTime`` misses).
    """

    vehicles: int
    arrivals: int
    unfinished: int
    teleports: int
    mean_wait_s: float
    mean_time_loss_s: float
    mean_trip_s: float
    mean_depart_delay_s: float
    mean_queue: float
    max_queue: int
    queue_series: tuple[tuple[float, int], ...] = ()
    end_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields (the queue series as ``[[t, vehicles], ...]``)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["queue_series"] = [list(p) for p in self.queue_series]
        return out


def read_tripinfo(path: str | os.PathLike[str]) -> dict[str, float]:
    """Means over a tripinfo file (unfinished trips have ``arrival="-1"``)."""
    wait: list[float] = []
    loss: list[float] = []
    trip: list[float] = []
    delay: list[float] = []
    unfinished = 0
    for _, el in ET.iterparse(path):
        if el.tag != "tripinfo":
            continue
        if float(el.get("arrival", "-1")) < 0:
            unfinished += 1
        wait.append(float(el.get("waitingTime", 0)))
        loss.append(float(el.get("timeLoss", 0)))
        trip.append(float(el.get("duration", 0)))
        delay.append(float(el.get("departDelay", 0)))
        el.clear()

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    return {
        "vehicles": float(len(wait)),
        "unfinished": float(unfinished),
        "mean_wait_s": mean(wait),
        "mean_time_loss_s": mean(loss),
        "mean_trip_s": mean(trip),
        "mean_depart_delay_s": mean(delay),
    }
