"""The live phase told as it happens: faults, migrations and version changes, one line each.

:class:`Narrator` turns what the live loop and the control plane record into the
console's story of a run, in simulated time::

    t=40 s cpu_hog on agent j-A0 (load 0.9) for 30 s
    t=55 s counter@A0 edge j-A0 → fog fog-0: observed p95 97.8 ms > SLO 25 ms; switched in 0.23 s
    t=70 s cpu_hog on agent j-A0 ended
    t=96 s counter@A0 fog fog-0 → edge j-A0: periodic round (a cheaper place meets
        the SLO); switched in 0.13 s

It reads, never writes: fault lines come from the loop as the timeline fires them
(:meth:`fault`), migrations from the controller's history and versions from the
route table, both polled (:meth:`poll`, about once a second from the loop's
progress callback). A migration is told once it switched, failed or was rolled
back; a version once its route serves it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from rich.console import Console
from rich.markup import escape

from mesh.control._store import MigrationRecord

__all__ = ["Narrator", "describe_migration"]

logger = logging.getLogger(__name__)

#: The engine's terse reasons, in words for the console.
_REASONS = {
    "period": "periodic round (a cheaper place meets the SLO)",
    "pinned": "pinned by an operator",
    "unpinned": "pin lifted",
}


class _Route(Protocol):
    @property
    def module(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def epoch(self) -> int: ...


def _place(tier: str | None, node: str | None, site: str | None, *, agent: bool) -> str:
    if agent or tier == "edge":
        return f"edge {node or '?'}"
    name = site if site and site != tier else (node or "?")[:12]
    return f"{tier or '?'} {name}"


def describe_migration(m: MigrationRecord, sites: Mapping[str, str] | None = None) -> str:
    """One migration in words: what moved where, why, and how it ended.

    ``sites``: Ray node id -> site, for a source the record names by node only.
    """
    who = f"{m.module}@{m.site}" if m.site else m.module
    from_site = (sites or {}).get(m.from_node or "")
    source = _place(m.from_tier, m.from_node, from_site, agent=m.from_tier == "edge")
    target = _place(m.to_tier, m.to_node, m.to_site, agent=m.to_kind == "agent")
    why = _REASONS.get(m.reason, m.reason)
    # The engine's reason names the module and node again ("counter@A0 on j-A0: ..."):
    # the line already says both.
    head, sep, rest = why.partition(": ")
    if sep and who in head:
        why = rest
    line = f"{who} {source} → {target}: {why}"
    if m.status in ("failed", "rolled_back"):
        return f"{line}; {m.status.replace('_', ' ')}: {m.error or 'no reason given'}"
    if m.switch_s is not None:
        line += f"; switched in {m.switch_s:.2f} s"
    if m.lost:
        line += f", {m.lost} request(s) lost"
    return line


class Narrator:
    """Print the live phase's faults, migrations and version changes (module docstring).

    Args:
        console: where the lines go.
        sim_time_at: simulated seconds at a Unix time (the live loop's clock).
        migrations: the controller's migrations, newest first.
        routes: the served modules' routes now.
        on_line: also given each line's simulated time and words (the dashboard).
    """

    def __init__(
        self,
        console: Console,
        sim_time_at: Callable[[float], float],
        *,
        migrations: Callable[[], Iterable[MigrationRecord]],
        routes: Callable[[], Iterable[_Route]],
        on_line: Callable[[float, str], None] | None = None,
    ) -> None:
        """Everything recorded before this counts as told."""
        self._console = console
        self._sim_time_at = sim_time_at
        self._migrations = migrations
        self._routes = routes
        self._on_line = on_line
        self._lock = threading.Lock()
        self._told: set[str] = set()
        self._versions: dict[str, str] = {}
        self._sites: dict[str, str] = {}  # Ray node id -> site, learnt from targets
        self.lines: list[str] = []
        self.poll(quiet=True)

    def fault(self, sim_s: float, what: str) -> None:
        """A fault started or ended at ``sim_s`` (the timeline's own words)."""
        self._say(sim_s, what, style="yellow")

    def poll(self, *, quiet: bool = False) -> None:
        """Tell the migrations and version changes recorded since the last poll.

        ``quiet``: only take note of them (the state before the live phase).
        """
        try:
            moves = [m for m in self._migrations() if m.kind == "module" or m.agent]
            routes = list(self._routes())
        except Exception:  # the story must never stop the run
            logger.exception("narration: could not read migrations or routes")
            return
        for m in sorted(moves, key=lambda m: m.decided_at):
            if m.to_site and m.to_kind != "agent":
                self._sites[m.to_node] = m.to_site
            if m.id in self._told or not (m.switched_at or m.status in ("failed", "rolled_back")):
                continue
            self._told.add(m.id)
            if not quiet:
                at = m.switched_at or m.finished_at or m.decided_at
                style = "red" if m.status in ("failed", "rolled_back") else "cyan"
                self._say(self._sim_time_at(at), describe_migration(m, self._sites), style=style)
        for route in routes:
            before = self._versions.get(route.module)
            self._versions[route.module] = route.version
            if before is not None and before != route.version and not quiet:
                self._say(
                    None,
                    f"{route.module}: v{before} → v{route.version} serving "
                    f"(route epoch {route.epoch})",
                    style="magenta",
                )

    def _say(self, sim_s: float | None, text: str, *, style: str) -> None:
        at = self._sim_time_at(time.time()) if sim_s is None else sim_s
        line = f"t={at:.0f} s {text}"
        with self._lock:
            self.lines.append(line)
        if self._on_line is not None:
            self._on_line(at, text)
        self._console.print(f"  [{style}]{escape(line)}[/]", soft_wrap=True, highlight=False)
