"""Traffic benchmark: the adaptive controller against SUMO's own signal programs.

For each demand level and seed, every controller runs on the same SUMO grid
and the same routes (``functions.traffic.sim.network``):

* ``fixed`` — SUMO's fixed-time program (``static``);
* ``actuated`` — SUMO's gap-based actuated control;
* ``delay_based`` — SUMO's time-loss based actuated control;
* ``adaptive`` — ``functions.traffic.control``: every second each junction's camera
  frame (``functions.traffic.occupancy``, with sensor noise and the cameras'
  impairments: occlusion, missed and ghost detections, jitter, a reach of
  150 m; ``--no-impairments`` for perfect cameras) goes through the vehicle
  counter CNN (ONNX Runtime), whole approach and stop-line segments; the
  counts (held on a dropped frame) drive the controller, whose plan reaches
  the signals ``--delay-s`` later (the mesh's latency) through the actuator,
  which enforces yellow and the minimum green.

Without ``--counter`` a counter (8192 frames, 12 epochs, impaired as the
cameras are) is trained once (``functions.traffic.app``) and cached under the
work directory; ``--exact`` uses exact counts plus Gaussian noise (sd
``--count-noise``) instead. The table shows mean waiting time, time loss
(creeping counts there, not in waiting time), trip duration, arrivals and
teleports, averaged over seeds; then the camera count error per approach (the
counter's counts against SUMO's, ``bench/_camera_error.py``).

``slo_attainment`` and ``lost_events`` come from the live mesh: after the
SUMO runs (so the two never compete for the CPU), the bench runs a scenario
with ``mesh run`` — ``scenarios/traffic.yaml`` (the demo: 3x3, nine agents,
faults), or ``scenarios/small.yaml`` with ``--quick`` — and reads its
``report.json``: each module's share of calls within its SLO, fault windows
included (a failed or timed-out request, or an event never received, misses
it), the worst of them (``slo_attainment``), the requests lost (failed or timed
out) and the camera events sent but never received.
``--mesh FILE`` picks another scenario, ``--no-mesh`` skips it (both keys null).

Usage::

    python bench/traffic.py --quick     # 2x2, 1 seed, ~40 s (+1-2 min to train a counter once)
                                        # + the small scenario (~3 min)
    python bench/traffic.py --seeds 3 --json bench/results/traffic.json
    python bench/traffic.py --levels peak --grid 4x4 --counter counter.onnx
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._camera_error import (  # noqa: E402
    count_error_by_level,
    ensure_counter,
    impaired_frames,
    print_count_error,
)
from bench.traffic_figures import (  # noqa: E402
    BASIS,
    CONTROLLERS,
    check_targets,
    print_table,
    summarise,
)

LEVELS = ("light", "medium", "peak", "peak+10", "peak+20", "directional")
#: Seeds by default: the peak, where ratios sit closest to their targets, gets more.
SEEDS, PEAK_SEEDS = 3, 9
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


def _grid(job: Job) -> Any:
    from functions.traffic.sim.network import build_grid

    return build_grid(Path(job.workdir) / "nets", rows=job.rows, cols=job.cols)


def _routes(job: Job, grid: Any) -> Path:
    from functions.traffic.sim.network import make_demand

    return make_demand(
        Path(job.workdir) / "routes", grid, level=job.level, seed=job.seed, horizon_s=job.horizon_s
    ).path


def _trips_dir(job: Job) -> Path | None:
    """Where a run's tripinfo stays with ``--keep-trips`` (else a temporary directory)."""
    if not job.keep_trips:
        return None
    name = f"{job.rows}x{job.cols}-{job.level}-s{job.seed}-{job.controller}"
    return Path(job.workdir) / "trips" / name


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

    opposite = {"north": "south", "south": "north", "east": "west", "west": "east"}
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
        exits: dict[str, list[tuple[str, int] | None]] = {}
        for j in junctions:
            arms = grid.junctions[j]
            capacity = sum(a.lanes * a.length_m for a in arms) / len(arms) / 7.5
            layout = JunctionLayout(phases=sim.phases(j), capacity_veh=capacity)
            controllers[j] = SignalController(
                layout, replace_yellow(config, sim.yellow_s(j)), t=sim.time_s
            )
            by_name = {a.name: a for a in arms}
            # Approach a's straight-on exit is the neighbour's arm a (same heading).
            exits[j] = [
                None
                if by_name[opposite[a.name]].neighbour is None
                else (by_name[opposite[a.name]].neighbour, i)
                for i, a in enumerate(arms)
            ]
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
                    0.0 if e is None else float(counted[index[e[0]], e[1], 0]) for e in exits[j]
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
    out = {"grid": f"{job.rows}x{job.cols}", "level": job.level, "seed": job.seed,
           "controller": job.controller, **kpis.as_dict()}  # fmt: skip
    out.update(extras)
    out["job_wall_s"] = time.perf_counter() - t0
    out.pop("queue_series", None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2x2 grid, 1 seed, 30 min demand")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds 0..N-1 at every level (default {SEEDS}, the peak {PEAK_SEEDS})",
    )
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    parser.add_argument(
        "--grid",
        default=None,
        help="ROWSxCOLS, or several comma-separated (default 3x3,4x4; quick 2x2)",
    )
    parser.add_argument("--horizon-s", type=float, default=None, help="demand seconds")
    parser.add_argument("--drain-s", type=float, default=1800.0, help="extra time to finish")
    parser.add_argument("--counter", default=None, help="vehicle-counter ONNX")
    parser.add_argument("--exact", action="store_true", help="exact counts + noise, no CNN")
    parser.add_argument("--count-noise", type=float, default=0.5, help="sd with --exact")
    parser.add_argument("--noise-std", type=float, default=0.03, help="camera pixel noise")
    parser.add_argument(
        "--no-impairments", action="store_true", help="perfect cameras (and counter trained so)"
    )
    parser.add_argument("--drop-rate", type=float, default=0.0, help="dropped frames")
    parser.add_argument("--delay-s", type=float, default=1.0, help="plan latency (sim s)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep-trips", action="store_true", help="keep tripinfo files")
    parser.add_argument("--set", action="append", default=[], help="controller option k=v")
    parser.add_argument("--mesh", type=Path, default=None, help="scenario for the mesh KPIs")
    parser.add_argument("--no-mesh", action="store_true", help="skip the mesh run")
    args = parser.parse_args(argv)

    def seeds_of(level: str) -> int:
        if args.seeds is not None:
            return int(args.seeds)
        return 1 if args.quick else (PEAK_SEEDS if level == "peak" else SEEDS)

    grids = [g for g in (args.grid or ("2x2" if args.quick else "3x3,4x4")).split(",") if g]
    shapes = [(int(r), int(c)) for r, c in (g.lower().split("x") for g in grids)]
    horizon = args.horizon_s or (1800.0 if args.quick else 3600.0)
    levels = [x for x in args.levels.split(",") if x]
    controllers = [x for x in args.controllers.split(",") if x]
    workdir = args.workdir or Path(tempfile.gettempdir()) / "fogmesh-bench-traffic"
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        k: tuple(float(x) for x in v.split(":")) if ":" in v else float(v)
        for k, v in (item.split("=", 1) for item in args.set)
    }

    from functions.traffic.impairments import Impairments

    impairments = Impairments.none() if args.no_impairments else Impairments()
    counter: str | None = None
    source = f"exact counts + N(0, {args.count_noise}) noise"
    if "adaptive" in controllers and not args.exact:
        counter = args.counter or ensure_counter(workdir, impairments)
        seen = "perfect" if impairments.is_none else f"impaired {impairments.as_dict()}"
        source = (
            f"counter CNN {Path(counter).name} on camera frames (pixel noise "
            f"{args.noise_std}; cameras {seen})"
        )
    from functions.traffic.sim.network import build_grid, make_demand

    for rows, cols in shapes:
        net = build_grid(workdir / "nets", rows=rows, cols=cols)
        for level in levels:
            for seed in range(seeds_of(level)):
                make_demand(workdir / "routes", net, level=level, seed=seed, horizon_s=horizon)

    jobs = [
        Job(
            level=level,
            seed=seed,
            controller=ctl,
            rows=rows,
            cols=cols,
            horizon_s=horizon,
            end_s=horizon + args.drain_s,
            workdir=str(workdir),
            counter=counter,
            delay_s=args.delay_s,
            noise_std=args.noise_std,
            count_noise=args.count_noise,
            drop_rate=args.drop_rate,
            config=config,
            keep_trips=args.keep_trips,
            impairments=None if impairments.is_none else impairments.as_dict(),
        )
        for rows, cols in shapes
        for level in levels
        for seed in range(seeds_of(level))
        for ctl in controllers
    ]
    # The adaptive runs are the long ones: start them first.
    jobs.sort(key=lambda j: j.controller != "adaptive")
    seed_counts = ", ".join(f"{level} {seeds_of(level)}" for level in levels)
    print(
        f"traffic bench: grids {', '.join(grids)}; levels x seeds: {seed_counts}; "
        f"{len(controllers)} controllers, {horizon:.0f} s demand ({len(jobs)} runs); "
        f"adaptive counts: {source}; plan delay {args.delay_s:g} s",
        flush=True,
    )
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    rows_out: list[dict[str, Any]] = []
    with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(run_job, jobs):
            rows_out.append(row)
            print(
                f"  {row['grid']:<5} {row['level']:<12}s{row['seed']} {row['controller']:<12} "
                f"wait {row['mean_wait_s']:6.1f}  loss {row['mean_time_loss_s']:6.1f}  "
                f"teleports {row['teleports']}  ({row['job_wall_s']:.0f} s)"
                + (
                    f"  switches {row['switches']} greens {row['mean_green_s']} {row['reasons']}"
                    if "reasons" in row
                    else ""
                ),
                flush=True,
            )
    wall = time.perf_counter() - t0
    by_grid: dict[str, Any] = {}
    for grid in grids:
        summary = summarise([r for r in rows_out if r["grid"] == grid], levels)
        targets = check_targets(summary)
        count_error = count_error_by_level([r for r in rows_out if r["grid"] == grid], levels)
        by_grid[grid] = {"levels": summary, "targets": targets, "count_error": count_error}
        print(f"\ngrid {grid}")
        print_table(summary)
        for level, t in targets.items():
            missed = [m for m, c in t["checks"].items() if not c["met"]]
            verdict = "met" if t["met"] else f"NOT met ({', '.join(missed)})"
            print(f"target {grid} {level}: {verdict}")
        print_count_error(count_error, grid)
    print(f"wall {wall:.0f} s")
    mesh_kpis: dict[str, Any] = {
        "slo_attainment": None,
        "lost_events": None,
        "lost_requests": None,
    }
    if not args.no_mesh:
        default = "small.yaml" if args.quick else "traffic.yaml"
        scenario = args.mesh or REPO / "scenarios" / default
        mesh_kpis = run_mesh(scenario)
        slo = mesh_kpis["slo_attainment"]
        each = ", ".join(
            f"{name} {_pct(m['attainment'])}" for name, m in mesh_kpis["modules"].items()
        )
        print(
            f"mesh ({scenario.name}): SLO attainment of the worst module "
            f"{_pct(slo)} (target >= 99%; {each}), "
            f"lost requests {mesh_kpis['lost_requests']} (target 0), "
            f"lost events {mesh_kpis['lost_events']} of {mesh_kpis['events_sent']} (target 0)"
        )
    if args.json:
        result = {
            "grid": grids[0],
            "seeds": {level: seeds_of(level) for level in levels},
            "basis": BASIS,
            "horizon_s": horizon,
            "counts_source": source,
            "impairments": None if impairments.is_none else impairments.as_dict(),
            # Per level: the counter's MAE per approach against SUMO's counts, by approach.
            "count_error": by_grid[grids[0]]["count_error"],
            "delay_s": args.delay_s,
            "drop_rate": args.drop_rate,
            "controller_config": config,
            "levels": by_grid[grids[0]]["levels"],
            "targets": by_grid[grids[0]]["targets"],
            "grids": by_grid,
            # From the live mesh run (see the module docstring).
            "slo_attainment": mesh_kpis["slo_attainment"],
            "lost_events": mesh_kpis["lost_events"],
            "lost_requests": mesh_kpis["lost_requests"],
            "mesh": mesh_kpis,
            "runs": sorted(
                rows_out, key=lambda r: (r["grid"], r["level"], r["seed"], r["controller"])
            ),
            "wall_s": round(wall, 1),
            "job": asdict(jobs[0]) if jobs else None,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def run_mesh(scenario: Path) -> dict[str, Any]:
    """Run ``scenario`` with ``mesh run`` and return its mesh KPIs (from ``report.json``).

    Raises:
        RuntimeError: the run failed (its output's tail is in the message).
    """
    import os
    import subprocess

    from mesh.scenario._load import load_scenario

    out_dir = load_scenario(scenario).output_dir().resolve()
    report_path = out_dir / "report.json"
    report_path.unlink(missing_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    print(f"mesh run {scenario} ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "run", str(scenario)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not report_path.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"mesh run {scenario} failed (exit {proc.returncode}):\n{tail}")
    report = json.loads(report_path.read_text())
    return {
        "scenario": str(scenario),
        **mesh_figures(report),
        "report": str(report_path),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.2%}"


def mesh_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The mesh KPIs of a scenario's ``report.json``: a lost request or event misses the SLO.

    ``slo_attainment`` is the worst module's share of calls within its SLO
    (never a pooled share, where a busy module would hide a quiet one's failures).
    """
    summary = report.get("summary", {})
    by_module = summary.get("slo_attainment_by_module", {})
    modules = {
        name: {
            "slo_ms": m["slo_ms"],
            "samples": len(m["samples"]),
            "within_slo": sum(1 for _, v in m["samples"] if v <= m["slo_ms"]),
            "failed": len(m.get("failed", [])),
            "lost_events": m.get("lost_events", 0),
            "attainment": by_module.get(name),
        }
        for name, m in report.get("modules", {}).items()
    }
    return {
        "slo_attainment": summary.get("slo_attainment_worst"),
        "slo_attainment_pooled": summary.get("slo_attainment_pooled"),
        "lost_events": summary.get("lost_events"),
        "lost_requests": summary.get("lost_requests"),
        "events_sent": report.get("events_sent"),
        "events_received": report.get("events_received"),
        "modules": modules,
        "migrations": summary.get("migrations"),
        "faults": [f["kind"] for f in report.get("faults", [])],
        "adaptive_vs_best_baseline": summary.get("adaptive_vs_best_baseline"),
        "adaptive_vs_best": summary.get("adaptive_vs_best"),
    }


if __name__ == "__main__":
    sys.exit(main())
