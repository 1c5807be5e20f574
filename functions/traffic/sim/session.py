"""One SUMO simulation through libsumo: the sensor bridge, the actuator bridge and the KPIs.

* **Sensor bridge** — :meth:`SumoSession.observe` gives a junction's four
  approaches as the camera sees them: each vehicle's front-bumper distance to
  the stop line, lane and length (what :mod:`functions.traffic.occupancy` renders),
  with the exact count and the halting vehicles as ground truth.
* **Actuator bridge** — :meth:`SumoSession.request_phase` hands a plan (the
  green phase to serve) to the junction's :class:`SignalActuator`, which owns
  safety: a switch waits for the minimum green and always passes through
  yellow, so no plan, late or wrong, can make an unsafe switch.
* **KPIs** — :meth:`SumoSession.close` reads SUMO's tripinfo (unfinished trips
  included) and returns :class:`Kpis`.

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
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from functions.traffic.sim.network import GridNetwork, SimulationError, find_sumo_binary

__all__ = [
    "HALTING_SPEED_MPS",
    "ApproachObservation",
    "Control",
    "JunctionObservation",
    "Kpis",
    "SignalActuator",
    "SumoSession",
    "read_tripinfo",
    "transition_state",
]

logger = logging.getLogger(__name__)

Control = Literal["external", "static", "actuated", "delay_based"]
_GREEN = frozenset("Gg")
#: Below this speed (m/s) a vehicle counts as halting, as SUMO's own counters do.
HALTING_SPEED_MPS = 0.1
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


# -- the actuator bridge ----------------------------------------------------------


def transition_state(current: str, target: str) -> str:
    """The yellow state between two signal states: links losing green turn ``y``.

    Links green in both keep the target's state; every other link is red.

    Example:
        >>> transition_state("GGgrrr", "rrrGGg")
        'yyyrrr'
    """
    if len(current) != len(target):
        raise ValueError(f"states differ in length: {current!r} vs {target!r}")
    out = []
    for now, nxt in zip(current, target, strict=True):
        if now in _GREEN and nxt not in _GREEN:
            out.append("y")
        elif now in _GREEN and nxt in _GREEN:
            out.append(nxt)
        else:
            out.append("r")
    return "".join(out)


class SignalActuator:
    """Safe signal switching for one junction: minimum green, then yellow, then the new green.

    Plans only name the green phase wanted (:meth:`request`); :meth:`tick`
    decides the signal state for each step. A switch starts once the current
    green has lasted ``min_green_s``; links that lose green show yellow for
    ``yellow_s`` (then ``all_red_s`` of red, if any) before the new green. A
    request that arrives during yellow re-targets the switch only to a phase
    reachable safely (otherwise it waits for the next green). Without a request
    for ``fallback_after_s`` (the fog is gone) it rotates the phases itself with
    ``fallback_green_s`` greens. ``history`` records every state change.

    Example:
        >>> act = SignalActuator(["GGrr", "rrGG"], yellow_s=3, min_green_s=5)
        >>> act.request(1, now=0.0)
        >>> [act.tick(float(t)) for t in range(0, 12, 2)]
        ['GGrr', 'GGrr', 'GGrr', 'yyrr', 'yyrr', 'rrGG']
    """

    def __init__(
        self,
        greens: Sequence[str],
        *,
        yellow_s: float = 3.0,
        min_green_s: float = 5.0,
        all_red_s: float = 0.0,
        start_phase: int = 0,
        fallback_after_s: float | None = None,
        fallback_green_s: float = 30.0,
        now: float = 0.0,
    ) -> None:
        """Start in ``start_phase``'s green at ``now``."""
        if not greens or len({len(g) for g in greens}) != 1:
            raise ValueError(f"greens must be non-empty states of one length, got {greens!r}")
        if yellow_s <= 0 or min_green_s < 0 or all_red_s < 0:
            raise ValueError(
                f"need yellow_s > 0, min_green_s >= 0, all_red_s >= 0; got {yellow_s}, "
                f"{min_green_s}, {all_red_s}"
            )
        self.greens = tuple(greens)
        self.yellow_s = float(yellow_s)
        self.min_green_s = float(min_green_s)
        self.all_red_s = float(all_red_s)
        self.fallback_after_s = fallback_after_s
        self.fallback_green_s = float(fallback_green_s)
        self._check(start_phase)
        self.phase = start_phase
        self.stage: Literal["green", "yellow", "red"] = "green"
        self.stage_since = now
        self.green_since = now
        self.target = start_phase
        self.wanted = start_phase
        self.last_request_s = now
        self.requests = 0
        self.switches = 0
        self.state = self.greens[start_phase]
        self.history: list[tuple[float, str]] = [(now, self.state)]

    def _check(self, phase: int) -> None:
        if not 0 <= phase < len(self.greens):
            raise ValueError(f"phase {phase} out of range 0..{len(self.greens) - 1}")

    def request(self, phase: int, now: float) -> None:
        """Ask for ``phase``'s green; it comes as soon as it is safe."""
        self._check(phase)
        self.wanted = phase
        self.last_request_s = now
        self.requests += 1

    def green_elapsed(self, now: float) -> float:
        """Seconds the current green has shown (0 outside green)."""
        return now - self.green_since if self.stage == "green" else 0.0

    def tick(self, now: float) -> str:
        """The signal state from ``now`` until the next tick."""
        if (
            self.fallback_after_s is not None
            and now - self.last_request_s > self.fallback_after_s
            and self.stage == "green"
            and now - self.green_since >= self.fallback_green_s
        ):
            self.wanted = (self.phase + 1) % len(self.greens)
        if self.stage == "green":
            if self.wanted != self.phase and now - self.green_since >= self.min_green_s:
                self.target = self.wanted
                yellow = transition_state(self.greens[self.phase], self.greens[self.target])
                if "y" in yellow:
                    self._enter("yellow", yellow, now)
                else:
                    self._enter_green(now)
        elif self.stage == "yellow" and now - self.stage_since >= self.yellow_s:
            if self.all_red_s > 0:
                red = "".join(
                    c if c in _GREEN and self.state[i] in _GREEN else "r"
                    for i, c in enumerate(self.greens[self.target])
                )
                self._enter("red", red, now)
            else:
                self._enter_green(now)
        elif self.stage == "red" and now - self.stage_since >= self.all_red_s:
            self._enter_green(now)
        return self.state

    def _enter(self, stage: Literal["green", "yellow", "red"], state: str, now: float) -> None:
        self.stage = stage
        self.stage_since = now
        self._set(state, now)

    def _enter_green(self, now: float) -> None:
        self.phase = self.target
        self.green_since = now
        self.switches += 1
        self._enter("green", self.greens[self.phase], now)

    def _set(self, state: str, now: float) -> None:
        if state != self.state:
            self.state = state
            self.history.append((now, state))


# -- observations -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApproachObservation:
    """The vehicles on one approach, as the camera sees them, and the ground truth.

    ``positions_m`` is each front bumper's distance to the stop line; ``lanes``
    counts from the right (0); the fields match :class:`functions.occupancy.ApproachState`.
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


# -- the session ------------------------------------------------------------------


@dataclass
class _Junction:
    tls: str
    arms: tuple[tuple[str, str, int, float], ...]  # (approach, edge, lanes, length)
    lane_ids: tuple[tuple[str, ...], ...]
    greens: tuple[str, ...]
    served: tuple[frozenset[str], ...]
    yellow_s: float
    actuator: SignalActuator | None = None
    program_phase_of_green: tuple[int, ...] = field(default_factory=tuple)


class SumoSession:
    """A running SUMO simulation of a grid (see the module docstring).

    Args:
        grid: the network (from :func:`functions.traffic.sim.network.build_grid`).
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
        grid: GridNetwork,
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
            i for i, s in enumerate(states) if "y" not in s and any(c in _GREEN for c in s)
        ]
        greens = tuple(states[i] for i in green_idx)
        yellows = [p.duration for p in logic.phases if "y" in p.state]
        links = sumo.trafficlight.getControlledLinks(jid)
        edge_of = {a.incoming: a.name for a in arms}
        served: list[frozenset[str]] = []
        for state in greens:
            names = set()
            for k, link in enumerate(links):
                if link and state[k] in _GREEN:
                    edge = sumo.lane.getEdgeID(link[0][0])
                    if edge in edge_of:
                        names.add(edge_of[edge])
            served.append(frozenset(names))
        junction = _Junction(
            tls=jid,
            arms=tuple((a.name, a.incoming, a.lanes, a.length_m) for a in arms),
            lane_ids=tuple(tuple(f"{a.incoming}_{i}" for i in range(a.lanes)) for a in arms),
            greens=greens,
            served=tuple(served),
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
                for lanes in junction.lane_ids
                for lane in lanes
            )
            self._queue_samples.append((self._time, halting))

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
        for (name, edge, n_lanes, length), lane_ids in zip(info.arms, info.lane_ids, strict=True):
            pos: list[float] = []
            lane_idx: list[int] = []
            lengths: list[float] = []
            speeds: list[float] = []
            for i, lane in enumerate(lane_ids):
                for vid in sumo.lane.getLastStepVehicleIDs(lane):
                    pos.append(length - float(veh.getLanePosition(vid)))
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
