"""A random (non-grid) SUMO network and its demand: the traffic bench beyond grids.

:func:`build_random` runs ``netgenerate --rand`` with a fixed seed. Roads are
100-200 m long and meet at three, four or five arms at any angle; the nodes
with one road are dead ends on the fringe, where vehicles enter and leave.
Every junction (three arms or more) is signalised: a first, plain pass finds
them, then one net per control type (``static``, ``actuated``,
``delay_based``) is generated from the same seed with exactly those nodes in
``--tls.set`` (the nets differ only in their programs, checked), and nodes
that only bend a road are removed (``--geometry.remove``). Each junction's
incoming roads are mapped to the four approach slots the camera, the counter
and the controller know by bearing
(:func:`~functions.traffic.sim.junction_map.assign_slots`): a three-arm
junction has an empty slot, a five-arm one a shared slot. The phases the
controller may ask for come from each junction's real program
(:func:`~functions.traffic.sim.junction_map.served_approaches`, in
:class:`~functions.traffic.sim.session.SumoSession`).

:func:`make_random_demand` is :func:`~functions.traffic.sim.network.make_demand`
for such a net, at the same :data:`~functions.traffic.sim.network.DEMAND_LEVELS`:
each fringe entry gets the level's rate per entry; its side (the compass
direction of its dead end from the net's centre) weighs origins and
destinations as the grid's border sides do, and each trip takes a
shortest path with per-trip randomised road costs (up to 30 % longer, so
trips between the same two ends spread over near-equal routes as the grid's
two L-shapes do). One routes file per (level, seed), shared by every
controller.

Example:
    >>> net = build_random("/tmp/r", seed=2)                             # doctest: +SKIP
    >>> len(net.junctions), sorted(net.arm_counts().items())            # doctest: +SKIP
    (10, [(3, 5), (4, 4), (5, 1)])
    >>> make_random_demand("/tmp/r", net, level="peak", seed=0).vehicles  # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from functions.traffic.sim.junction_map import SLOT_BEARINGS, angle_between, assign_slots, bearing
from functions.traffic.sim.network import (
    APPROACHES,
    CONTROL_TYPES,
    Approach,
    ControlType,
    Demand,
    DemandLevel,
    SimulationError,
    _departures,
    _run_tool,
    demand_level,
    find_sumo_binary,
    write_routes,
)

__all__ = ["RandomNetwork", "build_random", "make_random_demand"]

_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
#: Per-trip road costs vary by up to this fraction (near-equal routes share the trips).
_ROUTE_SPREAD = 0.3


@dataclass(frozen=True, slots=True)
class RandomNetwork:
    """A generated random network: nets per control type, its junctions' four slots, its fringe.

    Attributes:
        nets: net file per control type.
        seed: ``netgenerate``'s seed; ``iterations`` its ``--rand.iterations``.
        junctions: each signalised junction's arms, one per slot (north, east,
            south, west; an empty :class:`Approach` where no road comes from).
        entries, exits: fringe edges (from / to a dead end) by the side of the
            net they are on.
        lengths: every edge's length; ``successors``: the edges each edge
            connects to (SUMO's connections, no U-turns).
    """

    nets: Mapping[ControlType, Path]
    seed: int
    iterations: int
    lanes: int
    speed_mps: float
    junctions: Mapping[str, tuple[Approach, ...]]
    entries: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    lengths: Mapping[str, float] = field(default_factory=dict)
    successors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Each fringe edge's dead end (an entry and the exit beside it share one).
    fringe_node: Mapping[str, str] = field(default_factory=dict)

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
        """``rand<seed>``."""
        return f"rand{self.seed}"

    def arm_counts(self) -> dict[int, int]:
        """How many junctions have 3, 4, 5... incoming roads."""
        out: dict[int, int] = {}
        for arms in self.junctions.values():
            n = sum(len(a.roads) for a in arms)
            out[n] = out.get(n, 0) + 1
        return out


@dataclass(frozen=True, slots=True)
class _Spec:
    """What ``netgenerate`` is asked for (every pass the same)."""

    seed: int
    iterations: int
    lanes: int
    speed_mps: float


def _netgenerate(exe: str, out: Path, spec: _Spec, *, tls: tuple[str, ...], control: str) -> None:
    args = [
        exe,
        "--rand",
        "--seed",
        str(spec.seed),
        "--rand.iterations",
        str(spec.iterations),
        "--rand.min-distance",
        "120",
        "--rand.max-distance",
        "200",
        "--rand.min-angle",
        "45",
        "--default.lanenumber",
        str(spec.lanes),
        "--default.speed",
        str(spec.speed_mps),
        "--default.junctions.type",
        "priority",
        "--geometry.remove",
        "--no-turnarounds",
    ]
    if tls:
        args += ["--tls.set", ",".join(tls), "--tls.default-type", control]
    tmp = out.with_suffix(f".{os.getpid()}.tmp.xml")
    args += ["--output-file", str(tmp)]
    _run_tool(args, f"netgenerate --rand ({control})")
    tmp.replace(out)


def _plain_edges(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter("edge") if e.get("function") != "internal"]


def _junction_nodes(path: Path) -> tuple[str, ...]:
    """Nodes where three or more roads meet (the ones to signalise)."""
    root = ET.parse(path).getroot()
    neighbours: dict[str, set[str]] = {}
    for edge in _plain_edges(root):
        a, b = edge.get("from", ""), edge.get("to", "")
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    return tuple(sorted(n for n, s in neighbours.items() if len(s) >= 3))


def _arm_bearing(lane: ET.Element, coords: tuple[float, float]) -> float:
    """Where an incoming road comes from, seen from its junction: its last shape segment."""
    points = [tuple(float(v) for v in p.split(",")[:2]) for p in lane.get("shape", "").split()]
    points = [p for p in points if p]
    x, y = coords
    # The lane's last segment points into the junction; its start is where the road comes from.
    for px, py in reversed(points[:-1]):
        if math.hypot(px - points[-1][0], py - points[-1][1]) > 1.0:
            return bearing(px - points[-1][0], py - points[-1][1])
    raise SimulationError(f"lane {lane.get('id')} near ({x:.0f}, {y:.0f}) has no usable shape")


def _read_random(
    nets: Mapping[ControlType, Path], signalised: tuple[str, ...], spec: _Spec
) -> RandomNetwork:
    root = ET.parse(nets["static"]).getroot()
    kinds: dict[str, str] = {}
    coords: dict[str, tuple[float, float]] = {}
    for node in root.iter("junction"):
        if node.get("type") == "internal":
            continue
        kinds[node.get("id", "")] = node.get("type", "")
        coords[node.get("id", "")] = (float(node.get("x", 0)), float(node.get("y", 0)))
    tls = sorted(t.get("id", "") for t in root.iter("tlLogic"))
    lights = sorted(j for j, k in kinds.items() if k == "traffic_light")
    if tls != list(signalised) or lights != list(signalised):
        raise SimulationError(
            f"netgenerate signalised {lights} with programs {tls}, expected {list(signalised)}"
        )
    edges = _plain_edges(root)
    ends = {e.get("id", ""): (e.get("from", ""), e.get("to", "")) for e in edges}
    first_lane = {e.get("id", ""): e.findall("lane") for e in edges}
    lengths = {eid: float(ls[0].get("length", 0)) for eid, ls in first_lane.items()}
    for control, path in nets.items():
        other = {e.get("id", ""): (e.get("from", ""), e.get("to", "")) for e in
                 _plain_edges(ET.parse(path).getroot())}  # fmt: skip
        if other != ends:
            raise SimulationError(f"the {control} net's roads differ from the static net's")
    successors: dict[str, set[str]] = {eid: set() for eid in ends}
    for conn in root.iter("connection"):
        a, b = conn.get("from", ""), conn.get("to", "")
        if a in successors and b in successors and ends[b][1] != ends[a][0]:
            successors[a].add(b)
    by_pair = {pair: eid for eid, pair in ends.items()}
    junctions: dict[str, tuple[Approach, ...]] = {}
    for jid in signalised:
        incoming = {eid: first_lane[eid] for eid, (_, dst) in ends.items() if dst == jid}
        slots = assign_slots(
            {eid: _arm_bearing(ls[0], coords[jid]) for eid, ls in incoming.items()}
        )
        arms = []
        for slot in APPROACHES:
            roads = slots[slot]
            if not roads:
                arms.append(Approach(slot, "", "", 0, 0.0, None))
                continue
            own, *rest = roads
            src = ends[own][0]
            arms.append(
                Approach(
                    name=slot,
                    incoming=own,
                    outgoing=by_pair.get((jid, src), ""),
                    lanes=len(incoming[own]),
                    length_m=lengths[own],
                    neighbour=src if src in signalised else None,
                    shared=tuple((r, len(incoming[r]), lengths[r]) for r in rest),
                )
            )
        junctions[jid] = tuple(arms)
    # The fringe: dead ends, each on the side of the net its bearing from the centre says.
    cx = float(np.mean([coords[j][0] for j in signalised]))
    cy = float(np.mean([coords[j][1] for j in signalised]))
    entries: dict[str, list[str]] = {a: [] for a in APPROACHES}
    exits: dict[str, list[str]] = {a: [] for a in APPROACHES}
    fringe_node: dict[str, str] = {}
    for eid, (src, dst) in sorted(ends.items()):
        for end, bucket in ((src, entries), (dst, exits)):
            if kinds.get(end) != "dead_end":
                continue
            x, y = coords[end]
            away = bearing(x - cx, y - cy)
            side = min(APPROACHES, key=lambda s: angle_between(away, SLOT_BEARINGS[s]))
            bucket[side].append(eid)
            fringe_node[eid] = end
    return RandomNetwork(
        nets=dict(nets),
        seed=spec.seed,
        iterations=spec.iterations,
        lanes=spec.lanes,
        speed_mps=spec.speed_mps,
        junctions=junctions,
        entries={k: tuple(v) for k, v in entries.items()},
        exits={k: tuple(v) for k, v in exits.items()},
        lengths=lengths,
        successors={k: tuple(sorted(v)) for k, v in successors.items()},
        fringe_node=fringe_node,
    )


def build_random(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 2,
    iterations: int = 20,
    lanes: int = 2,
    speed_mps: float = 13.89,
) -> RandomNetwork:
    """Generate a random network with every junction signalised, once per control type.

    The defaults (seed 2, 20 iterations) give 10 signalised junctions: five
    of three arms, four of four, one of five, and 10 fringe dead ends.
    Existing files are reused (the generator is deterministic).

    Raises:
        SimulationError: ``netgenerate`` is missing or fails, or the nets are
            not what was asked (a junction unsignalised, roads differing).
        ValueError: an argument is out of range.
    """
    if iterations < 2 or lanes < 1 or speed_mps <= 0:
        raise ValueError(
            f"need iterations >= 2, lanes >= 1, speed_mps > 0; got {iterations}, {lanes}, "
            f"{speed_mps}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exe = find_sumo_binary("netgenerate")
    tag = f"rand{seed}-i{iterations}-{lanes}l"
    net = _Spec(seed=seed, iterations=iterations, lanes=lanes, speed_mps=speed_mps)
    plain = out / f"{tag}-plain.net.xml"
    if not plain.is_file():
        _netgenerate(exe, plain, net, tls=(), control="static")
    signalised = _junction_nodes(plain)
    if len(signalised) < 2:
        raise SimulationError(f"netgenerate --rand made {len(signalised)} junctions; need 2+")
    nets: dict[ControlType, Path] = {}
    for control in CONTROL_TYPES:
        path = out / f"{tag}-{control}.net.xml"
        nets[control] = path
        if not path.is_file():
            _netgenerate(exe, path, net, tls=signalised, control=control)
    return _read_random(nets, signalised, net)


# -- demand -------------------------------------------------------------------------


def _route(
    net: RandomNetwork, entry: str, exit_edge: str, cost: Mapping[str, float]
) -> list[str] | None:
    """The cheapest edge path from ``entry`` to ``exit_edge`` (Dijkstra), or None."""
    best = {entry: 0.0}
    back: dict[str, str] = {}
    heap = [(0.0, entry)]
    # Each edge is settled once: at most len(edges) pops that expand.
    while heap:
        d, edge = heapq.heappop(heap)
        if edge == exit_edge:
            path = [edge]
            while path[-1] != entry:
                path.append(back[path[-1]])
            return path[::-1]
        if d > best.get(edge, math.inf):
            continue
        for nxt in net.successors.get(edge, ()):
            nd = d + cost[nxt]
            if nd < best.get(nxt, math.inf):
                best[nxt] = nd
                back[nxt] = edge
                heapq.heappush(heap, (nd, nxt))
    return None


def make_random_demand(
    out_dir: str | os.PathLike[str],
    net: RandomNetwork,
    *,
    level: str | DemandLevel,
    seed: int,
    horizon_s: float = 3600.0,
    scale: float = 1.0,
) -> Demand:
    """Write the routes of one demand level and seed on a random net (deterministic).

    As :func:`~functions.traffic.sim.network.make_demand`: each fringe entry
    departs at the level's time-varying rate (times its side's origin weight);
    destinations are fringe exits weighted by side (straight across 0.6, each
    lateral side 0.2, the own side 0 unless the level says otherwise; a side's
    weight spread over its exits; never the exit beside the entry, and when
    no weighted exit is reachable, any other exit); the route is the
    shortest path under road costs randomised per trip (module docstring).
    """
    spec, salt = demand_level(level, horizon_s=horizon_s, scale=scale)
    rng = np.random.default_rng([seed, salt, net.seed, net.iterations, 1])
    exits = [(side, e) for side in APPROACHES for e in net.exits[side]]
    per_side = {s: sum(1 for es, _ in exits if es == s) for s in APPROACHES}
    edges = sorted(net.lengths)
    trips: list[tuple[float, list[str]]] = []
    for side in APPROACHES:
        for entry in net.entries[side]:
            rate = spec.peak_vph_per_entry * scale * spec.origin_weights.get(side, 1.0)
            times = _departures(rng, rate, spec, horizon_s)
            if not times.size:
                continue
            heading = _OPPOSITE[side]
            weights = []
            for exit_side, exit_edge in exits:
                if net.fringe_node.get(exit_edge) == net.fringe_node.get(entry):
                    w = 0.0  # back out where it came in: no trip
                elif spec.destination_weights:
                    w = spec.destination_weights.get(exit_side, 0.0)
                else:
                    w = 0.6 if exit_side == heading else (0.0 if exit_side == side else 0.2)
                weights.append(w / per_side[exit_side])
            fallback = [
                0.0 if net.fringe_node.get(e) == net.fringe_node.get(entry) else 1.0
                for _, e in exits
            ]
            probs = np.asarray(weights if sum(weights) > 0 else fallback, dtype=np.float64)
            if probs.sum() <= 0:
                continue
            probs /= probs.sum()
            picks = rng.choice(len(exits), size=times.size, p=probs)
            spreads = rng.random((times.size, len(edges)))
            for t, pick, spread in zip(times, picks, spreads, strict=True):
                cost = {
                    e: net.lengths[e] * (1.0 + _ROUTE_SPREAD * float(s))
                    for e, s in zip(edges, spread, strict=True)
                }
                route = _route(net, entry, exits[int(pick)][1], cost)
                if route is not None:
                    trips.append((float(t), route))
    trips.sort(key=lambda trip: trip[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale_tag = "" if math.isclose(scale, 1.0) else f"-x{scale:g}"
    tag = f"{net.name}-i{net.iterations}-{spec.name}{scale_tag}"
    path = out / f"{tag}-s{seed}-{int(horizon_s)}s.rou.xml"
    write_routes(path, trips)
    return Demand(path=path, level=spec.name, seed=seed, vehicles=len(trips), horizon_s=horizon_s)
