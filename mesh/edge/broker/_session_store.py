"""The embedded broker's persistent sessions on disk: ``<data>/mqtt/sessions.db``.

A client that connects with ``clean_session`` false and subscribes has a
persistent session: its subscriptions (topic filter, QoS) and the QoS 1/2
messages queued for it while it is away outlive the broker's process, as
Mosquitto's do with ``persistence true``. Without them a control plane killed
and restarted forgets every offline agent, and what is published before the
agent resubscribes reaches nobody. Clean sessions are never stored.

Rows are written as they change, each in its own transaction (WAL,
``synchronous=NORMAL``: a commit is a write to the WAL, no fsync; a killed
process loses nothing written): only messages for *offline* sessions are
written, so a broker whose subscribers are all connected writes nothing per
message. Each session's queue is bounded (:class:`SessionLimits`: messages and
bytes); the oldest are dropped first, counted, with a warning. A session
disconnected for longer than ``expiry_s`` is forgotten (Mosquitto's
``persistent_client_expiration``).

This module knows nothing of amqtt (:mod:`mesh.edge.broker._amqtt_persistence`
wires it into the broker), so unit tests drive it directly.

Example:
    >>> store = SessionStore(data / "mqtt" / "sessions.db")    # doctest: +SKIP
    >>> store.subscribe("cam-1", "mesh/cam-1/frames", 1)         # doctest: +SKIP
    >>> store.enqueue("cam-1", "mesh/cam-1/frames", b"...", 1)   # doctest: +SKIP
    QueuedMessage(row=1, ...), ()
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.core._sqlite import Schema, open_sqlite, write_transaction
from mesh.core._sqlite_check import StoreDamagedError, check_store

__all__ = ["QueuedMessage", "SessionLimits", "SessionStore", "StoredSession"]

logger = logging.getLogger(__name__)

_SCHEMA = Schema(
    "mqtt_sessions",
    """
    CREATE TABLE IF NOT EXISTS mqtt_sessions (
        client_id TEXT PRIMARY KEY,
        disconnected_at REAL
    );
    CREATE TABLE IF NOT EXISTS mqtt_subscriptions (
        client_id TEXT NOT NULL,
        topic_filter TEXT NOT NULL,
        qos INTEGER NOT NULL,
        PRIMARY KEY (client_id, topic_filter)
    );
    CREATE TABLE IF NOT EXISTS mqtt_queued (
        row INTEGER PRIMARY KEY AUTOINCREMENT,
        client_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS mqtt_queued_by_client ON mqtt_queued (client_id, row);
    """,
)

#: Warn about a session's dropped messages on the first and then every this many.
_WARN_EVERY = 100


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Bounds on what a persistent session keeps.

    Attributes:
        max_messages: queued messages per session (Mosquitto's ``max_queued_messages``).
        max_bytes: queued payload bytes per session (``max_queued_bytes``).
        expiry_s: a session disconnected this long is forgotten
            (``persistent_client_expiration``; default 3 days).

    Raises:
        ValueError: a bound below 1.
    """

    max_messages: int = 1000
    max_bytes: int = 64 * 1024 * 1024
    expiry_s: float = 3 * 24 * 3600.0

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_bytes", "expiry_s"):
            value = getattr(self, name)
            if not value >= 1:
                raise ValueError(f"SessionLimits.{name} must be at least 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message kept for an offline session.

    Attributes:
        row: its row in the store (deleted once delivered).
        topic: the topic it was published on.
        data: the payload.
        qos: the QoS it is delivered with (1 or 2).
    """

    row: int
    topic: str
    data: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A persistent session as the store kept it.

    Attributes:
        client_id: the MQTT client id.
        disconnected_at: when it went away (Unix time).
        subscriptions: ``(topic filter, QoS)`` pairs.
        queued: messages waiting for it, oldest first.
    """

    client_id: str
    disconnected_at: float
    subscriptions: tuple[tuple[str, int], ...]
    queued: tuple[QueuedMessage, ...]


class SessionStore:
    """Persistent MQTT sessions in one SQLite file (owner-only, WAL).

    A damaged file is moved aside (``sessions.db.damaged-<UTC time>``, with its
    ``-wal`` and ``-shm``) with a warning and a fresh one is started: losing
    queued messages beats a control plane that cannot start.

    Args:
        path: the file (its folder is created, owner-only).
        limits: the per-session bounds and the expiry.
        clock: Unix time (injected by tests).

    Raises:
        StoreError: a newer fogmesh wrote the file.
    """

    def __init__(
        self,
        path: Path,
        limits: SessionLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits or SessionLimits()
        self._clock = clock
        self._lock = threading.Lock()
        #: Messages dropped (queue over its bounds), per client, since this store opened.
        self.dropped: dict[str, int] = {}
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = _open(path)
        # Per-client (count, bytes) of queued messages, so a bound check costs no query.
        self._usage: dict[str, tuple[int, int]] = {
            client: (int(n), int(size or 0))
            for client, n, size in self._db.execute(
                "SELECT client_id, COUNT(*), SUM(LENGTH(payload)) FROM mqtt_queued "
                "GROUP BY client_id"
            )
        }

    def load(self) -> list[StoredSession]:
        """Every unexpired session, after forgetting the expired ones.

        A session still connected when the broker died counts as disconnected
        now (its expiry starts with this start).
        """
        now = self._clock()
        with self._write() as db:
            db.execute(
                "UPDATE mqtt_sessions SET disconnected_at = ? WHERE disconnected_at IS NULL", (now,)
            )
        self.expire()
        sessions: list[StoredSession] = []
        for client_id, disconnected_at in self._db.execute(
            "SELECT client_id, disconnected_at FROM mqtt_sessions ORDER BY client_id"
        ).fetchall():
            subscriptions = tuple(
                (str(f), int(q))
                for f, q in self._db.execute(
                    "SELECT topic_filter, qos FROM mqtt_subscriptions WHERE client_id = ? "
                    "ORDER BY topic_filter",
                    (client_id,),
                )
            )
            queued = tuple(
                QueuedMessage(int(row), str(topic), bytes(payload), int(qos))
                for row, topic, payload, qos in self._db.execute(
                    "SELECT row, topic, payload, qos FROM mqtt_queued WHERE client_id = ? "
                    "ORDER BY row",
                    (client_id,),
                )
            )
            sessions.append(StoredSession(client_id, float(disconnected_at), subscriptions, queued))
        return sessions

    def expire(self) -> list[str]:
        """Forget every session disconnected longer than ``expiry_s``; returns their ids."""
        cutoff = self._clock() - self.limits.expiry_s
        expired = [
            str(r[0])
            for r in self._db.execute(
                "SELECT client_id FROM mqtt_sessions WHERE disconnected_at < ?", (cutoff,)
            )
        ]
        for client_id in expired:
            self.forget(client_id)
        if expired:
            logger.info("MQTT sessions: %d expired (%s)", len(expired), ", ".join(expired))
        return expired

    def subscribe(self, client_id: str, topic_filter: str, qos: int) -> None:
        """Keep a connected persistent session's subscription (replacing one on the same filter)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO mqtt_sessions (client_id, disconnected_at) VALUES (?, NULL) "
                "ON CONFLICT (client_id) DO UPDATE SET disconnected_at = NULL",
                (client_id,),
            )
            db.execute(
                "INSERT OR REPLACE INTO mqtt_subscriptions (client_id, topic_filter, qos) "
                "VALUES (?, ?, ?)",
                (client_id, topic_filter, qos),
            )

    def unsubscribe(self, client_id: str, *topic_filters: str) -> None:
        """Drop subscriptions."""
        with self._write() as db:
            db.executemany(
                "DELETE FROM mqtt_subscriptions WHERE client_id = ? AND topic_filter = ?",
                [(client_id, f) for f in topic_filters],
            )

    def connected(self, client_id: str) -> None:
        """A stored session came back (its expiry clock stops)."""
        with self._write() as db:
            db.execute(
                "UPDATE mqtt_sessions SET disconnected_at = NULL WHERE client_id = ?", (client_id,)
            )

    def disconnected(self, client_id: str) -> None:
        """A stored session went away (its expiry clock starts)."""
        with self._write() as db:
            db.execute(
                "UPDATE mqtt_sessions SET disconnected_at = ? WHERE client_id = ?",
                (self._clock(), client_id),
            )

    def forget(self, client_id: str) -> None:
        """Drop a session with its subscriptions and queue (a clean connect, or expiry)."""
        with self._write() as db:
            db.execute("DELETE FROM mqtt_queued WHERE client_id = ?", (client_id,))
            db.execute("DELETE FROM mqtt_subscriptions WHERE client_id = ?", (client_id,))
            db.execute("DELETE FROM mqtt_sessions WHERE client_id = ?", (client_id,))
        self._usage.pop(client_id, None)

    def enqueue(
        self, client_id: str, topic: str, data: bytes, qos: int
    ) -> tuple[QueuedMessage, tuple[int, ...]]:
        """Queue a message for an offline session, dropping its oldest over the bounds.

        Returns:
            The queued message and the rows dropped to make room (oldest first;
            the new message itself when it alone exceeds ``max_bytes``).
        """
        limits = self.limits
        count, size = self._usage.get(client_id, (0, 0))
        count, size = count + 1, size + len(data)
        dropped: list[int] = []
        with self._write() as db:
            row = db.execute(
                "INSERT INTO mqtt_queued (client_id, topic, payload, qos) VALUES (?, ?, ?, ?)",
                (client_id, topic, data, qos),
            ).lastrowid
            assert row is not None
            # Bounded: each pass drops at least one row while any are left.
            while (count > limits.max_messages or size > limits.max_bytes) and count > 0:
                oldest = db.execute(
                    "SELECT row, LENGTH(payload) FROM mqtt_queued WHERE client_id = ? "
                    "ORDER BY row LIMIT ?",
                    (client_id, max(1, count - limits.max_messages)),
                ).fetchall()
                for old, length in oldest:
                    if count <= limits.max_messages and size <= limits.max_bytes:
                        break
                    db.execute("DELETE FROM mqtt_queued WHERE row = ?", (old,))
                    dropped.append(int(old))
                    count, size = count - 1, size - int(length)
        self._usage[client_id] = (count, size)
        if dropped:
            self._count_drops(client_id, len(dropped))
        return QueuedMessage(int(row), topic, data, qos), tuple(dropped)

    def delivered(self, client_id: str, rows: tuple[int, ...]) -> None:
        """Delete queued messages the client has acknowledged (or that were re-sent)."""
        if not rows:
            return
        with self._write() as db:
            placeholders = ",".join("?" * len(rows))
            db.execute(f"DELETE FROM mqtt_queued WHERE row IN ({placeholders})", rows)
            n, size = db.execute(
                "SELECT COUNT(*), SUM(LENGTH(payload)) FROM mqtt_queued WHERE client_id = ?",
                (client_id,),
            ).fetchone()
        self._usage[client_id] = (int(n), int(size or 0))

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            self._db.close()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self._db, self._lock, f"MQTT sessions ({self.path})")

    def _count_drops(self, client_id: str, n: int) -> None:
        before = self.dropped.get(client_id, 0)
        total = before + n
        self.dropped[client_id] = total
        if before == 0 or total // _WARN_EVERY > before // _WARN_EVERY:
            logger.warning(
                "MQTT session %s: its queue is over %d messages or %d bytes; the oldest "
                "are dropped (%d so far)",
                client_id,
                self.limits.max_messages,
                self.limits.max_bytes,
                total,
            )


def _open(path: Path) -> sqlite3.Connection:
    """Open ``path``; a damaged file is moved aside with a warning and a new one started."""
    try:
        check_store(path, path.parent)
        return open_sqlite(str(path), _SCHEMA, named_rows=False)
    except StoreDamagedError as exc:
        problem = str(exc)
    except sqlite3.DatabaseError as exc:  # open_sqlite's own reads may find it first
        if isinstance(exc, sqlite3.OperationalError):
            raise
        problem = str(exc)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(aside.with_name(aside.name + suffix))
    logger.warning(
        "MQTT sessions: %s is damaged (%s); moved aside to %s, starting with no stored "
        "sessions (offline clients' queued messages are lost)",
        path,
        problem,
        aside,
    )
    return open_sqlite(str(path), _SCHEMA, named_rows=False)
