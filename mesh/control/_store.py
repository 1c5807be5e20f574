"""Placement state in SQLite: desired placements, migrations, pins, deployments, pipelines.

The same database file as the run store (``<data_dir>/mesh.db``, WAL), in its
own tables, so one file holds the control plane's hard state:

* ``placement_plans``: every desired placement the controller adopted, with a
  version that only grows, what triggered it and each module's node and why;
* ``placement_migrations``: every migration as a persisted state machine: its
  phase (:data:`PHASES`), the time of each (decided, started, target ready,
  switched, drained, removed, finished), where it goes (the target's tier,
  site and kind, to resume it after a restart), the reason of a failure,
  requests lost and the slowest request during the move;
* ``placement_pins``: modules an operator fixed to a node or a tier;
* ``placement_deployments``: where each module runs, the one record of it
  (spec, version, tier, site, agent or Ray node, and an epoch that grows by
  one at each move): written before the route switches to it, read back each
  round by the controller and at start to re-apply after a restart;
* ``placement_pipelines``: modules whose agents' pipelines are placed per site
  (agent -> site, declared rate), tracked again after a restart.

Writes are few (a plan or a migration every few seconds at most), so each is
its own transaction on one connection behind a lock.

Example:
    >>> store = PlacementStore(":memory:")
    >>> store.pin("counter", tier="fog").tier
    'fog'
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mesh.core._errors import StoreError
from mesh.core._sqlite import Schema, open_sqlite, write_transaction

__all__ = [
    "PHASES",
    "TERMINAL",
    "DeploymentRecord",
    "MigrationRecord",
    "Pin",
    "PipelineRecord",
    "PlacementStore",
    "PlanRecord",
]

logger = logging.getLogger(__name__)

# Version 1 is the tables as they were before versions; a change is a new migration step.
_SCHEMA = Schema(
    "placements",
    """
CREATE TABLE IF NOT EXISTS placement_plans (
    version INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    trigger TEXT NOT NULL,
    policy TEXT NOT NULL,
    feasible INTEGER NOT NULL,
    cost_per_h REAL NOT NULL,
    routes_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS placement_migrations (
    id TEXT PRIMARY KEY,
    module TEXT NOT NULL,
    site TEXT NOT NULL,
    from_node TEXT,
    to_node TEXT NOT NULL,
    from_tier TEXT,
    to_tier TEXT NOT NULL,
    reason TEXT NOT NULL,
    explanation TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    plan_version INTEGER,
    decided_at REAL NOT NULL,
    ready_at REAL,
    switched_at REAL,
    drained_at REAL,
    removed_at REAL,
    requests INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    max_ms REAL
);
CREATE INDEX IF NOT EXISTS placement_migrations_by_time
    ON placement_migrations(decided_at);
CREATE TABLE IF NOT EXISTS placement_pins (
    module TEXT PRIMARY KEY,
    node TEXT,
    tier TEXT,
    pinned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS placement_deployments (
    module TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    version TEXT NOT NULL,
    tier TEXT NOT NULL,
    site TEXT,
    agent TEXT,
    sources_json TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS placement_pipelines (
    module TEXT PRIMARY KEY,
    sites_json TEXT NOT NULL,
    rate_per_s REAL NOT NULL,
    updated_at REAL NOT NULL
);
""",
    migrations=(
        # 1 -> 2: migrations are state machines; old rows keep their status
        # ('running', 'done', 'failed'), read as they were.
        """
ALTER TABLE placement_migrations ADD COLUMN kind TEXT NOT NULL DEFAULT 'module';
ALTER TABLE placement_migrations ADD COLUMN agent TEXT;
ALTER TABLE placement_migrations ADD COLUMN to_site TEXT;
ALTER TABLE placement_migrations ADD COLUMN to_kind TEXT;
ALTER TABLE placement_migrations ADD COLUMN started_at REAL;
ALTER TABLE placement_migrations ADD COLUMN finished_at REAL;
CREATE INDEX IF NOT EXISTS placement_migrations_by_status
    ON placement_migrations(status);
""",
        # 2 -> 3: a deployment names its Ray node and counts its moves; an old row
        # has no node (the controller records the one its replicas serve on).
        """
ALTER TABLE placement_deployments ADD COLUMN node TEXT;
ALTER TABLE placement_deployments ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
""",
    ),
)

#: A migration's phases in order; the last three end it.
PHASES = (
    "planned",
    "starting",
    "ready",
    "switched",
    "draining",
    "done",
    "failed",
    "rolled_back",
)

#: Phases that end a migration (``running`` is the pre-phase status of an old row).
TERMINAL = frozenset({"done", "failed", "rolled_back"})


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """A desired placement the controller adopted.

    Attributes:
        version: grows by one per adopted plan.
        created_at: Unix time.
        trigger: why the round ran (``period``, ``slo``, ``node-left``...).
        policy: the engine's policy.
        feasible: every route within its SLO.
        cost_per_h: what the plan costs.
        routes: module -> {site, node, tier, predicted_p95_ms, slo_p95_ms, epoch, why}.
    """

    version: int
    created_at: float
    trigger: str
    policy: str
    feasible: bool
    cost_per_h: float
    routes: Mapping[str, Mapping[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self) | {"routes": {k: dict(v) for k, v in self.routes.items()}}


@dataclass(frozen=True, slots=True)
class MigrationRecord:
    """One migration, from decision to removal at the source.

    Attributes:
        id: its id.
        module: the module moved.
        site: the source site whose route moved.
        from_node: where it served (None: first placement).
        to_node: where it serves now.
        from_tier: tier of ``from_node``.
        to_tier: tier of ``to_node``.
        reason: the trigger, in words.
        explanation: the engine's decision (candidates and why).
        status: its phase (:data:`PHASES`): ``planned``, ``starting``,
            ``ready``, ``switched``, ``draining``, then ``done``, ``failed`` or
            ``rolled_back``; ``running`` in a row from before phases.
        error: why it failed or was rolled back.
        plan_version: the desired placement it carried out.
        decided_at: Unix time of the decision.
        ready_at: the target was installed and warm.
        switched_at: the route switched (epoch + 1).
        drained_at: the source had no request in flight.
        removed_at: the source was stopped.
        requests: requests answered during the move.
        lost: requests that failed during the move.
        max_ms: the slowest request during the move.
        kind: ``module`` (its gateway route moves) or ``pipeline`` (one agent's
            pipeline route moves).
        agent: the agent whose pipeline route moves (``pipeline`` only).
        to_site: the target's site.
        to_kind: the target's kind, ``ray`` or ``agent``.
        started_at: the target began to start.
        finished_at: it ended (done, failed or rolled back).
    """

    id: str
    module: str
    site: str
    from_node: str | None
    to_node: str
    from_tier: str | None
    to_tier: str
    reason: str
    explanation: str
    status: str = "running"
    error: str | None = None
    plan_version: int | None = None
    decided_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    switched_at: float | None = None
    drained_at: float | None = None
    removed_at: float | None = None
    requests: int = 0
    lost: int = 0
    max_ms: float | None = None
    kind: str = "module"
    agent: str | None = None
    to_site: str | None = None
    to_kind: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        """Whether it ended (done, failed or rolled back)."""
        return self.status in TERMINAL

    @property
    def switch_s(self) -> float | None:
        """Seconds from the decision to the new route serving."""
        return None if self.switched_at is None else self.switched_at - self.decided_at

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ``switch_s``."""
        return asdict(self) | {"switch_s": self.switch_s}


@dataclass(frozen=True, slots=True)
class Pin:
    """A module fixed by an operator to a node or a tier (exactly one is set)."""

    module: str
    node: str | None = None
    tier: str | None = None
    pinned_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """Where a module runs: the one record of it (the route and the controller follow it).

    Attributes:
        module: the module.
        spec_json: its :class:`~mesh.sdk._specs.ModuleSpec` as JSON.
        version: the model version served.
        tier: ``cloud``, ``fog`` or ``edge``.
        site: the site its replicas are pinned to.
        agent: the edge agent serving it.
        sources: site -> declared request rate.
        updated_at: Unix time.
        node: the Ray node it serves on (None on an agent, or in a row from
            before nodes were recorded).
        epoch: grows by one each time the record moves (tier, site, agent or
            node change); set by the store, 0 before the first write.
    """

    module: str
    spec_json: str
    version: str
    tier: str
    site: str | None
    agent: str | None
    sources: Mapping[str, float] = field(default_factory=dict)
    updated_at: float = field(default_factory=time.time)
    node: str | None = None
    epoch: int = 0

    @property
    def where(self) -> str | None:
        """The agent or Ray node it serves on (None: a Ray node not recorded)."""
        return self.agent or self.node

    def same_place(self, other: DeploymentRecord) -> bool:
        """Whether ``other`` names the same tier, site, agent and node (no move between them)."""
        return (self.tier, self.site, self.agent, self.node) == (
            other.tier,
            other.site,
            other.agent,
            other.node,
        )


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    """A module whose agents' pipelines are placed per site, to track again after a restart.

    Attributes:
        module: the module the pipelines run.
        sites: agent id -> the site its pipeline serves.
        rate_per_s: the declared frames per second per site.
        updated_at: Unix time.
    """

    module: str
    sites: Mapping[str, str]
    rate_per_s: float
    updated_at: float = field(default_factory=time.time)


class PlacementStore:
    """The placement tables of the control plane's SQLite file.

    Args:
        path: the database file (``settings.store_path``), or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        """Open (and create) the tables at ``path``."""
        self.path = str(path)
        try:
            self._db = open_sqlite(self.path, _SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the placement store at {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock, f"placement store ({self.path})")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params))
            except sqlite3.Error as exc:
                raise StoreError(f"placement store read failed ({self.path}): {exc}") from exc

    # -- plans

    def add_plan(
        self,
        *,
        trigger: str,
        policy: str,
        feasible: bool,
        cost_per_h: float,
        routes: Mapping[str, Mapping[str, Any]],
    ) -> PlanRecord:
        """Store a new desired placement; returns it with its version."""
        created = time.time()
        body = json.dumps(routes, sort_keys=True, default=str)
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(version), 0) FROM placement_plans").fetchone()
            version = int(row[0]) + 1
            db.execute(
                "INSERT INTO placement_plans VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version, created, trigger, policy, int(feasible), cost_per_h, body),
            )
        return PlanRecord(version, created, trigger, policy, feasible, cost_per_h, routes)

    def latest_plan(self) -> PlanRecord | None:
        """The newest desired placement, or None."""
        rows = self._rows("SELECT * FROM placement_plans ORDER BY version DESC LIMIT 1")
        return _plan(rows[0]) if rows else None

    def plans(self, limit: int = 20) -> list[PlanRecord]:
        """The newest desired placements first."""
        rows = self._rows("SELECT * FROM placement_plans ORDER BY version DESC LIMIT ?", (limit,))
        return [_plan(r) for r in rows]

    # -- migrations

    def put_migration(self, record: MigrationRecord) -> None:
        """Insert or update a migration."""
        names = [f.name for f in fields(MigrationRecord)]
        values = tuple(getattr(record, n) for n in names)
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO placement_migrations ({', '.join(names)}) "
                f"VALUES ({', '.join('?' * len(names))})",
                values,
            )

    def switch_migration(
        self, record: MigrationRecord, deployment: DeploymentRecord | None
    ) -> None:
        """Record a migration's switch and where its module now serves, in one transaction.

        So a restart never reads a route switched to the target with the
        deployment still naming the source.
        """
        names = [f.name for f in fields(MigrationRecord)]
        values = tuple(getattr(record, n) for n in names)
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO placement_migrations ({', '.join(names)}) "
                f"VALUES ({', '.join('?' * len(names))})",
                values,
            )
            if deployment is not None:
                _put_deployment(db, deployment)

    def unfinished_migrations(self) -> list[MigrationRecord]:
        """Migrations not done, failed or rolled back (left by a crash), oldest first."""
        marks = ", ".join("?" * len(TERMINAL))
        rows = self._rows(
            f"SELECT * FROM placement_migrations WHERE status NOT IN ({marks}) ORDER BY decided_at",
            tuple(sorted(TERMINAL)),
        )
        return [MigrationRecord(**dict(r)) for r in rows]

    def migrations(self, *, module: str | None = None, limit: int = 50) -> list[MigrationRecord]:
        """The newest migrations first."""
        where, params = ("WHERE module = ?", (module,)) if module else ("", ())
        rows = self._rows(
            f"SELECT * FROM placement_migrations {where} ORDER BY decided_at DESC LIMIT ?",
            (*params, limit),
        )
        return [MigrationRecord(**dict(r)) for r in rows]

    # -- pins

    def pin(self, module: str, *, node: str | None = None, tier: str | None = None) -> Pin:
        """Fix ``module`` to a node or a tier (replacing any pin it had).

        Raises:
            ValueError: neither or both of ``node`` and ``tier``.
        """
        if (node is None) == (tier is None):
            raise ValueError("pin a module to a node or to a tier (one of them)")
        pin = Pin(module, node, tier)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO placement_pins VALUES (?, ?, ?, ?)",
                (module, node, tier, pin.pinned_at),
            )
        return pin

    def unpin(self, module: str) -> bool:
        """Remove ``module``'s pin; returns whether it had one."""
        with self._tx() as db:
            cursor = db.execute("DELETE FROM placement_pins WHERE module = ?", (module,))
            return cursor.rowcount > 0

    def pins(self) -> dict[str, Pin]:
        """Every pin, by module."""
        rows = self._rows("SELECT * FROM placement_pins ORDER BY module")
        return {r["module"]: Pin(**dict(r)) for r in rows}

    # -- deployments

    def put_deployment(self, record: DeploymentRecord) -> DeploymentRecord:
        """Record where a module runs; returns the record with its epoch.

        The epoch is the stored one, plus one if the record moves the module.
        """
        with self._tx() as db:
            return _put_deployment(db, record)

    def deployment(self, module: str) -> DeploymentRecord | None:
        """``module``'s recorded deployment, or None."""
        rows = self._rows("SELECT * FROM placement_deployments WHERE module = ?", (module,))
        return _deployment(rows[0]) if rows else None

    def remove_deployment(self, module: str) -> None:
        """Forget a module (it was undeployed)."""
        with self._tx() as db:
            db.execute("DELETE FROM placement_deployments WHERE module = ?", (module,))

    def deployments(self) -> list[DeploymentRecord]:
        """Every recorded deployment, by module."""
        rows = self._rows("SELECT * FROM placement_deployments ORDER BY module")
        return [_deployment(r) for r in rows]

    # -- pipelines

    def put_pipelines(self, record: PipelineRecord) -> None:
        """Record (or replace) the pipelines tracked for a module."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO placement_pipelines VALUES (?, ?, ?, ?)",
                (
                    record.module,
                    json.dumps(dict(record.sites), sort_keys=True),
                    record.rate_per_s,
                    record.updated_at,
                ),
            )

    def remove_pipelines(self, module: str) -> bool:
        """Forget a module's pipelines; returns whether they were recorded."""
        with self._tx() as db:
            cursor = db.execute("DELETE FROM placement_pipelines WHERE module = ?", (module,))
            return cursor.rowcount > 0

    def pipelines(self) -> list[PipelineRecord]:
        """Every module's recorded pipelines, by module.

        A row whose sites are not a JSON object is logged and left out (it stays
        stored until the module's pipelines are recorded again or removed).
        """
        out = []
        for r in self._rows("SELECT * FROM placement_pipelines ORDER BY module"):
            try:
                sites = json.loads(r["sites_json"])
                if not isinstance(sites, dict):
                    raise ValueError(f"expected a JSON object, got {type(sites).__name__}")
            except ValueError as exc:  # json.JSONDecodeError is one
                logger.warning("%s: stored pipelines unreadable, skipped: %s", r["module"], exc)
                continue
            out.append(PipelineRecord(r["module"], sites, r["rate_per_s"], r["updated_at"]))
        return out


def _put_deployment(db: sqlite3.Connection, record: DeploymentRecord) -> DeploymentRecord:
    """Write ``record`` in the caller's transaction, its epoch counted from the stored row."""
    row = db.execute(
        "SELECT tier, site, agent, node, epoch FROM placement_deployments WHERE module = ?",
        (record.module,),
    ).fetchone()
    if row is None:
        epoch = 1
    else:
        stored = (row[0], row[1], row[2], row[3])
        moved = stored != (record.tier, record.site, record.agent, record.node)
        epoch = int(row[4]) + 1 if moved else int(row[4])
    db.execute(
        "INSERT OR REPLACE INTO placement_deployments (module, spec_json, version, tier, site, "
        "agent, sources_json, updated_at, node, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.module,
            record.spec_json,
            record.version,
            record.tier,
            record.site,
            record.agent,
            json.dumps(dict(record.sources), sort_keys=True),
            record.updated_at,
            record.node,
            epoch,
        ),
    )
    return replace(record, epoch=epoch)


def _deployment(row: sqlite3.Row) -> DeploymentRecord:
    doc = dict(row)
    doc["sources"] = json.loads(doc.pop("sources_json") or "{}")
    return DeploymentRecord(**doc)


def _plan(row: sqlite3.Row) -> PlanRecord:
    return PlanRecord(
        version=row["version"],
        created_at=row["created_at"],
        trigger=row["trigger"],
        policy=row["policy"],
        feasible=bool(row["feasible"]),
        cost_per_h=row["cost_per_h"],
        routes=json.loads(row["routes_json"]),
    )
