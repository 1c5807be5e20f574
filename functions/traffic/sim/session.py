"""One SUMO simulation through libsumo: the sensor bridge, the actuator bridge and the KPIs.

* **Sensor bridge** — :meth:`SumoSession.observe` gives a junction's four
  approaches as the camera sees them: each vehicle's front-bumper distance to
  the stop line, lane and length (what :mod:`functions.traffic.occupancy` renders),
  with the exact count and the halting vehicles as ground truth
  (:class:`~functions.traffic.sim.records.JunctionObservation`).
* **Actuator bridge** — :meth:`SumoSession.request_phase` hands a plan (the
  green phase to serve) to the junction's
  :class:`~functions.traffic.sim.actuator.SignalActuator`, which owns
  safety: a switch waits for the minimum green and always passes through
  yellow, so no plan, late or wrong, can make an unsafe switch.
* **KPIs** — :meth:`SumoSession.close` reads SUMO's tripinfo (unfinished trips
  included) and returns :class:`~functions.traffic.sim.records.Kpis`.

The baselines run SUMO's own programs (``control="static" | "actuated" |
"delay_based"``); ``control="external"`` drives the ``static`` net's signals
from plans. libsumo is a process-wide singleton: one session per process at a
time (run sessions in parallel in subprocesses). libsumo is imported when a
session starts, never by ``import mesh``.

Example:
    >>> grid = build_grid(tmp, rows=2, cols=2)                                # doctest: +SKIP
    >>> demand = make_demand(tmp, grid, level="light", seed=0, horizon_s=600)  # doctest: +SKIP
    >>> with SumoSession(grid, demand.path, control="external") as sim:        # doctest: +SKIP
    ...     while not sim.done:
    ...         obs = sim.observe("A0")
    ...         sim.request_phase("A0", 1 if obs.approaches[1].count else 0)
    ...         sim.step()
    >>> sim.kpis.arrivals                                                      # doctest: +SKIP
    98
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from functions.traffic.sim.actuator import GREEN_LINKS, SignalActuator
from functions.traffic.sim.junction_map import served_approaches
from functions.traffic.sim.network import Network, SimulationError, find_sumo_binary
from functions.traffic.sim.records import (
    ApproachObservation,
    JunctionObservation,
    Kpis,
    read_tripinfo,
)

__all__ = ["Control", "SumoSession"]

logger = logging.getLogger(__name__)

Control = Literal["external", "static", "actuated", "delay_based"]
_active: list[str] = []


def _libsumo() -> Any:
    try:
        # libsumo prints a pyarrow version warning on import; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            import libsumo
    except ImportError as exc:
        raise SimulationError(
            f"libsumo is not installed: pip install 'fogmesh[sim]' ({exc})"
        ) from exc
    if printed.getvalue().strip():
        logger.debug("libsumo import said: %s", printed.getvalue().strip())
    return libsumo


# -- the session ------------------------------------------------------------------


@dataclass
class _Junction:
    tls: str
    arms: tuple[tuple[str, str, int, float], ...]  # (approach, edge, lanes, length)
    #: Per arm, every lane drawn into its frame: (lane id, frame lane, length).
    lanes: tuple[tuple[tuple[str, int, float], ...], ...]
    greens: tuple[str, ...]
    served: tuple[frozenset[str], ...]
    yellow_s: float
    actuator: SignalActuator | None = None
    program_phase_of_green: tuple[int, ...] = field(default_factory=tuple)


class SumoSession:
    """A running SUMO simulation of a network (see the module docstring).

    Args:
        grid: the network (:func:`functions.traffic.sim.network.build_grid` or
            :func:`functions.traffic.sim.random_net.build_random`).
        routes: the routes file every controller shares.
        control: ``external`` (signals follow :meth:`request_phase`) or one of
            SUMO's programs: ``static``, ``actuated``, ``delay_based``.
        seed: SUMO's random seed (driver imperfection).
        end_s: the simulation stops here even if vehicles remain.
        min_green_s, all_red_s: the actuator's safety limits (external control);
            yellow comes from the net's programs.
        fallback_after_s: external control without plans for this long falls
            back to a fixed rotation (None: hold the last plan).
        time_to_teleport_s: SUMO teleports a vehicle stuck this long (gridlock).
        queue_sample_s: how often the queue series is sampled.
        workdir: where tripinfo goes (default: a temporary directory).
    """

    def __init__(
        self,
        grid: Network,
        routes: str | os.PathLike[str],
        *,
        control: Control = "external",
        seed: int = 0,
        end_s: float = 7200.0,
        min_green_s: float = 5.0,
        all_red_s: float = 0.0,
        fallback_after_s: float | None = None,
        time_to_teleport_s: float = 300.0,
        queue_sample_s: float = 10.0,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Configure; the simulation starts on :meth:`start` or ``with``."""
        if control not in ("external", "static", "actuated", "delay_based"):
            raise ValueError(
                f"unknown control {control!r}: expected external, static, actuated or delay_based"
            )
        self.grid = grid
        self.routes = Path(routes)
        self.control: Control = control
        self.seed = seed
        self.end_s = end_s
        self.min_green_s = min_green_s
        self.all_red_s = all_red_s
        self.fallback_after_s = fallback_after_s
        self.time_to_teleport_s = time_to_teleport_s
        self.queue_sample_s = queue_sample_s
        self._workdir = Path(workdir) if workdir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._sumo: Any = None
        self._junctions: dict[str, _Junction] = {}
        self._time = 0.0
        self._arrivals = 0
        self._teleports = 0
        self._queue_samples: list[tuple[float, int]] = []
        self._next_sample = 0.0
        self._wall0 = 0.0
        self._tripinfo: Path | None = None
        self.kpis: Kpis | None = None

    # -- lifecycle --

    def __enter__(self) -> SumoSession:
        """Start the simulation."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close it (KPIs only when no exception is in flight)."""
        if exc_type is None:
            self.close()
        else:
            self._shutdown()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def start(self) -> None:
        """Load the net and routes into libsumo.

        Raises:
            SimulationError: libsumo is missing, another session runs in this
                process, or SUMO refuses the files.
        """
        if _active:
            raise SimulationError(
                f"a SUMO session ({_active[0]}) already runs in this process; libsumo is a "
                "process-wide singleton: close it first or use a subprocess"
            )
        sumo = _libsumo()
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fogmesh-sumo-")
            workdir = Path(self._tmp.name)
        else:
            workdir = self._workdir
            workdir.mkdir(parents=True, exist_ok=True)
        self._tripinfo = workdir / f"tripinfo-{self.control}-{os.getpid()}.xml"
        net = self.grid.net("static" if self.control == "external" else self.control)
        args = [
            find_sumo_binary("sumo"),
            "--net-file",
            str(net),
            "--route-files",
            str(self.routes),
            "--seed",
            str(self.seed),
            "--step-length",
            "1",
            "--end",
            str(self.end_s),
            "--time-to-teleport",
            str(self.time_to_teleport_s),
            "--tripinfo-output",
            str(self._tripinfo),
            "--tripinfo-output.write-unfinished",
            "true",
            "--no-step-log",
            "true",
            "--no-warnings",
            "true",
            "--duration-log.disable",
            "true",
        ]
        try:
            sumo.start(args)
        except Exception as exc:
            raise SimulationError(f"SUMO refused {net.name} + {self.routes.name}: {exc}") from exc
        _active.append(f"{self.control}:{self.routes.name}")
        self._sumo = sumo
        self._wall0 = time.perf_counter()
        self._time = float(sumo.simulation.getTime())
        for jid, arms in self.grid.junctions.items():
            self._junctions[jid] = self._describe(jid, arms)
        logger.info(
            "sumo session started: %s, %s, %d junctions, control=%s",
            net.name,
            self.routes.name,
            len(self._junctions),
            self.control,
        )

    def _describe(self, jid: str, arms: Sequence[Any]) -> _Junction:
        sumo = self._sumo
        logic = sumo.trafficlight.getAllProgramLogics(jid)[0]
        states = [p.state for p in logic.phases]
        green_idx = [
            i for i, s in enumerate(states) if "y" not in s and any(c in GREEN_LINKS for c in s)
        ]
        greens = tuple(states[i] for i in green_idx)
        yellows = [p.duration for p in logic.phases if "y" in p.state]
        links = sumo.trafficlight.getControlledLinks(jid)
        # The phase model comes from the program itself (which slots each green
        # serves), never assumed north-south / east-west: a three- or five-arm
        # junction has its own phases.
        edge_of = {edge: a.name for a in arms for edge, _, _ in a.roads}
        link_road = [sumo.lane.getEdgeID(link[0][0]) if link else None for link in links]
        link_road = [e if e in edge_of else None for e in link_road]
        junction = _Junction(
            tls=jid,
            arms=tuple((a.name, a.incoming, a.lanes, a.length_m) for a in arms),
            lanes=tuple(
                tuple((f"{edge}_{i}", i, length) for edge, n, length in a.roads for i in range(n))
                for a in arms
            ),
            greens=greens,
            served=served_approaches(greens, link_road, edge_of),
            yellow_s=float(max(yellows)) if yellows else 3.0,
            program_phase_of_green=tuple(green_idx),
        )
        if self.control == "external":
            junction.actuator = SignalActuator(
                greens,
                yellow_s=junction.yellow_s,
                min_green_s=self.min_green_s,
                all_red_s=self.all_red_s,
                fallback_after_s=self.fallback_after_s,
                now=self._time,
            )
            sumo.trafficlight.setRedYellowGreenState(jid, greens[0])
        return junction

    def _shutdown(self) -> None:
        if self._sumo is not None:
            try:
                self._sumo.close()
            finally:
                self._sumo = None
                _active.clear()

    def close(self) -> Kpis:
        """End the simulation and return its KPIs (also kept in :attr:`kpis`)."""
        if self.kpis is not None:
            return self.kpis
        if self._sumo is None:
            raise SimulationError("the session was never started")
        end = self._time
        self._shutdown()
        assert self._tripinfo is not None
        trips = read_tripinfo(self._tripinfo)
        queues = [q for _, q in self._queue_samples]
        self.kpis = Kpis(
            vehicles=int(trips["vehicles"]),
            arrivals=self._arrivals,
            unfinished=int(trips["unfinished"]),
            teleports=self._teleports,
            mean_wait_s=trips["mean_wait_s"],
            mean_time_loss_s=trips["mean_time_loss_s"],
            mean_trip_s=trips["mean_trip_s"],
            mean_depart_delay_s=trips["mean_depart_delay_s"],
            mean_queue=float(np.mean(queues)) if queues else 0.0,
            max_queue=max(queues, default=0),
            queue_series=tuple(
                (t, q) for t, q in self._queue_samples if t % 60.0 < self.queue_sample_s
            ),
            end_s=end,
            wall_s=time.perf_counter() - self._wall0,
        )
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return self.kpis

    # -- stepping --

    @property
    def time_s(self) -> float:
        """Simulation time in seconds."""
        return self._time

    @property
    def done(self) -> bool:
        """No vehicle left to drive or depart, or the end time is reached."""
        if self._sumo is None:
            return True
        return self._time >= self.end_s or self._sumo.simulation.getMinExpectedNumber() <= 0

    def step(self) -> None:
        """Advance one second: actuators set the signals, then SUMO moves the vehicles."""
        sumo = self._sumo
        if sumo is None:
            raise SimulationError("the session is not running")
        for junction in self._junctions.values():
            if junction.actuator is not None:
                before = junction.actuator.state
                state = junction.actuator.tick(self._time)
                if state != before:
                    sumo.trafficlight.setRedYellowGreenState(junction.tls, state)
        sumo.simulationStep()
        self._time = float(sumo.simulation.getTime())
        self._arrivals += int(sumo.simulation.getArrivedNumber())
        self._teleports += int(sumo.simulation.getStartingTeleportNumber())
        if self._time >= self._next_sample:
            self._next_sample = self._time + self.queue_sample_s
            halting = sum(
                int(sumo.lane.getLastStepHaltingNumber(lane))
                for junction in self._junctions.values()
                for lanes in junction.lanes
                for lane, _, _ in lanes
            )
            self._queue_samples.append((self._time, halting))

    def live(self) -> dict[str, float]:
        """Figures so far, from what :meth:`step` keeps (no call into SUMO)."""
        return {
            "arrivals": float(self._arrivals),
            "teleports": float(self._teleports),
            "halted": float(self._queue_samples[-1][1]) if self._queue_samples else 0.0,
        }

    def run(self) -> Kpis:
        """Step to the end (SUMO's own control, or plans already requested) and close."""
        while not self.done:
            self.step()
        return self.close()

    # -- sensors and actuators --

    @property
    def junctions(self) -> tuple[str, ...]:
        """Signalised junction ids."""
        return tuple(self._junctions)

    def phases(self, junction: str) -> tuple[frozenset[str], ...]:
        """The approaches each green phase serves (by index), e.g. ``({north, south}, ...)``."""
        return self._junction(junction).served

    def green_states(self, junction: str) -> tuple[str, ...]:
        """The signal state string of each green phase."""
        return self._junction(junction).greens

    def yellow_s(self, junction: str) -> float:
        """The junction's yellow time (from its program)."""
        return self._junction(junction).yellow_s

    def actuator(self, junction: str) -> SignalActuator:
        """The junction's actuator (external control only)."""
        act = self._junction(junction).actuator
        if act is None:
            raise SimulationError(f"junction {junction} runs SUMO's {self.control} program")
        return act

    def _junction(self, junction: str) -> _Junction:
        try:
            return self._junctions[junction]
        except KeyError:
            raise ValueError(
                f"unknown junction {junction!r}: expected one of {', '.join(self._junctions)}"
            ) from None

    def observe(self, junction: str) -> JunctionObservation:
        """The junction's approaches (north, east, south, west) and signal, now."""
        sumo = self._sumo
        if sumo is None:
            raise SimulationError("the session is not running")
        info = self._junction(junction)
        veh = sumo.vehicle
        approaches = []
        for (name, edge, n_lanes, length), lanes in zip(info.arms, info.lanes, strict=True):
            pos: list[float] = []
            lane_idx: list[int] = []
            lengths: list[float] = []
            speeds: list[float] = []
            # A shared slot's roads are drawn over the same frame lanes (junction_map).
            for lane, i, lane_length in lanes:
                for vid in sumo.lane.getLastStepVehicleIDs(lane):
                    pos.append(lane_length - float(veh.getLanePosition(vid)))
                    lane_idx.append(i)
                    lengths.append(float(veh.getLength(vid)))
                    speeds.append(float(veh.getSpeed(vid)))
            approaches.append(
                ApproachObservation(
                    name=name,
                    edge=edge,
                    lane_length_m=length,
                    num_lanes=n_lanes,
                    positions_m=np.asarray(pos, dtype=np.float64),
                    lanes=np.asarray(lane_idx, dtype=np.int64),
                    lengths_m=np.asarray(lengths, dtype=np.float64),
                    speeds_mps=np.asarray(speeds, dtype=np.float64),
                )
            )
        act = info.actuator
        if act is not None:
            phase, target, stage = act.phase, act.target, act.stage
            elapsed = self._time - act.stage_since
        else:
            program_phase = int(sumo.trafficlight.getPhase(junction))
            greens = info.program_phase_of_green
            # In a yellow, the phase left is the last green before it.
            phase = max((g for g in range(len(greens)) if greens[g] <= program_phase), default=0)
            stage = "green" if program_phase in greens else "yellow"
            target = phase if stage == "green" else (phase + 1) % len(greens)
            elapsed = float(sumo.trafficlight.getSpentDuration(junction))
        return JunctionObservation(
            junction=junction,
            time_s=self._time,
            approaches=tuple(approaches),
            phase=phase,
            target=target,
            stage=stage,
            stage_elapsed_s=elapsed,
        )

    def observe_all(self) -> dict[str, JunctionObservation]:
        """Every junction's observation, now."""
        return {j: self.observe(j) for j in self._junctions}

    def request_phase(self, junction: str, phase: int) -> None:
        """Apply a plan: serve ``phase`` (an index into :meth:`phases`) as soon as it is safe."""
        self.actuator(junction).request(phase, self._time)

    def signal_history(self, junction: str) -> list[tuple[float, str]]:
        """Every signal state the actuator set, with its time (external control)."""
        return list(self.actuator(junction).history)
