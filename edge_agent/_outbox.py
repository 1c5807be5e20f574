"""A disk-backed, bounded, ordered buffer of outgoing events (SQLite from the stdlib).

Every event goes through the outbox: it is stored first, then published in
order by a pump thread while the broker is reachable, and deleted once the
broker acknowledges it (QoS 1). With the broker away, events accumulate on disk;
past ``max_events`` or ``max_bytes`` the oldest are dropped and counted. After a
restart or a reconnect the rest are replayed in order. Delivery is
at-least-once: each event carries an ``id`` for deduplication.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._sqlite import Schema, apply_schema
from .protocol import OutboxStats

__all__ = ["Outbox", "OutboxItem"]

logger = logging.getLogger(__name__)

_REMEDY = (
    "upgrade the agent (pip install -U 'fogmesh[edge]'), or move the file away to start "
    "with an empty outbox (its unsent events are then lost)"
)

# Version 1 is the tables as they were before versions; a change is a new migration step.
_SCHEMA = Schema(
    "outbox",
    """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
""",
)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One buffered event."""

    seq: int
    topic: str
    payload: bytes
    qos: int


class Acked(Protocol):
    """What a publish returns: something that knows when the broker acknowledged it."""

    def is_published(self) -> bool:
        """Whether the broker acknowledged the message."""
        ...


# Publishes an item; returns a handle, or None if it could not be sent now.
PublishFn = Callable[[OutboxItem], "Acked | None"]


class Outbox:
    """Bounded FIFO of events on disk, with an optional pump thread that publishes them.

    Example:
        >>> import tempfile, pathlib
        >>> box = Outbox(pathlib.Path(tempfile.mkdtemp()) / "o.db", max_events=2)
        >>> for i in range(3):
        ...     _ = box.put("t", b"%d" % i)
        >>> [i.payload for i in box.peek(10)], box.stats().dropped
        ([b'1', b'2'], 1)
        >>> box.close()
    """

    def __init__(
        self, path: Path, *, max_events: int = 10000, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        """Open (or create) the buffer at ``path``.

        Raises:
            SchemaVersionError: a newer agent wrote the file (the message says what to do).
            sqlite3.Error: the file cannot be opened.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            apply_schema(self._db, _SCHEMA, path=str(path), remedy=_REMEDY)
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._max_events = max_events
        self._max_bytes = max_bytes
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events"
        ).fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])
        self._dropped = self._meta("dropped")
        seq_row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        found = seq_row.fetchone()
        self._seq = int(found[0]) if found else 0
        self._delivered = self._meta("delivered")
        self._wake = threading.Condition(self._lock)
        self._inflight: deque[tuple[int, Acked]] = deque()  # (seq, handle), in order
        self._sent_upto = 0  # highest seq handed to the MQTT client by this process
        self._pump: threading.Thread | None = None
        self._stopping = False
        self._online = False
        self._last_drop_log = -1e9

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -------------------------------------------------------------- buffer

    def put(self, topic: str, payload: bytes | Callable[[int], bytes], qos: int = 1) -> int:
        """Append an event; drops the oldest when over the bounds. Returns its seq.

        ``payload`` may be a function of the event's sequence number, so that the
        event can carry it.
        """
        with self._lock:
            self._seq += 1
            seq = self._seq
            if callable(payload):
                payload = payload(seq)
            self._db.execute(
                "INSERT INTO events(seq, topic, payload, qos) VALUES(?, ?, ?, ?)",
                (seq, topic, payload, qos),
            )
            self._count += 1
            self._bytes += len(payload)
            self._trim()
            self._wake.notify_all()
        return seq

    def _trim(self) -> None:
        dropped = 0
        while self._count > self._max_events or (self._bytes > self._max_bytes and self._count > 1):
            row = self._db.execute(
                "SELECT seq, LENGTH(payload) FROM events ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM events WHERE seq = ?", (row[0],))
            self._count -= 1
            self._bytes -= int(row[1])
            dropped += 1
        if dropped:
            self._dropped += dropped
            self._set_meta("dropped", self._dropped)
            now = time.monotonic()
            if now - self._last_drop_log < 10.0:  # at most one line per 10 s while full
                return
            self._last_drop_log = now
            logger.warning(
                "outbox full (%d events, %d bytes max): dropped %d oldest, %d dropped in all",
                self._max_events,
                self._max_bytes,
                dropped,
                self._dropped,
            )

    def peek(self, limit: int, after: int = 0) -> list[OutboxItem]:
        """The oldest ``limit`` events with seq > ``after``, in order."""
        with self._lock:
            return self._peek(limit, after)

    def _peek(self, limit: int, after: int) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT seq, topic, payload, qos FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [OutboxItem(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def ack(self, seq: int) -> None:
        """Forget a delivered event."""
        with self._lock:
            self._ack(seq)

    def _ack(self, seq: int) -> None:
        row = self._db.execute("SELECT LENGTH(payload) FROM events WHERE seq = ?", (seq,))
        found = row.fetchone()
        if found is None:
            return  # dropped meanwhile
        self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
        self._count -= 1
        self._bytes -= int(found[0])
        self._delivered += 1

    def stats(self) -> OutboxStats:
        """Depth, dropped and delivered counts."""
        return OutboxStats(depth=self._count, dropped=self._dropped, delivered=self._delivered)

    # -------------------------------------------------------------- pump

    def start_pump(self, publish: PublishFn, *, window: int = 64) -> None:
        """Publish buffered events in order from a thread, ``window`` unacknowledged at most.

        An event handed to the MQTT client stays with it until acknowledged (the
        client resends it after a reconnect), so the pump sends each event once
        per process; after a restart, unacknowledged events are sent again.
        """
        self._pump = threading.Thread(
            target=self._run_pump, args=(publish, window), name="outbox-pump", daemon=True
        )
        self._pump.start()

    def set_online(self, online: bool) -> None:
        """Tell the pump whether the broker is reachable."""
        with self._lock:
            self._online = online
            self._wake.notify_all()

    def _ready(self, window: int) -> bool:
        return (
            self._online
            and len(self._inflight) < window
            and self._count > len(self._inflight)
            and self._has_after(self._sent_upto)
        )

    def _run_pump(self, publish: PublishFn, window: int) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._ready(window):
                    if self._inflight:
                        self._wake.wait(0.02)  # acks are polled: cheap, and never deadlock
                        if self._collect_acks():
                            break
                    else:
                        self._wake.wait(1.0)
                if self._stopping:
                    return
                self._collect_acks()
                batch = self._peek(window - len(self._inflight), self._sent_upto)
            for item in batch:
                handle = publish(item)
                if handle is None:
                    break
                with self._lock:
                    self._inflight.append((item.seq, handle))
                    self._sent_upto = item.seq

    def _collect_acks(self) -> int:
        done = 0
        while self._inflight and self._inflight[0][1].is_published():
            seq, _ = self._inflight.popleft()
            self._ack(seq)
            done += 1
        if done:
            self._set_meta("delivered", self._delivered)
        return done

    def _has_after(self, seq: int) -> bool:
        row = self._db.execute("SELECT 1 FROM events WHERE seq > ? LIMIT 1", (seq,)).fetchone()
        return row is not None

    def close(self) -> None:
        """Stop the pump and close the database."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._pump is not None:
            self._pump.join(5.0)
        with self._lock:
            self._db.close()
