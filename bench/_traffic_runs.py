"""One traffic bench run: a (network, level, seed, controller) job, run in a worker process.

``bench/traffic.py`` builds the :class:`Job` list and hands each to
:func:`run_job` in a spawned pool; a SUMO program runs on its own
(``functions.traffic.sim.session``), the adaptive controller through
:func:`run_adaptive`: every simulated second each junction's counts (the
counter CNN on its camera frames, or exact counts plus noise: :class:`Counter`)
drive its :class:`~functions.traffic.control.SignalController`, whose plans
reach the signals after the plan delay.
"""

from __future__ import annotations

import collections
import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench._camera_error import impaired_frames

#: Ground truth of "queued" in exact mode: slower than about a cell per frame.
QUEUED_MPS = 2.0
_SUMO_CONTROL: dict[str, Literal["static", "actuated", "delay_based"]] = {
    "fixed": "static",
    "actuated": "actuated",
    "delay_based": "delay_based",
}


@dataclass(frozen=True)
class Job:
    level: str
    seed: int
    controller: str
    rows: int
    cols: int
    horizon_s: float
    end_s: float
    workdir: str
    counter: str | None
    delay_s: float
    noise_std: float
    count_noise: float
    drop_rate: float
    config: dict[str, Any] = field(default_factory=dict)
    keep_trips: bool = False
    #: The cameras' impairments (``Impairments.as_dict``); None = perfect cameras.
    impairments: dict[str, Any] | None = None
    #: ``rand`` or ``rand<seed>``: a random network (``build_random``) instead of the grid.
    network: str = ""

    @property
    def label(self) -> str:
        """The network as the tables and the JSON name it: ``3x3``, ``rand``."""
        return self.network or f"{self.rows}x{self.cols}"


# -- counts -------------------------------------------------------------------------


class Counter:
    """Counts per approach from camera frames: the CNN, or exact counts plus noise."""

    def __init__(self, onnx_path: str | None, count_noise: float, seed: int) -> None:
        import numpy as np

        from functions.traffic.sim.count_error import CountError

        self.rng = np.random.default_rng([seed, 99])
        self.count_noise = count_noise
        self.session: Any = None
        if onnx_path is not None:
            from mesh.models._export import ort_session

            self.session = ort_session(Path(onnx_path), threads=1)
            self.input = self.session.get_inputs()[0].name
        self.errors: list[float] = []
        self.count_error = CountError()

    def count(self, frames: Any, exact: Any) -> Any:
        """frames [J * (1 + K), A, lanes, cells] (or None), exact [J, A, 1 + K] -> counts."""
        import numpy as np

        if self.session is None:
            noisy = exact + self.rng.normal(0.0, self.count_noise, exact.shape)
            out = np.clip(noisy, 0.0, None)
        else:
            raw = self.session.run(None, {self.input: frames})[0]  # [J * (1 + K), A]
            j, a, k = exact.shape
            raw = raw.reshape(j, k, a).transpose(0, 2, 1)
            # As the served module's postprocess does: whole vehicles, never negative.
            out = np.maximum(0.0, np.floor(raw + 0.5))
        self.errors.append(float(np.abs(out[..., 0] - exact[..., 0]).mean()))
        for counted, truth in zip(out[..., 0], exact[..., 0], strict=True):
            self.count_error.add(counted.tolist(), truth.tolist())
        return out


# -- one run --------------------------------------------------------------------------


def build_network(workdir: Path, name: str, rows: int = 0, cols: int = 0) -> Any:
    """The grid ``rows x cols``, or with ``name`` ``rand`` / ``rand<seed>`` a random net."""
    if name:
        from functions.traffic.sim.random_net import build_random

        if not name.startswith("rand"):
            raise ValueError(f"unknown network {name!r}: expected ROWSxCOLS, rand or rand<seed>")
        tail = name[len("rand") :]
        return build_random(workdir / "nets", **({"seed": int(tail)} if tail else {}))
    from functions.traffic.sim.network import build_grid

    return build_grid(workdir / "nets", rows=rows, cols=cols)


def network_demand(workdir: Path, net: Any, *, level: str, seed: int, horizon_s: float) -> Path:
    """The routes of one level and seed on ``net`` (grid or random), shared by every controller."""
    from functions.traffic.sim.network import GridNetwork, make_demand
    from functions.traffic.sim.random_net import make_random_demand

    make = make_demand if isinstance(net, GridNetwork) else make_random_demand
    return make(workdir / "routes", net, level=level, seed=seed, horizon_s=horizon_s).path


def _grid(job: Job) -> Any:
    return build_network(Path(job.workdir), job.network, job.rows, job.cols)


def _routes(job: Job, grid: Any) -> Path:
    return network_demand(
        Path(job.workdir), grid, level=job.level, seed=job.seed, horizon_s=job.horizon_s
    )


def _trips_dir(job: Job) -> Path | None:
    """Where a run's tripinfo stays with ``--keep-trips`` (else a temporary directory)."""
    if not job.keep_trips:
        return None
    name = f"{job.label}-{job.level}-s{job.seed}-{job.controller}"
    return Path(job.workdir) / "trips" / name


_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
_LATERAL = {"north": ("east", "west"), "south": ("east", "west"),
            "east": ("north", "south"), "west": ("north", "south")}  # fmt: skip


def exit_slots(arms: Any, slot_of: dict[str, tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Per approach, the (junction, slot) cameras that see its exit roads.

    An approach's exit is the road out of the opposite slot, seen by the next
    junction's camera in the slot it enters there (on a grid: the neighbour's
    arm of the same name). With no road opposite (the side road of a T), its
    vehicles turn: both lateral exits count, the fuller one standing for the
    exit (the controller takes one exit per approach). A border exit, or a road
    to no signalised junction, is free (no camera: empty list).
    """
    by_name = {a.name: a for a in arms}
    out = []
    for a in arms:
        ahead = by_name[_OPPOSITE[a.name]]
        ways = [ahead] if not ahead.empty else [by_name[s] for s in _LATERAL[a.name]]
        out.append(
            [slot_of[w.outgoing] for w in ways if w.neighbour is not None and w.outgoing in slot_of]
        )
    return out


#: Road length a jammed vehicle takes (its length and the gap to the next).
JAM_SPACING_M = 7.5


def slot_storage(arms: Any, empty_veh: float) -> tuple[float, ...]:
    """Vehicles each slot's roads hold when jammed: lanes times length over the spacing.

    A shared slot (a fifth road drawn into it) holds both roads; an empty slot
    (a T's) serves nobody and gets ``empty_veh``.
    """
    return tuple(
        sum(lanes * length for _, lanes, length in a.roads) / JAM_SPACING_M
        if a.roads
        else empty_veh
        for a in arms
    )


def run_adaptive(job: Job, grid: Any, routes: Path) -> tuple[Any, dict[str, Any]]:
    import numpy as np

    from functions.traffic.control import (
        ControllerConfig,
        JunctionLayout,
        Observation,
        SignalController,
        SignalReport,
    )
    from functions.traffic.impairments import Impairments
    from functions.traffic.occupancy import count_visible
    from functions.traffic.signals import still_frame
    from functions.traffic.sim.session import SumoSession

    # Which junction's slot each incoming road is drawn into (exits read the next
    # junction's camera there).
    slot_of = {
        edge: (j, i)
        for j, arms in grid.junctions.items()
        for i, a in enumerate(arms)
        for edge, _, _ in a.roads
    }
    counter = Counter(job.counter, job.count_noise, job.seed)
    rng = np.random.default_rng([job.seed, 7])
    impairments = Impairments.parse(job.impairments or "none")
    config = ControllerConfig(**{"latency_s": job.delay_s, **job.config})
    reasons: collections.Counter[str] = collections.Counter()
    pending: collections.deque[tuple[float, str, int]] = collections.deque()
    with SumoSession(
        grid,
        routes,
        control="external",
        seed=job.seed,
        end_s=job.end_s,
        min_green_s=config.min_green_s,
        workdir=_trips_dir(job),
    ) as sim:
        junctions = sim.junctions
        controllers = {}
        exits: dict[str, list[list[tuple[str, int]]]] = {}
        for j in junctions:
            arms = grid.junctions[j]
            roads = [a for a in arms if not a.empty]
            capacity = sum(a.lanes * a.length_m for a in roads) / len(roads) / JAM_SPACING_M
            # The phases come from the junction's own program (SumoSession.phases).
            layout = JunctionLayout(
                phases=sim.phases(j),
                capacity_veh=capacity,
                storage_veh=slot_storage(arms, capacity),
            )
            controllers[j] = SignalController(
                layout, replace_yellow(config, sim.yellow_s(j)), t=sim.time_s
            )
            exits[j] = exit_slots(arms, slot_of)
        index = {j: k for k, j in enumerate(junctions)}
        cuts = config.segments_m
        previous: dict[str, Any] = {}
        while not sim.done:
            now = sim.time_s
            while pending and pending[0][0] <= now + 1e-9:
                _, j, phase = pending.popleft()
                sim.request_phase(j, phase)
            observations = sim.observe_all()
            if counter.session is None:
                truth = np.asarray(
                    [
                        [
                            [obs.counts[i], np.count_nonzero(a.speeds_mps < QUEUED_MPS)]
                            + [count_visible(a.positions_m, m) for m in cuts]
                            for i, a in enumerate(obs.approaches)
                        ]
                        for obs in observations.values()
                    ],
                    dtype=np.float32,
                )  # [J, A, 2 + K]: whole, queued, segments
                batch = None
            else:
                frames, exact = [], []
                for j in junctions:
                    f, e = impaired_frames(
                        observations[j].approaches,
                        impairments,
                        rng,
                        segments_m=cuts,
                        noise_std=job.noise_std,
                    )
                    still = still_frame(f[0], previous.get(j))
                    previous[j] = f[0]
                    queued = [
                        np.count_nonzero(a.speeds_mps < QUEUED_MPS)
                        for a in observations[j].approaches
                    ]
                    frames.append(np.concatenate([f[:1], still[None], f[1:]]))
                    exact.append(np.concatenate([e[:1], np.asarray([queued]), e[1:]]).T)
                truth = np.asarray(exact, dtype=np.float32)  # [J, A, 2 + K]
                batch = np.concatenate(frames).astype(np.float32)
            counted = counter.count(batch, truth)  # [J, A, 2 + K]
            for j in junctions:
                k = index[j]
                obs = observations[j]
                dropped = rng.random(4) < job.drop_rate
                counts = [
                    None if d else float(v) for d, v in zip(dropped, counted[k, :, 0], strict=True)
                ]
                queued_counts = [
                    None if d else float(v) for d, v in zip(dropped, counted[k, :, 1], strict=True)
                ]
                segments = [
                    None if d else [float(x) for x in row]
                    for d, row in zip(dropped, counted[k, :, 2:], strict=True)
                ]
                downstream = [
                    max((float(counted[index[n], i, 0]) for n, i in e), default=0.0)
                    for e in exits[j]
                ]
                decision = controllers[j].step(
                    Observation(
                        t=now,
                        counts=counts,
                        segments=segments,
                        queued=queued_counts,
                        downstream=downstream,
                        signal=SignalReport(
                            phase=obs.phase,
                            stage=obs.stage,
                            elapsed_s=obs.stage_elapsed_s,
                            target=obs.target,
                        ),
                    )
                )
                reasons[decision.reason] += 1
                if job.delay_s <= 0:
                    sim.request_phase(j, decision.phase)
                else:
                    pending.append((now + job.delay_s, j, decision.phase))
            sim.step()
        switches = sum(sim.actuator(j).switches for j in junctions)
        greens: dict[int, list[float]] = collections.defaultdict(list)
        for j in junctions:
            act = sim.actuator(j)
            hist = act.history
            for (t0, state), (t1, _) in itertools.pairwise(hist):
                if state in act.greens:
                    greens[act.greens.index(state)].append(t1 - t0)
    kpis = sim.close()
    extras = {
        "count_mae": statistics.fmean(counter.errors) if counter.errors else 0.0,
        "count_error": counter.count_error.summary(),
        "switches": switches,
        "reasons": dict(reasons),
        "mean_green_s": {p: round(statistics.fmean(v), 1) for p, v in sorted(greens.items())},
    }
    return kpis, extras


def replace_yellow(config: Any, yellow_s: float) -> Any:
    from dataclasses import replace

    return replace(config, yellow_s=yellow_s)


def run_job(job: Job) -> dict[str, Any]:
    t0 = time.perf_counter()
    grid = _grid(job)
    routes = _routes(job, grid)
    extras: dict[str, Any] = {}
    if job.controller == "adaptive":
        kpis, extras = run_adaptive(job, grid, routes)
    else:
        from functions.traffic.sim.session import SumoSession

        with SumoSession(
            grid,
            routes,
            control=_SUMO_CONTROL[job.controller],
            seed=job.seed,
            end_s=job.end_s,
            workdir=_trips_dir(job),
        ) as sim:
            pass_through = sim.run()
        kpis = pass_through
    out = {"grid": job.label, "network": grid.name, "level": job.level, "seed": job.seed,
           "controller": job.controller, **kpis.as_dict()}  # fmt: skip
    out.update(extras)
    out["job_wall_s"] = time.perf_counter() - t0
    out.pop("queue_series", None)
    return out
