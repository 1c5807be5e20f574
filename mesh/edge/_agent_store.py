"""The agent store: enrolled agents, their secrets' digests and their last health.

One table (``agents``) in the mesh's SQLite file, versioned like every store
(:mod:`mesh.core._sqlite`). Passwords are kept as Mosquitto hashes (for the
broker's password file) and bearer tokens as sha256 digests; neither secret
is stored. :mod:`mesh.edge._enrolment` enrols and revokes agents through it;
the edge bus records their health in it (a
:class:`~mesh.edge._records.HealthSink`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.core._errors import StoreError
from mesh.core._sqlite import Schema, open_sqlite, write_transaction

__all__ = ["AgentRecord", "EnrolmentStore"]


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An enrolled agent as stored, with its last known health.

    Attributes:
        agent_id: the agent's id (also its MQTT username).
        site: its site (its events go under ``{p}/events/{site}/``).
        enrolled_at: Unix seconds.
        state: last status seen by a gateway: ``online``, ``offline`` or ``unknown``.
        last_seen_at: when a gateway last heard from it (status or heartbeat).
        last_heartbeat_at: when its last heartbeat arrived.
        metrics: its last host metrics (cpu_percent, mem_percent, ...).
    """

    agent_id: str
    site: str
    enrolled_at: float
    state: str = "unknown"
    last_seen_at: float | None = None
    last_heartbeat_at: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


# Version 1 is the tables as they were before versions; a change is a new migration step.
_SCHEMA = Schema(
    "agents",
    """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'unknown',
    last_seen_at REAL,
    last_heartbeat_at REAL,
    metrics_json TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS agents_token ON agents(token_sha256);
""",
)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EnrolmentStore:
    """The ``agents`` table of the mesh's SQLite file (WAL); thread-safe.

    Example:
        >>> store = EnrolmentStore(tmp_path / "mesh.db")      # doctest: +SKIP
        >>> store.agent_for_token("nope") is None              # doctest: +SKIP
        True
    """

    def __init__(self, path: str | Path) -> None:
        """Open (creating if needed) the SQLite file at ``path``."""
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = open_sqlite(str(self.path), _SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the agent store {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"EnrolmentStore(path={str(self.path)!r})"

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> EnrolmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock, f"agent store ({self.path})")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params))
            except sqlite3.Error as exc:
                raise StoreError(f"agent store {self.path}: {exc}") from exc

    def upsert(
        self, agent_id: str, *, site: str, username: str, password_hash: str, token: str
    ) -> None:
        """Create or re-key an agent (a re-enrolment rotates its secrets)."""
        self.upsert_many([(agent_id, site, username, password_hash, token)])

    def upsert_many(self, agents: Sequence[tuple[str, str, str, str, str]]) -> None:
        """Upsert many agents in one transaction: all of them are stored, or none.

        Args:
            agents: ``(agent_id, site, username, password_hash, token)`` each, as
                :meth:`upsert` takes them.
        """
        now = time.time()
        rows = [(a, s, u, h, _token_digest(t), now) for a, s, u, h, t in agents]
        with self._tx() as db:
            db.executemany(
                """INSERT INTO agents (agent_id, site, username, password_hash, token_sha256,
                                       enrolled_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(agent_id) DO UPDATE SET site=excluded.site,
                       username=excluded.username, password_hash=excluded.password_hash,
                       token_sha256=excluded.token_sha256, enrolled_at=excluded.enrolled_at""",
                rows,
            )

    def delete(self, agent_id: str) -> bool:
        """Remove an agent; returns whether it was enrolled."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
            return cur.rowcount > 0

    def get(self, agent_id: str) -> AgentRecord | None:
        """One enrolled agent, or None."""
        rows = self._rows("SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        return _record(rows[0]) if rows else None

    def is_enrolled(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is enrolled."""
        return bool(self._rows("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)))

    def list_agents(self) -> list[AgentRecord]:
        """Every enrolled agent, by id."""
        return [_record(r) for r in self._rows("SELECT * FROM agents ORDER BY agent_id")]

    def credentials(self) -> list[tuple[str, str, str]]:
        """``(agent_id, site, password_hash)`` of every agent, for the broker files."""
        rows = self._rows("SELECT agent_id, site, password_hash FROM agents ORDER BY agent_id")
        return [(r["agent_id"], r["site"], r["password_hash"]) for r in rows]

    def agent_for_token(self, token: str) -> str | None:
        """The agent a bearer token belongs to, or None (constant-time compare)."""
        digest = _token_digest(token)
        rows = self._rows(
            "SELECT agent_id, token_sha256 FROM agents WHERE token_sha256 = ?", (digest,)
        )
        for row in rows:
            if hmac.compare_digest(row["token_sha256"], digest):
                return str(row["agent_id"])
        return None

    def record_health(
        self,
        agent_id: str,
        *,
        state: str | None = None,
        seen_at: float | None = None,
        heartbeat_at: float | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Remember what a gateway last saw of an agent (no-op for unknown agents)."""
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("last_seen_at", seen_at),
            ("last_heartbeat_at", heartbeat_at),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if metrics is not None:
            sets.append("metrics_json = ?")
            params.append(json.dumps(metrics, sort_keys=True))
        if not sets:
            return
        with self._tx() as db:
            db.execute(
                f"UPDATE agents SET {', '.join(sets)} WHERE agent_id = ?", (*params, agent_id)
            )


def _record(row: sqlite3.Row) -> AgentRecord:
    try:
        metrics = json.loads(row["metrics_json"] or "{}")
    except ValueError:
        metrics = {}
    return AgentRecord(
        agent_id=row["agent_id"],
        site=row["site"],
        enrolled_at=row["enrolled_at"],
        state=row["state"],
        last_seen_at=row["last_seen_at"],
        last_heartbeat_at=row["last_heartbeat_at"],
        metrics=metrics if isinstance(metrics, dict) else {},
    )
