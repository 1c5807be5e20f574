"""Traffic benchmark: the adaptive controller against SUMO's own signal programs.

For each demand level and seed, every controller runs on the same SUMO network
and the same routes: by default the 3x3 and 4x4 grids
(``functions.traffic.sim.network``) and a random, non-grid network of ten
signalised junctions of three, four and five arms
(``functions.traffic.sim.random_net``; ``--grid rand<N>`` picks netgenerate's
seed N):

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
    python bench/traffic.py --levels peak --grid rand --seeds 3 --exact --no-mesh
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._camera_error import (  # noqa: E402
    count_error_by_level,
    ensure_counter,
    print_count_error,
)
from bench._traffic_runs import Job, run_job  # noqa: E402
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
        help="ROWSxCOLS, rand (a random net) or rand<SEED>, or several comma-separated "
        "(default 3x3,4x4,rand; quick 2x2)",
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

    grids = [g for g in (args.grid or ("2x2" if args.quick else "3x3,4x4,rand")).split(",") if g]
    # (label, rows, cols): a grid's rows and columns, or a random net's name (rand, rand<N>).
    shapes = [(g, 0, 0) if g.lower().startswith("rand") else ("", *_rows_cols(g)) for g in grids]
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
    from bench._traffic_runs import build_network, network_demand

    for name, rows, cols in shapes:
        net = build_network(workdir, name, rows, cols)
        for level in levels:
            for seed in range(seeds_of(level)):
                network_demand(workdir, net, level=level, seed=seed, horizon_s=horizon)

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
            network=name,
        )
        for name, rows, cols in shapes
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


def _rows_cols(grid: str) -> tuple[int, int]:
    rows, cols = grid.lower().split("x")
    return int(rows), int(cols)


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
