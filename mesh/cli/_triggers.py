"""`mesh triggers`: the deployed triggers, what fires each, and when it fires next.

Registered by :mod:`mesh.cli._main` as the command ``mesh triggers [--json]``.
It reads the run store as `mesh functions` does (the deployed sources, and the
runs each trigger fired); the control plane (`mesh up`) is what fires them.
``check_app_triggers`` is `mesh deploy`'s refusal of a trigger that names a
missing function.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from mesh.cli._output import console
from mesh.cli._output import errors as _errors
from mesh.compute._runs import SQLiteStore
from mesh.compute._triggers import CronTimes
from mesh.core._settings import MeshSettings
from mesh.sdk._app import Mesh
from mesh.sdk._loader import load_apps
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._triggers import check_triggers

__all__ = ["check_app_triggers", "list_triggers"]


def check_app_triggers(apps: list[Mesh], source: str) -> None:
    """Refuse the file's triggers that name a function it does not register.

    Raises:
        SpecError: ``<file>: trigger <name>: <field>: expected ..., got ...``.
    """
    functions: dict[str, RegisteredFunction] = {}
    for app in apps:
        functions.update(app.functions)
    for app in apps:
        check_triggers(app.triggers.values(), functions, source=source)


def list_triggers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the deployed triggers with their next firing time."""
    settings = MeshSettings()
    rows: list[dict[str, Any]] = []
    with _errors():
        store = SQLiteStore(settings.store_path)
        try:
            sources = sorted({d.source for d in store.list_deployments()})
            now = time.time()
            for source in sources:
                for app in load_apps(source):
                    for spec in app.triggers.values():
                        runs = store.list_runs(trigger=spec.name, limit=1)
                        last = runs[0] if runs else None
                        next_at = (
                            CronTimes(spec.schedule).next_after(now)
                            if spec.schedule is not None
                            else None
                        )
                        rows.append(
                            {
                                "name": spec.name,
                                "function": spec.function,
                                "app": app.name,
                                "fires_on": spec.describe(),
                                "missed": spec.missed if spec.schedule else None,
                                "concurrency": spec.concurrency,
                                "next_at": next_at,
                                "last_run": last.id if last else None,
                                "last_at": last.started_at if last else None,
                                "last_status": last.status.value if last else None,
                                "source": source,
                            }
                        )
        finally:
            store.close()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no triggers deployed: declare one with @app.trigger and `mesh deploy FILE`")
        return
    table = Table(title="triggers")
    for column in ("name", "function", "fires on", "policies", "next firing", "last run"):
        table.add_column(column, overflow="fold")
    for row in rows:
        policies = f"concurrency={row['concurrency']}"
        if row["missed"]:
            policies += f" missed={row['missed']}"
        last_run = (
            f"{row['last_run'][:8]} {row['last_status']} at {_when(row['last_at'])}"
            if row["last_run"]
            else "-"
        )
        next_firing = _when(row["next_at"]) if row["next_at"] is not None else "-"
        table.add_row(
            row["name"], row["function"], row["fires_on"], policies, next_firing, last_run
        )
    console.print(table)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
