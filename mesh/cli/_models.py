r"""`mesh models`: the model registry from the command line.

Mounted by :mod:`mesh.cli` as ``app.add_typer(models_app, name="models")``::

    mesh models list
    mesh models show vehicle-counter [--version v3] [--json]
    mesh models register vehicle-counter counter.onnx --code-version traffic-1a2b \\
        --metric val_mae=0.71 --mode min --run-id 5f0c --param lr=0.002
    mesh models promote vehicle-counter v3
    mesh models rollback vehicle-counter

Reads :class:`mesh.MeshSettings` (``MESH_DATA_DIR``); errors print one line and
exit with code 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mesh.cli._output import console, err
from mesh.core._errors import MeshError
from mesh.core._settings import MeshSettings
from mesh.models._profile import CPU
from mesh.models._registry import Lineage, ModelRegistry, ModelVersion, SelectionMetric, Stage
from mesh.models._steps import LifecycleStep

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Model registry: versions, profiles, promote and rollback.", no_args_is_help=True
)


@contextmanager
def _registry() -> Iterator[ModelRegistry]:
    try:
        registry = ModelRegistry.open(MeshSettings())
        try:
            yield registry
        finally:
            registry.close()
    except MeshError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from None


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _latency(version: ModelVersion, batch_size: int) -> str:
    cpu = version.profile.provider(CPU)
    stat = cpu.at(batch_size) if cpu else None
    return f"{stat.p50_ms:.3f} / {stat.p95_ms:.3f}" if stat else "-"


def _stage(stage: Stage) -> str:
    return {"production": "[bold green]production[/]", "candidate": "candidate"}.get(
        stage.value, f"[dim]{stage.value}[/]"
    )


def _metric(version: ModelVersion) -> str:
    m = version.metric
    return f"{m.name}={m.value:.4g} ({m.mode})" if m else "-"


@models_app.command("list")
def list_models() -> None:
    """List the registered models."""
    with _registry() as registry:
        models = registry.list_models()
    if not models:
        console.print("no models registered: run `mesh models register NAME FILE`")
        return
    table = Table(title="models")
    for column in ("name", "versions", "latest", "production", "updated"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.name,
            str(model.versions),
            model.latest,
            model.production or "-",
            _when(model.updated_at),
        )
    console.print(table)


def _print_version(version: ModelVersion) -> None:
    console.print(
        f"[bold]{version.name} {version.version}[/] {_stage(version.stage)}\n"
        f"  identity   {version.identity}\n"
        f"  size       {version.size_bytes} bytes, opset {version.signature.opset}\n"
        f"  metric     {_metric(version)}\n"
        f"  lineage    run {version.lineage.run_id or '-'}, data {version.lineage.data_id or '-'}, "
        f"{json.dumps(dict(version.lineage.hyperparameters), sort_keys=True, default=str)}\n"
        f"  signed     key {version.key_id}",
        highlight=False,
    )
    io = Table(title="signature")
    for column in ("", "name", "dtype", "shape"):
        io.add_column(column)
    for kind, specs in (("input", version.signature.inputs), ("output", version.signature.outputs)):
        for spec in specs:
            io.add_row(
                kind, spec.name, spec.dtype, escape("[" + ", ".join(map(str, spec.shape)) + "]")
            )
    console.print(io)
    profile = Table(title="profile (ms)")
    for column in ("provider", "threads", "batch", "p50", "p95", "runs", "RSS delta"):
        profile.add_column(column)
    for provider in version.profile.providers:
        rss = provider.session_rss_delta_bytes
        for stat in provider.latency:
            profile.add_row(
                provider.provider,
                str(provider.threads),
                str(stat.batch_size),
                f"{stat.p50_ms:.3f}",
                f"{stat.p95_ms:.3f}",
                str(stat.runs),
                f"{rss / 2**20:.1f} MiB" if rss is not None else "-",
            )
    console.print(profile)


@models_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="One version: v3, production, candidate, latest."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a model's versions and lifecycle steps, or one version's signature and profile."""
    with _registry() as registry:
        versions = [registry.get(name, version)] if version else registry.versions(name)
        steps = registry.lifecycle.steps(name, version=versions[0].version if version else None)
    if as_json:
        payload = [v.to_dict() for v in versions]
        if version:
            print(json.dumps({**payload[0], "lifecycle": [s.to_dict() for s in steps]}, indent=2))
        else:
            print(json.dumps(payload, indent=2))
        return
    if version:
        _print_version(versions[0])
        _print_steps(name, steps)
        return
    table = Table(title=f"{name}: versions (CPU, 1 thread, p50 / p95 ms)")
    for column in (
        "version",
        "stage",
        "code version",
        "sha256",
        "metric",
        "batch 1",
        "batch 32",
        "created",
    ):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.version,
            _stage(v.stage),
            v.code_version,
            v.sha256[:12],
            _metric(v),
            _latency(v, 1),
            _latency(v, 32),
            _when(v.created_at),
        )
    console.print(table)
    _print_steps(name, steps)


def _step_detail(detail: Mapping[str, Any]) -> str:
    """A step's detail on one line: its reason first, figures after."""
    if "candidate" in detail and "production" in detail and "verdict" in detail:
        c, p = detail["candidate"], detail["production"]
        return (
            f"{detail['verdict']}: candidate {c['version']} mae {c['mae']} p95 {c['p95_ms']} ms "
            f"n={c['samples']} vs production {p['version']} mae {p['mae']} p95 {p['p95_ms']} ms "
            f"n={p['samples']} ({detail.get('reason', '')})"
        )
    head = str(detail.get("reason", ""))
    rest = {k: v for k, v in detail.items() if k != "reason"}
    body = json.dumps(rest, sort_keys=True, default=str) if rest else ""
    return f"{head} {body}".strip()


def _print_steps(name: str, steps: list[LifecycleStep]) -> None:
    if not steps:
        return
    table = Table(title=f"{name}: lifecycle")
    for column in ("at", "version", "step", "detail"):
        table.add_column(column)
    for step in steps:
        table.add_row(_when(step.at), step.version, step.step, escape(_step_detail(step.detail)))
    console.print(table)


def _parse_metric(text: str | None, mode: str) -> SelectionMetric | None:
    if text is None:
        return None
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name or number != number:
        raise typer.BadParameter(f"--metric takes NAME=VALUE, e.g. val_mae=0.71; got {text!r}")
    if mode not in ("min", "max"):
        raise typer.BadParameter(f"--mode is min or max, got {mode!r}")
    return SelectionMetric(name, number, "min" if mode == "min" else "max")


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--param takes KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@models_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="The model, e.g. vehicle-counter.")],
    file: Annotated[Path, typer.Argument(help="The ONNX file.", dir_okay=False)],
    code_version: Annotated[
        str, typer.Option(help="The code that produced it (git commit, source digest).")
    ] = "unversioned",
    metric: Annotated[
        str | None, typer.Option(help="The metric it was selected by: NAME=VALUE.")
    ] = None,
    mode: Annotated[str, typer.Option(help="min or max: which way the metric is better.")] = "min",
    run_id: Annotated[str | None, typer.Option(help="The run that trained it.")] = None,
    data_id: Annotated[str | None, typer.Option(help="The data it was trained on.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="A hyperparameter KEY=VALUE (repeat).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the version as JSON.")] = False,
) -> None:
    """Register FILE as a new candidate version of NAME (checked, profiled, signed)."""
    selection = _parse_metric(metric, mode)
    lineage = Lineage(run_id=run_id, data_id=data_id, hyperparameters=_parse_params(param or []))
    with _registry() as registry, console.status(f"checking and profiling {file}…"):
        version = registry.register(
            name, file, code_version=code_version, metric=selection, lineage=lineage
        )
    if as_json:
        print(json.dumps(version.to_dict(), indent=2))
        return
    console.print(
        f"[green]registered[/] {name} {version.version} ({version.stage.value}): "
        f"sha256 {version.sha256[:12]}, CPU p50/p95 at batch 1 {_latency(version, 1)} ms",
        highlight=False,
    )


@models_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str, typer.Argument(help="The version to make production, e.g. v3.")],
) -> None:
    """Make VERSION the production version of NAME."""
    with _registry() as registry:
        promoted = registry.promote(name, version)
    console.print(f"[green]promoted[/] {name} {promoted.version} to production", highlight=False)


@models_app.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="The model.")]) -> None:
    """Return NAME to its previous production version."""
    with _registry() as registry:
        current = registry.rollback(name)
    console.print(
        f"[yellow]rolled back[/] {name}: production is now {current.version}", highlight=False
    )
