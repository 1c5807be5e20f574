"""`mesh demo`: the foundation pipeline across cloud and fog, on embedded defaults.

Runs the functions of ``functions.demo`` (loaded by name) on a local Ray
cluster with a cloud head and a fog node, records every run in the store and
ends with a table that shows where each step ran and what it produced.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from mesh.compute._backend import BatchResult, TuneResult
from mesh.compute._runner import Run, Runner
from mesh.compute._runs import SQLiteStore
from mesh.compute._streams import StreamWorker
from mesh.core._errors import MeshError
from mesh.core._settings import MeshSettings
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings, embedded_broker_login
from mesh.edge.broker._broker import start_embedded_broker
from mesh.runtime._connect import connect_backend
from mesh.sdk._loader import load_apps

__all__ = ["run_demo"]

DEMO_SOURCE = "functions.demo"
SITES = ("j1", "j2", "j3")


@dataclass(frozen=True, slots=True)
class _Step:
    label: str
    function: str
    tier: str
    node_tier: str
    node: str
    seconds: float
    summary: str


def run_demo(settings: MeshSettings, *, console: Console, quick: bool = False) -> list[_Step]:
    """Run the demo pipeline and print what ran where; returns the steps.

    Raises:
        MeshError: a step failed (the message names it); nothing is left running.
    """
    started = time.monotonic()
    apps = load_apps(DEMO_SOURCE)
    store = SQLiteStore(settings.store_path)
    with console.status("starting the local cluster (cloud head + fog node)…"):
        backend = connect_backend(settings)
    steps: list[_Step] = []
    try:
        runner = Runner(apps, backend=backend, store=store)
        _print_nodes(console, runner)
        out_dir = settings.data_dir / "demo"

        def record(label: str, run: Run, value: Any, seconds: float, summary: str) -> None:
            labels = runner.node_labels(run.node_id or "")
            spec = runner.get(run.function).spec
            steps.append(
                _Step(
                    label,
                    run.function,
                    spec.tier,
                    labels.get("mesh.tier", "?"),
                    (run.node_id or "-")[:8],
                    seconds,
                    summary,
                )
            )
            console.print(
                f"  [green]✓[/] {label}: {summary} "
                f"[dim]({spec.tier} node {(run.node_id or '-')[:8]}, {seconds:.2f} s)[/]"
            )

        console.rule("1. collect counts at the fog")
        t0 = time.monotonic()
        runs = [
            runner.submit(
                "collect_counts", site=site, out_dir=str(out_dir), minutes=120 if quick else 240
            )
            for site in SITES
        ]
        paths = [run.result() for run in runs]
        for run, path in zip(runs, paths, strict=True):
            record(f"counts {run.id[:8]}", run, path, time.monotonic() - t0, path)

        console.rule("2. demand profiles in the cloud (Ray Data)")
        t0 = time.monotonic()
        run = runner.submit("demand_profiles", input=str(out_dir / "counts-*.csv"))
        with console.status("running demand_profiles…"):
            batch: BatchResult = run.result()
        record(
            "profiles",
            run,
            batch,
            time.monotonic() - t0,
            f"{batch.num_rows} rows ({', '.join(batch.columns)}) → {batch.output_path}",
        )

        console.rule("3. tune the flow forecaster in the cloud (Ray Tune)")
        t0 = time.monotonic()
        run = runner.submit("tune_forecaster")
        with console.status("tuning…"):
            tuned: TuneResult = run.result()
        record(
            "tune",
            run,
            tuned,
            time.monotonic() - t0,
            f"best {json.dumps(tuned.best_config)} val_mae={tuned.best_value:.3f} "
            f"of {len(tuned.trials)} trials",
        )

        console.rule("4. fit the forecaster with the best config")
        t0 = time.monotonic()
        run = runner.submit(
            "fit_forecaster",
            counts_csv=paths[0],
            lags=int(tuned.best_config["lags"]),
            ridge=float(tuned.best_config["ridge"]),
        )
        fitted = run.result()
        record(
            "fit",
            run,
            fitted,
            time.monotonic() - t0,
            f"val_mae={fitted['val_mae']:.3f} vehicles/min on {SITES[0]}",
        )

        console.rule("5. live signal plans at the fog (stream windows over MQTT)")
        t0 = time.monotonic()
        plans: list[dict[str, Any]] = []
        with console.status("starting the embedded MQTT broker…"):
            # Zero-config, not anonymous: logins from the data dir's key store.
            passwd, login = embedded_broker_login(EdgeSettings(data_dir=settings.data_dir))
            broker = start_embedded_broker(password_file=passwd)
            gateway = EdgeBus(
                broker.url,
                username=login.username,
                password=login.password,
                protocol="3.1.1",  # amqtt: 3.1.1 only
                acknowledge_events=True,  # the demo's control plane
            ).start()
        try:
            console.print(f"  embedded broker at {broker.url}")
            gateway.subscribe("demo/plans", lambda _t, payload: plans.append(json.loads(payload)))
            worker = StreamWorker(runner, "signal_plan", gateway)
            worker.start()
            try:
                for second in range(3 if quick else 5):
                    for i, site in enumerate(SITES):
                        counts = {
                            a: (second + i * 3 + j * 2) % 9
                            for j, a in enumerate(("north", "east", "south", "west"))
                        }
                        gateway.publish(
                            f"demo/{site}/counts", json.dumps({"site": site, **counts}).encode()
                        )
                    time.sleep(1.0)
            finally:
                worker.stop()
            gateway.barrier()  # the last window's plans are delivered before we count them
        finally:
            gateway.stop()
            broker.stop()
        windows = [o for o in worker.outcomes if o.messages]
        failed = [o for o in windows if o.error]
        if failed:
            raise MeshError(f"signal_plan failed on {len(failed)} window(s): {failed[0].error}")
        last = windows[-1]
        stream_run = store.get_run(last.run_id or "")
        steps.append(
            _Step(
                "signal plans",
                "signal_plan",
                "fog",
                stream_run.node_labels.get("mesh.tier", "?"),
                (stream_run.node_id or "-")[:8],
                time.monotonic() - t0,
                f"{len(windows)} windows → {len(plans)} plans",
            )
        )
        console.print(
            f"  [green]✓[/] {len(windows)} windows, {len(plans)} plans; last: "
            f"{json.dumps(plans[-1]) if plans else '-'}"
        )
    finally:
        backend.close()
        store.close()
    _print_summary(console, steps, time.monotonic() - started, settings)
    return steps


def _print_nodes(console: Console, runner: Runner) -> None:
    table = Table(title="cluster nodes")
    for column in ("node", "tier", "site", "CPU"):
        table.add_column(column)
    for node in runner.backend.nodes(refresh=True):
        if node.alive:
            table.add_row(
                node.node_id[:8],
                node.tier or "-",
                node.site or "-",
                f"{node.resources_total.get('CPU', 0):g}",
            )
    console.print(table)


def _print_summary(
    console: Console, steps: list[_Step], seconds: float, settings: MeshSettings
) -> None:
    table = Table(title=f"demo finished in {seconds:.1f} s")
    for column in ("step", "function", "asked tier", "ran on", "node", "seconds"):
        table.add_column(column)
    for step in steps:
        ok = "[green]" if step.node_tier == step.tier else "[red]"
        table.add_row(
            step.label,
            step.function,
            step.tier,
            f"{ok}{step.node_tier}[/]",
            step.node,
            f"{step.seconds:.2f}",
        )
    console.print(table)
    console.print(f"runs recorded in {settings.store_path} — see them with `mesh runs`")
