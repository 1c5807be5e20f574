"""`mesh placements`: where modules run, why, how they moved, and manual pins.

Mounted by :mod:`mesh.cli` as ``app.add_typer(placements_app, name="placements")``::

    mesh placements list [--explain] [--json]
    mesh placements history [--module counter] [--limit 20] [--json]
    mesh placements pin counter --tier fog        # or --node <ray node id | agent id>
    mesh placements unpin counter

Talks to the running control plane over HTTP, as :mod:`mesh.cli._modules` does.
Errors print one line and exit with code 1.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from mesh.cli._modules import ControlPlaneClient, ControlPlaneError
from mesh.cli._output import console, err
from mesh.core._settings import MeshSettings

__all__ = ["placements_app"]

placements_app = typer.Typer(
    help="Where modules run (the placement engine's plan), migrations and pins.",
    no_args_is_help=True,
)


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return ControlPlaneClient.from_settings(MeshSettings()).request(method, path, body)
    except ControlPlaneError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from None


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def _short(node: Any) -> str:
    return str(node)[:16] if node else "-"


@placements_app.command("list")
def list_placements(
    explain: Annotated[
        bool, typer.Option("--explain", help="Print the engine's decision per module.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each module's node and tier, observed p95 against its SLO, and pins."""
    doc = _call("GET", "/v1/placements")
    if as_json:
        console.print_json(json.dumps(doc))
        return
    modules = doc.get("modules") or []
    if not modules:
        console.print("no modules served: run `mesh modules deploy MODEL`")
        return
    table = Table(title=f"placements (desired version {doc.get('plan_version') or '-'})")
    for column in ("module", "version", "tier", "node", "p95 ms", "slo ms", "req/s", "pin"):
        table.add_column(column, overflow="fold")
    for m in modules:
        observed = m.get("observed") or {}
        pin = m.get("pin") or {}
        table.add_row(
            m["module"],
            m["version"],
            m["tier"],
            _short(m.get("node")),
            _ms(observed.get("p95_ms")),
            _ms(m.get("slo_ms")),
            _ms(observed.get("rate_per_s")),
            pin.get("node") or pin.get("tier") or "-",
        )
    console.print(table)
    if explain:
        for m in modules:
            if m.get("decision"):
                console.print(m["decision"], highlight=False, markup=False)


@placements_app.command("history")
def history(
    module: Annotated[str | None, typer.Option(help="Only this module.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Migrations, newest first: from, to, why, switch time, requests lost."""
    query = {"limit": str(limit)} | ({"module": module} if module else {})
    records = _call("GET", f"/v1/placements/history?{urllib.parse.urlencode(query)}")
    if as_json:
        console.print_json(json.dumps(records))
        return
    if not records:
        console.print("no migrations yet")
        return
    table = Table(title="migrations")
    for column in ("when", "module", "from", "to", "status", "switch s", "lost", "max ms", "why"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            datetime.fromtimestamp(r["decided_at"]).strftime("%H:%M:%S"),
            r["module"],
            f"{_short(r.get('from_node'))} ({r.get('from_tier') or '-'})",
            f"{_short(r['to_node'])} ({r['to_tier']})",
            r["status"] if not r.get("error") else f"{r['status']}: {r['error']}",
            _ms(r.get("switch_s")) if r.get("switch_s") is None else f"{r['switch_s']:.2f}",
            str(r.get("lost", 0)),
            _ms(r.get("max_ms")),
            r["reason"],
        )
    console.print(table)


@placements_app.command("pin")
def pin(
    module: Annotated[str, typer.Argument(help="A served module.")],
    node: Annotated[str | None, typer.Option(help="A Ray node id or an agent id.")] = None,
    tier: Annotated[str | None, typer.Option(help="edge, fog or cloud.")] = None,
) -> None:
    """Fix a module to a node or a tier; the controller moves it there if needed."""
    if (node is None) == (tier is None):
        err.print("[bold red]error:[/] give exactly one of --node and --tier")
        raise typer.Exit(1)
    body = {"node": node} if node is not None else {"tier": tier}
    _call("POST", f"/v1/placements/{urllib.parse.quote(module, safe='')}/pin", body)
    console.print(f"[green]pinned[/] {module} to {node or tier}")


@placements_app.command("unpin")
def unpin(module: Annotated[str, typer.Argument(help="A pinned module.")]) -> None:
    """Let the placement engine place the module again."""
    _call("DELETE", f"/v1/placements/{urllib.parse.quote(module, safe='')}/pin")
    console.print(f"[green]unpinned[/] {module}")
