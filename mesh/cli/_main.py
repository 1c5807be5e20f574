"""The `mesh` command line.

Every command reads :class:`mesh.MeshSettings` (``MESH_*`` variables, e.g.
``MESH_DATA_DIR``). Errors print one clear line and exit with code 1; usage
errors exit with code 2.
"""

from __future__ import annotations

import json
import logging
import time
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mesh.cli._node import node_app
from mesh.cli._output import console, err
from mesh.cli._output import errors as _errors
from mesh.cli._scenario import scenario_app
from mesh.cli._triggers import check_app_triggers, list_triggers
from mesh.cli._ui import ui
from mesh.compute._runs import Deployment, SQLiteStore
from mesh.core._errors import UnknownFunctionError
from mesh.core._settings import MeshSettings
from mesh.runtime._connect import connect_backend
from mesh.runtime._daemon import cluster_down, cluster_up, read_cluster_file
from mesh.sdk._app import Mesh
from mesh.sdk._loader import load_apps
from mesh.sdk._registered import RegisteredFunction

__all__ = ["app", "main", "parse_cli_args"]

app = typer.Typer(
    name="mesh",
    help="fogmesh: a serverless function mesh across cloud, fog and edge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings() -> MeshSettings:
    return MeshSettings()


def _open_store(settings: MeshSettings) -> SQLiteStore:
    return SQLiteStore(settings.store_path)


@app.command()
def up(
    wait_s: Annotated[float, typer.Option(help="How long to wait for the cluster.")] = 180.0,
    restore_wait_s: Annotated[
        float, typer.Option(help="How long to wait for recorded modules to serve again.")
    ] = 120.0,
) -> None:
    """Start the local cluster (a cloud head node and fog nodes) and keep it running.

    The modules served before a restart are restored; this waits for them (up to
    ``--restore-wait-s``) and says how each came back. Exits with code 1 when one
    could not be restored (the cluster stays up).
    """
    settings = _settings()
    with _errors():
        running = read_cluster_file(settings)
        if running is not None:
            console.print(f"already up: {running['address']} (pid {running['pid']})")
            return
        with console.status("starting the local cluster…") as status:
            info = cluster_up(settings, wait_s=wait_s, progress=status.update)
        console.print(
            f"[green]up[/]: Ray at {info['address']} (pid {info['pid']}); "
            f"data in {settings.data_dir}"
        )
        if info.get("gateway_url"):
            console.print(f"  gateway {info['gateway_url']}  (OIP v2 at /v2, REST at /v1)")
        if info.get("broker_url"):
            console.print(f"  broker  {info['broker_url']}")
        for node in info.get("nodes", []):
            site = f" site {node['site']}" if node.get("site") else ""
            console.print(
                f"  {node.get('tier', '?'):<5} node {str(node.get('node_id', ''))[:8]}{site}, "
                f"{node.get('cpus', '?')} CPU"
            )
        if info.get("gateway_url"):
            _report_restore(settings, restore_wait_s)


def _report_restore(settings: MeshSettings, wait_s: float) -> None:
    """Wait for the recorded modules to serve again; say how each came back."""
    from mesh.cli._modules import ControlPlaneClient, wait_for_restore

    client = ControlPlaneClient.from_settings(settings)
    with console.status("restoring the recorded modules…") as status:
        modules = wait_for_restore(client, wait_s=wait_s, progress=status.update)
    failed = False
    for m in modules:
        state = str(m.get("status") or "serving")
        where = m.get("agent") or m.get("tier")
        line = f"  module {m['module']} {m.get('version')} on {where}: {state}"
        if state.startswith("failed"):
            failed = True
            err.print(f"[bold red]{line}[/]", highlight=False, markup=True)
        else:
            console.print(line, highlight=False)
    if failed:
        err.print(
            "[bold red]error:[/] the cluster is up, but recorded modules could not be "
            "restored (see above and the log); `mesh modules deploy` one again, or "
            "`mesh modules undeploy` it to forget it",
            highlight=False,
            markup=True,
        )
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop the local cluster started by `mesh up`."""
    settings = _settings()
    with _errors(), console.status("stopping the local cluster…"):
        pid = cluster_down(settings)
    console.print(f"[green]down[/]: stopped the cluster process {pid}")


@app.command()
def status() -> None:
    """Show the cluster's nodes with their tiers, resources and usage."""
    settings = _settings()
    with _errors():
        info = read_cluster_file(settings)
        if info is None and settings.ray_address is None:
            console.print("no cluster is up: run `mesh up` (or set MESH_RAY_ADDRESS)")
            raise typer.Exit(1)
        backend = connect_backend(settings)
        try:
            nodes = backend.nodes(refresh=True)
            usage: dict[str, dict[str, float]] = getattr(backend, "node_usage", dict)()
        finally:
            backend.close()
    table = Table(title=f"cluster {info['address'] if info else settings.ray_address}")
    for column in ("node", "tier", "site", "alive", "CPU used/total", "GPU", "memory", "head"):
        table.add_column(column)
    for node in sorted(nodes, key=lambda n: (n.tier or "", n.site or "", n.node_id)):
        used = usage.get(node.node_id, {})
        cpu_total = node.resources_total.get("CPU", 0.0)
        cpu_used = cpu_total - used.get("CPU", cpu_total) if used else None
        table.add_row(
            node.node_id[:8],
            node.tier or "-",
            node.site or "-",
            "yes" if node.alive else "[red]no[/]",
            f"{cpu_used:g}/{cpu_total:g}" if cpu_used is not None else f"?/{cpu_total:g}",
            f"{node.resources_total.get('GPU', 0.0):g}",
            f"{node.resources_total.get('memory', 0.0) / 2**30:.1f} GiB",
            "yes" if node.is_head else "",
        )
    console.print(table)


@app.command()
def deploy(
    file: Annotated[str, typer.Argument(help="A Python file (or module) defining a Mesh app.")],
) -> None:
    """Register the functions of FILE with the control plane."""
    settings = _settings()
    with _errors():
        apps = load_apps(file)
        check_app_triggers(apps, file)
        store = _open_store(settings)
        source = _source_of(file)
        try:
            table = Table(title=f"deployed from {file}")
            for column in ("function", "kind", "tier", "app", "note"):
                table.add_column(column)
            for mesh_app in apps:
                for registered in mesh_app.functions.values():
                    spec = registered.spec
                    previous = store.put_deployment(
                        Deployment(
                            function=spec.name,
                            app=mesh_app.name,
                            kind=spec.kind.value,
                            source=source,
                            tier=spec.tier,
                            spec_json=spec.model_dump_json(),
                            deployed_at=time.time(),
                        )
                    )
                    note = ""
                    if previous is not None:
                        note = (
                            "updated"
                            if previous.source == source
                            else f"replaced the one from {previous.source}"
                        )
                    table.add_row(spec.name, spec.kind.value, spec.tier, mesh_app.name, note)
                for trig in mesh_app.triggers.values():
                    table.add_row(trig.name, "trigger", "", mesh_app.name, trig.describe())
                for module in mesh_app.modules.values():
                    table.add_row(
                        module.spec.name,
                        "module",
                        ",".join(module.spec.tiers),
                        mesh_app.name,
                        "registered; serve it with `mesh modules deploy`",
                    )
        finally:
            store.close()
    console.print(table)


def _source_of(file: str) -> str:
    from pathlib import Path

    path = Path(file)
    return str(path.resolve()) if path.exists() else file


@app.command()
def functions() -> None:
    """List the deployed functions."""
    settings = _settings()
    with _errors():
        store = _open_store(settings)
        try:
            deployments = store.list_deployments()
        finally:
            store.close()
    if not deployments:
        console.print("no functions deployed: run `mesh deploy FILE`")
        return
    table = Table(title="functions")
    for column in ("name", "kind", "tier", "app", "options", "source", "deployed"):
        table.add_column(column)
    for d in deployments:
        spec = json.loads(d.spec_json)
        options = [f"cpus={spec['resources']['cpus']:g}"]
        if spec.get("retries"):
            options.append(f"retries={spec['retries']}")
        if spec.get("timeout_s"):
            options.append(f"timeout_s={spec['timeout_s']:g}")
        for key in ("topic", "schedule", "metric"):
            if spec.get(key):
                options.append(f"{key}={spec[key]}")
        table.add_row(
            d.function, d.kind, d.tier, d.app, " ".join(options), d.source, _when(d.deployed_at)
        )
    console.print(table)


def parse_cli_args(registered: RegisteredFunction, pairs: list[str]) -> dict[str, Any]:
    """Turn ``k=v`` pairs into keyword arguments.

    A value for a ``str`` parameter is kept as typed; any other value is read
    as JSON when it parses (``3``, ``[1, 2]``, ``true``), else kept as text for
    the signature check to judge.

    Raises:
        typer.BadParameter: a pair without ``=``.
    """
    try:
        hints = typing.get_type_hints(registered.fn)
    except Exception:
        hints = {}
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected --arg NAME=VALUE, got {pair!r}", param_hint="--arg")
        if hints.get(key) in (str, str | None):
            kwargs[key] = raw
            continue
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


def _load_deployed(settings: MeshSettings, name: str) -> list[Mesh]:
    store = _open_store(settings)
    try:
        deployments = {d.function: d for d in store.list_deployments()}
    finally:
        store.close()
    if name not in deployments:
        raise UnknownFunctionError(name, deployments)
    return load_apps(deployments[name].source)


@app.command()
def invoke(
    name: Annotated[str, typer.Argument(help="A deployed function's name.")],
    arg: Annotated[
        list[str] | None, typer.Option("--arg", "-a", help="An argument as NAME=VALUE; repeat.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the result as JSON.")] = False,
) -> None:
    """Run a deployed function on its tier and print its result."""
    from mesh.compute._runner import Runner

    settings = _settings()
    with _errors():
        apps = _load_deployed(settings, name)
        if read_cluster_file(settings) is None and settings.ray_address is None:
            err.print(
                "no cluster is up: starting an embedded one for this call "
                "(run `mesh up` to keep one running)"
            )
        store = _open_store(settings)
        backend = connect_backend(settings)
        try:
            runner = Runner(apps, backend=backend, store=store)
            registered = runner.get(name)
            kwargs = parse_cli_args(registered, arg or [])
            started = time.monotonic()
            run = runner.submit(name, **kwargs)
            if as_json:
                value = run.result()
            else:
                with console.status(
                    f"running {name} on {registered.spec.tier} (run {run.id[:8]})…"
                ):
                    value = run.result()
        finally:
            backend.close()
            store.close()
    if as_json:
        console.print_json(json.dumps(_jsonable(value)))
        return
    console.print(
        f"[green]{name}[/] finished in {time.monotonic() - started:.2f} s "
        f"on node {(run.node_id or '-')[:8]} (run {run.id[:8]})"
    )
    console.print(_jsonable(value))


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


@app.command()
def runs(
    function: Annotated[str | None, typer.Option(help="Only runs of this function.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
) -> None:
    """List recorded runs, newest first."""
    settings = _settings()
    with _errors():
        store = _open_store(settings)
        try:
            records = store.list_runs(function=function, limit=limit)
        finally:
            store.close()
    if not records:
        console.print("no runs recorded yet")
        return
    table = Table(title="runs")
    for column in (
        "run",
        "function",
        "tier",
        "node",
        "status",
        "started",
        "duration",
        "args",
        "result / error",
    ):
        table.add_column(column, overflow="fold")
    colours = {"succeeded": "green", "running": "yellow"}
    for r in records:
        colour = colours.get(r.status.value, "red")
        outcome = r.error if r.error else (r.result_ref or "")
        table.add_row(
            r.id[:8],
            r.function,
            r.tier,
            (r.node_id or "-")[:8],
            f"[{colour}]{r.status.value}[/]",
            _when(r.started_at),
            f"{r.duration_s:.3f} s" if r.duration_s is not None else "-",
            r.args_preview,
            outcome[:120],
        )
    console.print(table)


def _bundled_scenario(name: str) -> Path:
    """A scenario shipped in the repository's ``scenarios/`` folder."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        path = base / "scenarios" / f"{name}.yaml"
        if path.is_file():
            return path
    raise typer.BadParameter(f"no scenarios/{name}.yaml here or beside the mesh package")


_KEEP_HELP = "After the report, keep the control plane and its dashboard up until Ctrl-C."


@app.command("run")
def run_file(
    file: Annotated[Path, typer.Argument(help="A scenario YAML (see `mesh scenario schema`).")],
    keep: Annotated[bool, typer.Option(help=_KEEP_HELP)] = False,
) -> None:
    """Run a scenario: broker, Ray cluster, agents, SUMO, faults; ends with a report."""
    from mesh.scenario._run import run_scenario

    with _errors():
        run_scenario(file, console=console, keep=keep)


@app.command()
def demo(
    quick: Annotated[
        bool, typer.Option(help="The small scenario (2x2 grid, 2 agents, 2 minutes).")
    ] = False,
    pipeline: Annotated[
        bool,
        typer.Option(help="Only the function pipeline across cloud and fog (no SUMO, no agents)."),
    ] = False,
    keep: Annotated[bool, typer.Option(help=_KEEP_HELP)] = False,
) -> None:
    """Run the smart-traffic scenario (scenarios/traffic.yaml) on embedded defaults."""
    if pipeline:
        from mesh.cli._demo import run_demo

        with _errors():
            run_demo(_settings(), console=console, quick=quick)
        return
    from mesh.scenario._run import run_scenario

    with _errors():
        run_scenario(_bundled_scenario("small" if quick else "traffic"), console=console, keep=keep)


tokens_app = typer.Typer(
    help="Bearer tokens for the REST and inference APIs.", no_args_is_help=True
)
app.add_typer(tokens_app, name="tokens")
app.add_typer(scenario_app, name="scenario")
app.add_typer(node_app, name="node")
app.command("ui")(ui)
app.command(name="triggers")(list_triggers)


@tokens_app.command("create")
def tokens_create(
    subject: Annotated[str, typer.Argument(help="Who the token is for (a user, a service).")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", "-s", help="read, invoke or admin (repeat); default read."),
    ] = None,
    ttl_s: Annotated[
        float,
        typer.Option(help="Lifetime in seconds, at most MESH_TOKEN_MAX_TTL_S (default 30 days)."),
    ] = 86_400.0,
) -> None:
    """Issue a signed bearer token with scopes and an expiry; prints only the token."""
    from mesh.security._auth import TokenSigner

    settings = _settings()
    try:
        token = TokenSigner.load_or_create(
            settings.data_dir, max_ttl_s=settings.token_max_ttl_s
        ).issue(subject, scope or ["read"], ttl_s=ttl_s, now=time.time())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    print(token)


@tokens_app.command("revoke")
def tokens_revoke(
    token: Annotated[
        str, typer.Argument(help="The token's id (16 hex digits, its 'jti'), or the token.")
    ],
) -> None:
    """Revoke one token: the running gateway refuses it within a second, cached or not."""
    from mesh.security._auth import AuthError, TokenSigner
    from mesh.security._revocations import TokenRevocations

    settings = _settings()
    token_id, expires_at = token, None
    if token.startswith("mesh_"):
        signer = TokenSigner.load_or_create(settings.data_dir, max_ttl_s=settings.token_max_ttl_s)
        try:
            claims = signer.verify(token, now=time.time())
        except AuthError as exc:
            err.print(f"[yellow]nothing to revoke[/]: {exc}", highlight=False)
            raise typer.Exit(1) from None
        token_id, expires_at = claims.token_id, claims.expires_at
    with _errors(), TokenRevocations(settings.store_path) as revocations:
        try:
            added = revocations.revoke(token_id, expires_at=expires_at)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    console.print(f"token {token_id} {'revoked' if added else 'was already revoked'}")


@tokens_app.command("rotate-key")
def tokens_rotate_key(
    grace_s: Annotated[
        float,
        typer.Option(help="Seconds the old key's tokens keep working (default: none)."),
    ] = 0.0,
) -> None:
    """Replace the token signing key; running control planes switch within a second.

    Tokens signed with the old key stop working at once, or after ``--grace-s``.
    """
    from mesh.security._auth import rotate_key

    settings = _settings()
    try:
        path = rotate_key(settings.data_dir, grace_s=grace_s)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    after = f"for {grace_s:g} s more" if grace_s > 0 else "no more"
    console.print(f"new token key in {path}; tokens of the old key work {after}")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _mount_optional() -> None:
    from mesh.cli._models import models_app

    app.add_typer(models_app, name="models")
    from mesh.cli._modules import modules_app

    app.add_typer(modules_app, name="modules")
    from mesh.cli._placements import placements_app

    app.add_typer(placements_app, name="placements")
    try:
        from mesh.cli._agents import agents_app
    except ImportError:  # the edge extra is not installed
        return
    app.add_typer(agents_app, name="agents")


_mount_optional()


def main() -> None:
    """Entry point of the `mesh` command."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
