"""`mesh agents`: enrol edge devices and list them with their health.

Mounted by the main CLI as ``app.add_typer(agents_app, name="agents")``::

    mesh agents enroll cam-07 --site int-2-1 [--broker mqtt://10.0.0.2:1883]
    mesh agents enroll-batch fleet.csv [--broker ...]   # one ID,SITE a line
    mesh agents                      # same as `mesh agents list`
    mesh agents list [--json] [--wait-s 1]
    mesh agents revoke cam-07

Health comes live from the broker when it is reachable (a short-lived gateway
reads the retained statuses and any heartbeats within ``--wait-s``), else from
the last health a running gateway stored.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mesh.cli._output import console, err
from mesh.cli._output import errors as _errors
from mesh.core._errors import MeshError
from mesh.edge._enrolment import (
    AgentRecord,
    EdgeSettings,
    EnrolmentError,
    EnrolmentResult,
    EnrolmentStore,
    control_plane_credentials,
    enroll,
    enroll_many,
    revoke,
)

__all__ = ["AgentHealth", "agents_app", "collect_health", "read_batch"]

logger = logging.getLogger(__name__)

agents_app = typer.Typer(
    help="Edge agents: enrol devices (MQTT credentials, ACLs) and see their health.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """One row of `mesh agents list`.

    Attributes:
        agent_id: the agent.
        site: its site (None when only the broker knows it).
        enrolled: whether it is in the enrolment table.
        health: ``online``, ``stale``, ``offline`` or ``unknown``.
        heartbeat_age_s: seconds since its last heartbeat, if known.
        cpu_percent: host CPU use from its last heartbeat.
        mem_percent: host memory use from its last heartbeat.
        observed_version: the desired version it last reported acting on.
        source: ``live`` (from the broker now) or ``store`` (last stored).
        outbox: its event outbox from the last heartbeat (depth, dropped, delivered,
            in_memory, full), if known.
        faults: what went wrong on the device from the last heartbeat (damaged files
            moved aside, background threads restarted, clock offset), if known.
        limited: messages it sent over its rates while listed (``mesh.edge._flood``).
    """

    agent_id: str
    site: str | None
    enrolled: bool
    health: str
    heartbeat_age_s: float | None
    cpu_percent: float | None
    mem_percent: float | None
    observed_version: int | None
    source: str
    outbox: dict[str, Any] | None = None
    faults: dict[str, Any] | None = None
    limited: int = 0


def _from_record(record: AgentRecord, now: float) -> AgentHealth:
    metrics = record.metrics
    cpu, mem = metrics.get("cpu_percent"), metrics.get("mem_percent")
    return AgentHealth(
        agent_id=record.agent_id,
        site=record.site,
        enrolled=True,
        health=record.state,
        heartbeat_age_s=(now - record.last_heartbeat_at) if record.last_heartbeat_at else None,
        cpu_percent=float(cpu) if isinstance(cpu, int | float) else None,
        mem_percent=float(mem) if isinstance(mem, int | float) else None,
        observed_version=None,
        source="store",
    )


def collect_health(
    settings: EdgeSettings, *, wait_s: float = 1.0, connect_timeout_s: float = 3.0
) -> tuple[list[AgentHealth], str | None]:
    """Enrolled agents (and any others the broker knows) with their health.

    Returns:
        The rows by agent id, and why live health is missing (None when live).
    """
    now = time.time()
    with EnrolmentStore(settings.store_path) as store:
        records = {r.agent_id: r for r in store.list_agents()}
    rows = {a: _from_record(r, now) for a, r in records.items()}
    try:
        from mesh.edge._bus import EdgeBus

        username, password = settings.mqtt_username, settings.mqtt_password
        if username is None and settings.control_credentials_file.is_file():
            creds = control_plane_credentials(settings)
            username, password = creds.username, creds.password
        ca, cert, key = (
            str(p) if p else None
            for p in (settings.broker_ca_file, settings.broker_cert_file, settings.broker_key_file)
        )
        gateway = EdgeBus(
            settings.broker_url,
            username=username,
            password=password,
            prefix=settings.topic_prefix,
            session_expiry_s=0,
            ca_file=ca,
            cert_file=cert,
            key_file=key,
        )
        gateway.start(timeout_s=connect_timeout_s)
    except MeshError as exc:
        return sorted(rows.values(), key=lambda h: h.agent_id), str(exc)
    try:
        # Retained statuses come right after the SUBACK; heartbeats need their period,
        # so wait (up to wait_s) for one from each agent that says it is online.
        gateway.barrier(connect_timeout_s)

        def settled() -> bool:
            return all(
                v.last_heartbeat is not None for v in gateway.agents() if v.state == "online"
            )

        gateway.wait_until(settled, wait_s)
        now = time.time()
        for view in gateway.agents():
            hb = view.last_heartbeat
            stored = rows.get(view.agent_id)
            rows[view.agent_id] = AgentHealth(
                agent_id=view.agent_id,
                site=(stored.site if stored else None) or view.site,
                enrolled=view.agent_id in records,
                health=view.health(now),
                heartbeat_age_s=view.heartbeat_age_s(now)
                if hb
                else (stored.heartbeat_age_s if stored else None),
                cpu_percent=hb.host.cpu_percent if hb else (stored.cpu_percent if stored else None),
                mem_percent=hb.host.mem_percent if hb else (stored.mem_percent if stored else None),
                observed_version=view.observed.version if view.observed else None,
                source="live",
                outbox=hb.outbox.model_dump() if hb else None,
                faults=hb.faults.model_dump() if hb else None,
                limited=view.flood.limited if view.flood else 0,
            )
    finally:
        gateway.stop()
    return sorted(rows.values(), key=lambda h: h.agent_id), None


def fault_summary(row: AgentHealth) -> str:
    """The device's troubles in a few words (events still in its outbox among them).

    ``-`` when there are none, or none are known.

    Example:
        >>> row = AgentHealth("a", None, True, "online", 1.0, None, None, None, "live",
        ...                   outbox={"depth": 1, "dropped": 3, "full": True},
        ...                   faults={"quarantined": ["x"], "thread_failures": {"pump": 2}})
        >>> fault_summary(row)
        '1 file moved aside, 2 thread restarts, 1 event waiting, disk full, 3 events dropped'
    """
    faults, outbox = row.faults or {}, row.outbox or {}
    parts: list[str] = []
    moved = len(faults.get("quarantined") or [])
    if moved:
        parts.append(f"{moved} file{'s' if moved != 1 else ''} moved aside")
    restarts = sum((faults.get("thread_failures") or {}).values())
    if restarts:
        parts.append(f"{restarts} thread restart{'s' if restarts != 1 else ''}")
    waiting = int(outbox.get("depth") or 0)
    if waiting:
        parts.append(f"{waiting} event{'s' if waiting != 1 else ''} waiting")
    if outbox.get("full"):
        parts.append("disk full")
    dropped = int(outbox.get("dropped") or 0)
    if dropped:
        parts.append(f"{dropped} event{'s' if dropped != 1 else ''} dropped")
    offset = float(faults.get("clock_offset_s") or 0.0)
    if abs(offset) >= 1.0:
        parts.append(f"clock {-offset:+.1f} s off")
    if row.limited:
        parts.append(f"flooding: {row.limited} messages over its rate")
    return ", ".join(parts) or "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


_STYLE = {"online": "green", "stale": "yellow", "offline": "red", "unknown": "dim"}


def _list(json_out: bool, wait_s: float) -> None:
    settings = EdgeSettings()
    with _errors():
        rows, offline_reason = collect_health(settings, wait_s=wait_s)
    if json_out:
        print(
            json.dumps(
                {
                    "live": offline_reason is None,
                    "reason": offline_reason,
                    "agents": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
        return
    if offline_reason is not None:
        err.print(
            f"[yellow]broker {settings.broker_url} not reachable[/] ({offline_reason}); "
            "showing the last stored health",
            highlight=False,
        )
    if not rows:
        console.print(
            "no agents enrolled; enrol one with [bold]mesh agents enroll ID --site SITE[/]"
        )
        return
    table = Table(title="edge agents")
    for column in (
        "agent",
        "site",
        "health",
        "last heartbeat",
        "cpu %",
        "mem %",
        "observed",
        "faults",
        "source",
    ):
        table.add_column(column, justify="right" if column.endswith("%") else "left")
    for r in rows:
        style = _STYLE.get(r.health, "")
        table.add_row(
            r.agent_id + ("" if r.enrolled else " [dim](not enrolled)[/]"),
            r.site or "-",
            f"[{style}]{r.health}[/]" if style else r.health,
            _age(r.heartbeat_age_s),
            "-" if r.cpu_percent is None else f"{r.cpu_percent:.0f}",
            "-" if r.mem_percent is None else f"{r.mem_percent:.0f}",
            "-" if r.observed_version is None else f"v{r.observed_version}",
            fault_summary(r),
            r.source,
        )
    console.print(table)


@agents_app.callback(invoke_without_command=True)
def agents_main(ctx: typer.Context) -> None:
    """Edge agents; without a subcommand, list them with their health."""
    if ctx.invoked_subcommand is None:
        _list(json_out=False, wait_s=1.0)


@agents_app.command("list")
def list_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wait_s: Annotated[float, typer.Option(help="How long to listen for heartbeats.")] = 1.0,
) -> None:
    """List enrolled agents: online/offline, heartbeat age, CPU, memory, outbox, faults."""
    _list(json_out, wait_s)


@agents_app.command("enroll")
def enroll_cmd(
    agent_id: Annotated[str, typer.Argument(help="Agent id, e.g. cam-07 (one topic level).")],
    site: Annotated[str, typer.Option("--site", help="The agent's site, e.g. int-2-1.")],
    broker: Annotated[
        str | None, typer.Option("--broker", help="Broker URL the device should use.")
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--password-file",
            help="Write the agent's MQTT password here (mode 0600); "
            "default <data dir>/agents/ID/mqtt-password.",
        ),
    ] = None,
) -> None:
    """Create credentials and broker ACLs for an agent; print the command for the device.

    The password goes to a file (mode 0600), never to the terminal or a command line.
    """
    settings = EdgeSettings()
    with _errors():
        result = enroll(
            agent_id, site=site, settings=settings, broker_url=broker, password_file=password_file
        )
    _print_enrolled(result)
    _print_reload_hint(result)


@agents_app.command("enroll-batch")
def enroll_batch_cmd(
    file: Annotated[
        Path, typer.Argument(help="A file with one ID,SITE a line ('#' comments, blank lines).")
    ],
    broker: Annotated[
        str | None, typer.Option("--broker", help="Broker URL the devices should use.")
    ] = None,
) -> None:
    """Enrol many agents at once (the broker files written once); print each one's command.

    Each agent's password goes to <data dir>/agents/ID/mqtt-password (mode 0600).
    A bad line, id or site enrols nobody.
    """
    with _errors():
        agents = read_batch(file)
        results = enroll_many(agents, settings=EdgeSettings(), broker_url=broker)
    for result in results:
        _print_enrolled(result)
    console.print(f"[green]enrolled {len(results)} agents[/] from {_escape(str(file))}")
    _print_reload_hint(results[0])


def read_batch(file: Path) -> list[tuple[str, str]]:
    """The ``(agent_id, site)`` pairs of an enrol-batch file: one ``ID,SITE`` a line.

    Blank lines and lines starting with ``#`` are skipped; spaces around either
    field are dropped.

    Raises:
        EnrolmentError: the file cannot be read, a line is not ``ID,SITE``, or the
            file names no agent (the message names the file and the line).
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrolmentError(f"cannot read the agents file {file}: {exc}") from exc
    agents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not all(fields):
            raise EnrolmentError(
                f"{file}:{number}: expected ID,SITE (e.g. cam-07,int-2-1), got {line.strip()!r}"
            )
        agents.append((fields[0], fields[1]))
    if not agents:
        raise EnrolmentError(f"{file}: no agents in it; give one ID,SITE a line")
    return agents


def _print_enrolled(result: EnrolmentResult) -> None:
    console.print(
        f"[green]enrolled[/] [bold]{result.agent_id}[/] (site {result.site}). "
        f"Its MQTT password is in {_escape(str(result.device_password_file))} (mode 0600): "
        "copy it to the same path on the device, then run there:",
        soft_wrap=True,
    )
    # Printed bare, never wrapped or cropped, so it can be copied as is.
    console.print(result.command_line, soft_wrap=True, markup=False, highlight=False)
    console.print(
        f"artifact token (Authorization: Bearer): {_escape(result.token)}",
        soft_wrap=True,
        highlight=False,
    )


def _print_reload_hint(result: EnrolmentResult) -> None:
    console.print(
        f"[dim]password file {result.password_file}, ACL file {result.acl_file}; "
        "reload Mosquitto to apply (systemctl reload mosquitto, or kill -HUP its "
        "pid)[/]",
        soft_wrap=True,
        highlight=False,
    )


@agents_app.command("revoke")
def revoke_cmd(
    agent_id: Annotated[str, typer.Argument(help="Agent id.")],
) -> None:
    """Remove an agent's credentials and ACL entries (reload Mosquitto afterwards)."""
    with _errors():
        existed = revoke(agent_id, settings=EdgeSettings())
    if not existed:
        err.print(f"[yellow]no agent {agent_id!r} was enrolled[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"revoked {agent_id}; reload Mosquitto to apply")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
