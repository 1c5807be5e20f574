"""SUMO grid networks and demand for the traffic scenario (pure functions over a directory).

:func:`build_grid` runs ``netgenerate`` once per signal-control type and writes
nets that differ only in their traffic-light programs: ``static`` (SUMO's
fixed-time plan, also the base the adaptive controller drives), ``actuated``
(gap-based) and ``delay_based`` (time-loss based). Every grid junction is
signalised; short dead-end stubs on the border give every junction four arms.
:func:`make_demand` writes one routes file per (level, seed) that every
controller then runs, so comparisons are on the same vehicles.

Binaries come from the ``eclipse-sumo`` wheel (``sumo.SUMO_HOME``) or ``PATH``;
without them :class:`SimulationError` says to install the ``sim`` extra.

Example:
    >>> grid = build_grid("/tmp/g", rows=3, cols=3)                     # doctest: +SKIP
    >>> routes = make_demand("/tmp/g", grid, level="peak", seed=1)      # doctest: +SKIP
    >>> grid.net("actuated"), routes.vehicles                           # doctest: +SKIP
    (PosixPath('/tmp/g/grid3x3-actuated.net.xml'), 2981)
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mesh import MeshError

__all__ = [
    "APPROACHES",
    "CONTROL_TYPES",
    "DEMAND_LEVELS",
    "Approach",
    "Demand",
    "DemandLevel",
    "GridNetwork",
    "Network",
    "SimulationError",
    "build_grid",
    "demand_level",
    "find_sumo_binary",
    "make_demand",
    "write_routes",
]

#: Arms of a grid junction, in the order the occupancy frames stack them.
APPROACHES: tuple[str, ...] = ("north", "east", "south", "west")
ControlType = Literal["static", "actuated", "delay_based"]
#: SUMO's own signal programs, one net each.
CONTROL_TYPES: tuple[ControlType, ...] = ("static", "actuated", "delay_based")
_INSTALL_HINT = "pip install 'fogmesh[sim]'"


class SimulationError(MeshError, RuntimeError):
    """SUMO is missing, or a SUMO tool or simulation failed (the message says which)."""


def find_sumo_binary(name: str) -> str:
    """Path of a SUMO tool (``sumo``, ``netgenerate``, ...): the eclipse-sumo wheel, then PATH.

    Raises:
        SimulationError: the tool is not installed (with the install hint).
    """
    candidates: list[Path] = []
    home = os.environ.get("SUMO_HOME")
    try:
        import sumo  # the eclipse-sumo wheel

        candidates.append(Path(sumo.SUMO_HOME) / "bin" / name)
    except ImportError:
        pass
    if home:
        candidates.append(Path(home) / "bin" / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise SimulationError(f"SUMO's {name!r} was not found: {_INSTALL_HINT} (or put it on PATH)")
    return found


def _run_tool(args: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SimulationError(f"{what} failed to run: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SimulationError(f"{what} exited with {done.returncode}: {' | '.join(tail)}")


# -- the network ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approach:
    """One arm of a junction: the edge that enters it and the edge that leaves it."""

    name: str
    incoming: str
    outgoing: str
    lanes: int
    length_m: float
    #: The junction at the other end of the arm; None on the border (a dead-end stub).
    neighbour: str | None
    #: Further incoming roads drawn into this arm's frame, ``(edge, lanes, length_m)``:
    #: a junction of more than four arms (:func:`~functions.traffic.sim.junction_map.assign_slots`).
    shared: tuple[tuple[str, int, float], ...] = ()

    @property
    def empty(self) -> bool:
        """No road in this slot (a three-arm junction): nothing to see, nobody to serve."""
        return not self.incoming

    @property
    def roads(self) -> tuple[tuple[str, int, float], ...]:
        """Every incoming road of the slot, ``(edge, lanes, length_m)``, its own first."""
        own = () if self.empty else ((self.incoming, self.lanes, self.length_m),)
        return own + self.shared


class Network(Protocol):
    """What a simulation needs of a network: its nets and its junctions' four slots.

    :class:`GridNetwork` and :class:`~functions.traffic.sim.random_net.RandomNetwork`.
    """

    @property
    def name(self) -> str:
        """A short label (file names, tables)."""
        ...

    @property
    def junctions(self) -> Mapping[str, tuple[Approach, ...]]:
        """Each signalised junction's arms, one per slot of :data:`APPROACHES`."""
        ...

    def net(self, control: str) -> Path:
        """The net file of a control type."""
        ...


@dataclass(frozen=True, slots=True)
class GridNetwork:
    """A generated grid: nets per control type, and its junctions' arms.

    Attributes:
        nets: net file per control type (``static``, ``actuated``, ``delay_based``).
        rows, cols: signalised junctions along y and x.
        edge_length_m: distance between neighbouring junctions.
        lanes: lanes per direction on every edge.
        junctions: arms of each junction, north/east/south/west.
        entries: border edges where vehicles enter; ``exits`` where they leave.
    """

    nets: Mapping[ControlType, Path]
    rows: int
    cols: int
    edge_length_m: float
    lanes: int
    speed_mps: float
    junctions: Mapping[str, tuple[Approach, ...]]
    positions: Mapping[str, tuple[int, int]]
    entries: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    edges: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def net(self, control: str) -> Path:
        """The net file of a control type; the adaptive controller drives ``static``."""
        try:
            return self.nets[control]  # type: ignore[index]
        except KeyError:
            raise ValueError(
                f"unknown control type {control!r}: expected one of {', '.join(CONTROL_TYPES)}"
            ) from None

    @property
    def name(self) -> str:
        """``grid<rows>x<cols>``."""
        return f"grid{self.rows}x{self.cols}"


def _junction_ids(rows: int, cols: int) -> list[str]:
    # netgenerate names grid nodes <column letter><row number>.
    if cols > 26:
        raise ValueError(f"at most 26 columns are supported, got {cols}")
    return [f"{chr(ord('A') + x)}{y}" for x in range(cols) for y in range(rows)]


def _read_grid(
    nets: Mapping[ControlType, Path], rows: int, cols: int, edge_length_m: float, lanes: int
) -> GridNetwork:
    root = ET.parse(nets["static"]).getroot()
    coords: dict[str, tuple[float, float]] = {}
    kinds: dict[str, str] = {}
    for node in root.iter("junction"):
        if node.get("type") == "internal":
            continue
        coords[node.get("id", "")] = (float(node.get("x", 0)), float(node.get("y", 0)))
        kinds[node.get("id", "")] = node.get("type", "")
    edges: dict[tuple[str, str], str] = {}
    lane_info: dict[str, tuple[int, float, float]] = {}
    for edge in root.iter("edge"):
        if edge.get("function") == "internal":
            continue
        eid = edge.get("id", "")
        edges[(edge.get("from", ""), edge.get("to", ""))] = eid
        edge_lanes = edge.findall("lane")
        lane_info[eid] = (
            len(edge_lanes),
            float(edge_lanes[0].get("length", 0)),
            float(edge_lanes[0].get("speed", 0)),
        )
    signalised = sorted(j for j in _junction_ids(rows, cols) if kinds.get(j) == "traffic_light")
    if len(signalised) != rows * cols:
        raise SimulationError(
            f"netgenerate signalised {len(signalised)} of {rows * cols} grid junctions"
        )
    junctions: dict[str, tuple[Approach, ...]] = {}
    positions: dict[str, tuple[int, int]] = {}
    for jid in signalised:
        positions[jid] = (ord(jid[0]) - ord("A"), int(jid[1:]))
        jx, jy = coords[jid]
        arms: dict[str, Approach] = {}
        for (src, dst), eid in edges.items():
            if dst != jid:
                continue
            sx, sy = coords[src]
            dx, dy = sx - jx, sy - jy
            name = (
                ("east" if dx > 0 else "west")
                if abs(dx) > abs(dy)
                else ("north" if dy > 0 else "south")
            )
            n, length, _ = lane_info[eid]
            arms[name] = Approach(
                name=name,
                incoming=eid,
                outgoing=edges[(jid, src)],
                lanes=n,
                length_m=length,
                neighbour=src if src in signalised else None,
            )
        if set(arms) != set(APPROACHES):
            raise SimulationError(f"junction {jid} has arms {sorted(arms)}, expected four")
        junctions[jid] = tuple(arms[a] for a in APPROACHES)
    entries: dict[str, list[str]] = {a: [] for a in APPROACHES}
    exits: dict[str, list[str]] = {a: [] for a in APPROACHES}
    for jid in signalised:
        for arm in junctions[jid]:
            if arm.neighbour is None:
                # Vehicles entering from the north border drive south, and so on.
                entries[arm.name].append(arm.incoming)
                exits[arm.name].append(arm.outgoing)
    speed = next(iter(lane_info.values()))[2]
    return GridNetwork(
        nets=dict(nets),
        rows=rows,
        cols=cols,
        edge_length_m=edge_length_m,
        lanes=lanes,
        speed_mps=speed,
        junctions=junctions,
        positions=positions,
        entries={k: tuple(sorted(v)) for k, v in entries.items()},
        exits={k: tuple(sorted(v)) for k, v in exits.items()},
        edges=edges,
    )


def build_grid(
    out_dir: str | os.PathLike[str],
    *,
    rows: int = 3,
    cols: int = 3,
    edge_length_m: float = 200.0,
    lanes: int = 2,
    speed_mps: float = 13.89,
) -> GridNetwork:
    """Generate a ``rows x cols`` grid with every junction signalised, once per control type.

    Lanes are ``edge_length_m`` minus the junctions (179 m for 200 m), inside the
    240 m a camera frame covers, so the counter sees every queued vehicle.
    Existing files are reused (the generator is deterministic).

    Raises:
        SimulationError: ``netgenerate`` is missing or fails.
        ValueError: a size is out of range.

    Example:
        >>> grid = build_grid("/tmp/g", rows=2, cols=2)       # doctest: +SKIP
        >>> sorted(grid.junctions)                            # doctest: +SKIP
        ['A0', 'A1', 'B0', 'B1']
    """
    if rows < 1 or cols < 1 or lanes < 1 or edge_length_m < 50 or speed_mps <= 0:
        raise ValueError(
            f"need rows, cols, lanes >= 1, edge_length_m >= 50, speed_mps > 0; got {rows}, "
            f"{cols}, {lanes}, {edge_length_m}, {speed_mps}"
        )
    if rows * cols == 1:
        raise ValueError("a grid needs at least two junctions (netgenerate refuses 1x1)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exe = find_sumo_binary("netgenerate")
    ids = _junction_ids(rows, cols)
    nets: dict[ControlType, Path] = {}
    tag = f"grid{rows}x{cols}-{int(edge_length_m)}m-{lanes}l"
    for control in CONTROL_TYPES:
        path = out / f"{tag}-{control}.net.xml"
        nets[control] = path
        if path.is_file():
            continue
        tmp = path.with_suffix(f".{os.getpid()}.tmp.xml")
        _run_tool(
            [
                exe,
                "--grid",
                "--grid.x-number",
                str(cols),
                "--grid.y-number",
                str(rows),
                "--grid.length",
                str(edge_length_m),
                "--grid.attach-length",
                str(edge_length_m),
                "--default.lanenumber",
                str(lanes),
                "--default.speed",
                str(speed_mps),
                "--default.junctions.type",
                "priority",
                "--tls.set",
                ",".join(ids),
                "--tls.default-type",
                control,
                "--no-turnarounds",
                "--seed",
                "0",
                "--output-file",
                str(tmp),
            ],
            f"netgenerate ({control})",
        )
        tmp.replace(path)
    return _read_grid(nets, rows, cols, edge_length_m, lanes)


# -- demand -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemandLevel:
    """A demand level: vehicles per hour per border entry at the peak, and where they go.

    The rate follows ``base + (1 - base) * bump(t)``: ``base`` of the peak rate at
    the start and end, the full rate at ``peak_at`` of the horizon, a Gaussian of
    width ``peak_width`` (fractions of the horizon).
    """

    name: str
    peak_vph_per_entry: float
    base: float = 0.4
    peak_at: float = 0.5
    peak_width: float = 0.22
    #: Weight of each side's entries (where trips start); default uniform.
    origin_weights: Mapping[str, float] = field(default_factory=dict)
    #: Weight of each side's exits; default: straight across 0.6, each lateral side 0.2.
    destination_weights: Mapping[str, float] = field(default_factory=dict)
    description: str = ""


_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

#: The levels the benchmark runs. ``directional`` is a one-way commute (west to
#: east), where a symmetric controller has no balance to exploit; ``peak+10`` and
#: ``peak+20`` are the peak's shape with 10 and 20 % more vehicles.
DEMAND_LEVELS: Mapping[str, DemandLevel] = {
    "light": DemandLevel("light", 180.0, description="uncongested, ~180 veh/h per entry at peak"),
    "medium": DemandLevel("medium", 380.0, description="busy, queues clear each cycle"),
    "peak": DemandLevel(
        "peak", 620.0, base=0.35, description="a peak that saturates the grid, then recedes"
    ),
    # Beyond the tuned peak, where demand exceeds what the grid carries: a
    # controller is judged by how it degrades there (issue 20).
    "peak+10": DemandLevel(
        "peak+10", 682.0, base=0.35, description="the peak with 10 % more demand: oversaturated"
    ),
    "peak+20": DemandLevel(
        "peak+20", 744.0, base=0.35, description="the peak with 20 % more demand: oversaturated"
    ),
    "directional": DemandLevel(
        "directional",
        300.0,
        origin_weights={"west": 4.0, "north": 1.0, "south": 1.0, "east": 0.35},
        destination_weights={"east": 4.0, "north": 1.0, "south": 1.0, "west": 0.2},
        description="one-way commute: most trips west to east",
    ),
}


@dataclass(frozen=True, slots=True)
class Demand:
    """A routes file and what is in it."""

    path: Path
    level: str
    seed: int
    vehicles: int
    horizon_s: float


def demand_level(
    level: str | DemandLevel, *, horizon_s: float, scale: float
) -> tuple[DemandLevel, int]:
    """A demand level by name (or as given), checked, and its salt for the routes' RNG.

    Raises:
        ValueError: an unknown level, or ``horizon_s`` or ``scale`` not positive.
    """
    spec = DEMAND_LEVELS.get(level, None) if isinstance(level, str) else level
    if spec is None:
        raise ValueError(
            f"unknown demand level {level!r}: expected one of {', '.join(DEMAND_LEVELS)}"
        )
    if horizon_s <= 0 or scale <= 0:
        raise ValueError(f"horizon_s and scale must be > 0, got {horizon_s}, {scale}")
    return spec, sum(ord(c) * (i + 1) for i, c in enumerate(spec.name))


def write_routes(path: Path, trips: Sequence[tuple[float, Sequence[str]]]) -> None:
    """Write ``(depart_s, edges)`` trips, in order, as a SUMO routes file (atomically).

    Vehicles are ``v0``, ``v1``, ... and depart on the best lane at full speed.
    """
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<routes>"]
    for i, (t, route) in enumerate(trips):
        lines.append(
            f'    <vehicle id="v{i}" depart="{t:.2f}" departLane="best" departSpeed="max">'
            f'<route edges="{" ".join(route)}"/></vehicle>'
        )
    lines.append("</routes>")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _profile(level: DemandLevel, t: np.ndarray, horizon_s: float) -> np.ndarray:
    bump = np.exp(-(((t / horizon_s - level.peak_at) / level.peak_width) ** 2))
    return np.asarray(level.base + (1.0 - level.base) * bump)


def _departures(
    rng: np.random.Generator, rate_vph: float, level: DemandLevel, horizon_s: float
) -> np.ndarray:
    # Thinning: a Poisson process at the peak rate, each event kept with profile(t).
    peak_rate = rate_vph / 3600.0
    n = int(rng.poisson(peak_rate * horizon_s))
    t = np.sort(rng.uniform(0.0, horizon_s, n))
    keep = rng.random(n) < _profile(level, t, horizon_s)
    return np.asarray(t[keep])


def _grid_route(
    grid: GridNetwork, border: Mapping[str, str], entry: str, exit_edge: str, vertical_first: bool
) -> list[str]:
    """An L-shaped route (at most one turn inside the grid) from a border entry to an exit."""
    start_j, end_j = border[entry], border[exit_edge]
    (x0, y0), (x1, y1) = grid.positions[start_j], grid.positions[end_j]
    name_at = {pos: jid for jid, pos in grid.positions.items()}
    path = [(x0, y0)]
    legs = ("y", "x") if vertical_first else ("x", "y")
    x, y = x0, y0
    for leg in legs:
        while (leg == "x" and x != x1) or (leg == "y" and y != y1):
            if leg == "x":
                x += 1 if x1 > x else -1
            else:
                y += 1 if y1 > y else -1
            path.append((x, y))
    nodes = [name_at[p] for p in path]
    route = [entry]
    for a, b in itertools.pairwise(nodes):
        route.append(grid.edges[(a, b)])
    route.append(exit_edge)
    return route


def make_demand(
    out_dir: str | os.PathLike[str],
    grid: GridNetwork,
    *,
    level: str | DemandLevel,
    seed: int,
    horizon_s: float = 3600.0,
    scale: float = 1.0,
) -> Demand:
    """Write the routes of one demand level and seed (deterministic) and return them.

    Trips start on border entries at a time-varying rate (a peak mid-horizon),
    each with an L-shaped route to a border exit on another side (straight on,
    or one turn inside the grid, horizontal or vertical leg first at random).
    Vehicles depart on the best lane at full speed.

    Args:
        out_dir: where the ``.rou.xml`` goes.
        grid: the network from :func:`build_grid`.
        level: a name in :data:`DEMAND_LEVELS` or a :class:`DemandLevel`.
        seed: seeds arrivals, origins, destinations and routes.
        horizon_s: seconds over which vehicles depart.
        scale: multiplies the level's rate (for calibration).

    Example:
        >>> make_demand("/tmp/g", grid, level="light", seed=0).vehicles   # doctest: +SKIP
        412
    """
    spec, salt = demand_level(level, horizon_s=horizon_s, scale=scale)
    rng = np.random.default_rng([seed, salt, grid.rows, grid.cols])
    origin_w = {side: spec.origin_weights.get(side, 1.0) for side in APPROACHES}
    entries = [(side, e) for side in APPROACHES for e in grid.entries[side]]
    exits = [(side, e) for side in APPROACHES for e in grid.exits[side]]
    # The grid junction at the inner end of each border stub.
    border = {
        edge: jid
        for jid, arms in grid.junctions.items()
        for arm in arms
        if arm.neighbour is None
        for edge in (arm.incoming, arm.outgoing)
    }
    trips: list[tuple[float, list[str]]] = []
    for side, entry in entries:
        rate = spec.peak_vph_per_entry * scale * origin_w[side]
        times = _departures(rng, rate, spec, horizon_s)
        if not times.size:
            continue
        # Entering from the west border means driving east: "straight across" exits east.
        heading = _OPPOSITE[side]
        weights = []
        for exit_side, _ in exits:
            if spec.destination_weights:
                w = spec.destination_weights.get(exit_side, 0.0)
            else:
                w = 0.6 if exit_side == heading else (0.0 if exit_side == side else 0.2)
            weights.append(0.0 if exit_side == side else w)
        # Spread each side's weight over its exits.
        per_side = {s: sum(1 for es, _ in exits if es == s) for s in APPROACHES}
        probs = np.array([w / per_side[s] for w, (s, _) in zip(weights, exits, strict=True)])
        probs /= probs.sum()
        picks = rng.choice(len(exits), size=times.size, p=probs)
        firsts = rng.random(times.size) < 0.5
        for t, pick, vertical_first in zip(times, picks, firsts, strict=True):
            route = _grid_route(grid, border, entry, exits[int(pick)][1], bool(vertical_first))
            trips.append((float(t), route))
    trips.sort(key=lambda trip: trip[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale_tag = "" if math.isclose(scale, 1.0) else f"-x{scale:g}"
    path = out / f"{grid.name}-{spec.name}{scale_tag}-s{seed}-{int(horizon_s)}s.rou.xml"
    write_routes(path, trips)
    return Demand(path=path, level=spec.name, seed=seed, vehicles=len(trips), horizon_s=horizon_s)
