"""`mesh modules`: serve registered models through the running control plane.

Mounted by :mod:`mesh.cli` as ``app.add_typer(modules_app, name="modules")``::

    mesh modules list
    mesh modules deploy vehicle-counter --version production --tier fog [--replicas 1]
    mesh modules undeploy vehicle-counter

Talks to the control plane `mesh up` started (its ``gateway_url`` in the data
dir's ``cluster.json``) over HTTP, with a short-lived admin token minted from
the data dir's signing key. The control plane's errors are the one JSON body of
:mod:`mesh.core._http_errors`; :class:`ControlPlaneError` carries its status and
type. Errors print one line and exit with code 1.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from mesh.cli._output import console, err
from mesh.core._errors import MeshError
from mesh.core._settings import MeshSettings
from mesh.runtime._daemon import read_cluster_file

__all__ = ["ControlPlaneClient", "modules_app", "wait_for_restore"]

modules_app = typer.Typer(
    help="Serve models as modules on cloud/fog replicas or edge agents.", no_args_is_help=True
)

_TOKEN_TTL_S = 300.0


class ControlPlaneError(MeshError):
    """The control plane is not up, or answered with an error (the message says which).

    Attributes:
        status: the HTTP status it answered with; None when it did not answer.
        error_type: the ``type`` of its error body (a class of the mesh's error tree).
    """

    def __init__(
        self, message: str, *, status: int | None = None, error_type: str | None = None
    ) -> None:
        self.status = status
        self.error_type = error_type
        super().__init__(message)


class ControlPlaneClient:
    """A small JSON client of the control plane's REST API, as an admin."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 300.0) -> None:
        """``base_url`` is ``http://host:port``."""
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> ControlPlaneClient:
        """The client of the control plane recorded in the data dir.

        Raises:
            ControlPlaneError: no control plane is up there.
        """
        from mesh.security._auth import TokenSigner

        info = read_cluster_file(settings)
        url = info.get("gateway_url") if info else None
        if not isinstance(url, str):
            raise ControlPlaneError(
                f"no control plane is up (no live record in {settings.data_dir}): run `mesh up`"
            )
        token = TokenSigner.load_or_create(settings.data_dir).issue(
            "mesh-cli", ["admin", "read"], ttl_s=_TOKEN_TTL_S, now=time.time()
        )
        return cls(url, token)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send a request; returns the decoded JSON answer (None when empty).

        Raises:
            ControlPlaneError: unreachable, or a status >= 400 (with the server's message).
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            message, error_type = _error(exc.read())
            raise ControlPlaneError(
                f"{exc.code}: {message}", status=exc.code, error_type=error_type
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ControlPlaneError(
                f"the control plane at {self.base_url} does not answer ({reason}); "
                "run `mesh up` (or `mesh down` then `mesh up`)"
            ) from None
        return json.loads(raw) if raw else None


def _error(raw: bytes) -> tuple[str, str | None]:
    """The message and type of an error body (``{"error": ..., "type": ...}``)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500], None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        kind = doc.get("type")
        return doc["error"], kind if isinstance(kind, str) else None
    return json.dumps(doc)[:500], None  # not the mesh's error body (a proxy in between?)


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return ControlPlaneClient.from_settings(MeshSettings()).request(method, path, body)
    except ControlPlaneError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from None


def _replicas(module: dict[str, Any]) -> str:
    replicas = module.get("replicas") or []
    if not replicas:
        return ", ".join(e.get("node", "?")[:12] for e in module.get("endpoints", [])) or "-"
    return ", ".join(f"{r['state']}@{(r.get('node') or '-')[:8]}" for r in replicas)


def wait_for_restore(
    client: ControlPlaneClient,
    *,
    wait_s: float,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The modules after a start, once none is ``restoring`` (or ``wait_s`` passed).

    Raises:
        ControlPlaneError: the control plane did not answer.
    """
    deadline = time.monotonic() + wait_s
    while True:
        modules: list[dict[str, Any]] = client.request("GET", "/v1/modules") or []
        restoring = [m["module"] for m in modules if m.get("status") == "restoring"]
        if not restoring or time.monotonic() >= deadline:
            return modules
        if progress is not None:
            progress(f"restoring {', '.join(restoring)}…")
        time.sleep(0.5)


def _status(module: dict[str, Any]) -> str:
    status = str(module.get("status") or "serving")
    return f"[red]{status}[/]" if status.startswith("failed") else status


@modules_app.command("list")
def list_modules(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List modules: version, tier, replicas, route epoch and status.

    After a restart, a recorded module is ``restoring`` until it serves again, or
    ``failed: <reason>`` once its retries are spent.
    """
    modules = _call("GET", "/v1/modules")
    if as_json:
        console.print_json(json.dumps(modules))
        return
    if not modules:
        console.print("no modules served: run `mesh modules deploy MODEL`")
        return
    table = Table(title="modules")
    for column in ("module", "version", "tier", "replicas", "endpoints", "epoch", "slo", "status"):
        table.add_column(column, overflow="fold")
    for m in modules:
        table.add_row(
            m["module"],
            m["version"],
            m.get("agent") or m["tier"],
            _replicas(m),
            str(len(m.get("endpoints", []))),
            str(m["epoch"]) if m.get("epoch") is not None else "-",
            f"p95 {m['slo_ms']:g} ms" if m.get("slo_ms") else "-",
            _status(m),
        )
    console.print(table)


@modules_app.command("deploy")
def deploy(
    model: Annotated[str, typer.Argument(help="A registered model.")],
    version: Annotated[
        str, typer.Option("--version", "-v", help="v3, production, candidate or latest.")
    ] = "production",
    tier: Annotated[str, typer.Option(help="cloud or fog.")] = "fog",
    site: Annotated[str | None, typer.Option(help="Only nodes of this site.")] = None,
    agent: Annotated[
        str | None, typer.Option(help="Serve on this edge agent instead of Ray nodes.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Module name (default: the model's).")] = None,
    p95_ms: Annotated[float, typer.Option(help="p95 latency target in ms.")] = 50.0,
    cpus: Annotated[float, typer.Option(help="CPUs per replica.")] = 0.25,
    replicas: Annotated[int | None, typer.Option(min=1, help="Replicas to start now.")] = None,
    min_replicas: Annotated[int, typer.Option(min=0, help="Autoscaling floor.")] = 1,
    max_replicas: Annotated[int, typer.Option(min=1, help="Autoscaling ceiling.")] = 1,
    may_move_to: Annotated[
        list[str] | None,
        typer.Option(
            help="A tier the placement controller may move it to (repeatable): fog for an "
            "edge module that should leave its agent when it misses the SLO, and come back."
        ),
    ] = None,
    drift: Annotated[
        str | None,
        typer.Option(
            help="Its drift check as JSON, e.g. "
            '\'{"statistic": "error", "threshold": 3, "labels": "traffic/{site}/truth"}\'.'
        ),
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(
            help='Its canary policy as JSON, e.g. \'{"fraction": 0.25, "window_s": 60}\'.'
        ),
    ] = None,
) -> None:
    """Serve a model version; returns once its replicas serve and the route switched.

    With --drift the control plane scores the module's drift per site and the
    agents sample its inputs; with --canary a new candidate version of its model
    is tried on a share of its agents, then promoted or rolled back.
    """
    body = {
        "model": model,
        "version": version,
        "tier": tier,
        "site": site,
        "agent": agent,
        "name": name,
        "p95_ms": p95_ms,
        "cpus": cpus,
        "replicas": replicas,
        "min_replicas": min_replicas,
        "max_replicas": max(max_replicas, replicas or 1),
        "may_move_to": may_move_to or [],
        "drift": _json_option("--drift", drift),
        "canary": _json_option("--canary", canary),
    }
    with console.status(f"deploying {model} {version} on {agent or tier}…"):
        route = _call("POST", "/v1/modules", body)
    console.print(
        f"[green]deployed[/] {route['module']} {route['version']} on {route['tier']} "
        f"(epoch {route['epoch']}): {_replicas(route)}"
    )


def _json_option(option: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        err.print(f"[bold red]error:[/] {option}: expected a JSON object, got {text!r} ({exc.msg})")
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        err.print(
            f"[bold red]error:[/] {option}: expected a JSON object, got {type(value).__name__}"
        )
        raise typer.Exit(2)
    return value


@modules_app.command("undeploy")
def undeploy(name: Annotated[str, typer.Argument(help="A served module.")]) -> None:
    """Stop serving a module (its replicas drain, then stop)."""
    _call("DELETE", f"/v1/modules/{urllib.parse.quote(name, safe='')}")
    console.print(f"[green]undeployed[/] {name}")
