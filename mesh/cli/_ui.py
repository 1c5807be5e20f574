"""`mesh ui`: open the dashboard of the running control plane, signed in for a while.

Registered by the main CLI as ``app.command("ui")(ui)``::

    mesh ui                    # prints the URL (and opens it where a desktop is)
    mesh ui --ttl-s 600 --no-open

The token is a fresh one of scope ``read`` only, valid ``--ttl-s`` seconds; it
rides in the URL's fragment (``#token=...``), which the browser keeps to
itself: the page moves it to the tab's ``sessionStorage`` and clears it from
the address bar, and no server or proxy log ever sees it.
"""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from typing import Annotated

import typer

from mesh.cli._output import console, err
from mesh.core._settings import MeshSettings
from mesh.runtime._daemon import read_cluster_file

__all__ = ["dashboard_url", "ui"]

#: Default lifetime of the dashboard's token: a working session.
DEFAULT_TTL_S = 8 * 3600.0


def dashboard_url(settings: MeshSettings, *, ttl_s: float, now: float | None = None) -> str:
    """The dashboard's URL with a fresh read token of ``ttl_s`` seconds in its fragment.

    Raises:
        LookupError: no control plane is up in ``settings.data_dir``.
        ValueError: ``ttl_s`` out of ``(0, MESH_TOKEN_MAX_TTL_S]``.
    """
    from mesh.security._auth import TokenSigner

    info = read_cluster_file(settings)
    url = info.get("gateway_url") if info else None
    if not isinstance(url, str):
        raise LookupError(
            f"no control plane is up (no live record in {settings.data_dir}): run `mesh up`"
        )
    token = TokenSigner.load_or_create(settings.data_dir, max_ttl_s=settings.token_max_ttl_s).issue(
        "mesh-ui", ["read"], ttl_s=ttl_s, now=time.time() if now is None else now
    )
    return f"{url.rstrip('/')}/ui/#token={token}"


def _has_desktop() -> bool:
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def ui(
    ttl_s: Annotated[
        float, typer.Option(help="Seconds the dashboard's read token lives (default 8 h).")
    ] = DEFAULT_TTL_S,
    open_browser: Annotated[
        bool | None,
        typer.Option(
            "--open/--no-open", help="Open a browser (default: where a desktop session is)."
        ),
    ] = None,
) -> None:
    """Open the dashboard (/ui) of the running control plane with a short-lived read token."""
    try:
        url = dashboard_url(MeshSettings(), ttl_s=ttl_s)
    except LookupError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl-s") from None
    console.print(f"dashboard (read only, {ttl_s:g} s): {url}", highlight=False, soft_wrap=True)
    if open_browser is None:
        open_browser = _has_desktop()
    if open_browser and not webbrowser.open(url):
        err.print("no browser could be opened: open the URL above yourself", highlight=False)
