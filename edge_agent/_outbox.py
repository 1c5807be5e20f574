"""A disk-backed, bounded, ordered buffer of outgoing events (SQLite from the stdlib).

Every event goes through the outbox: it is stored first, then published in
order by a pump thread while the broker is reachable, and deleted once it is
delivered. Delivered means acknowledged by the control plane where the control
plane does that (:mod:`edge_agent._confirm`): a broker's PUBACK alone is not
enough, since a broker killed with -9 before it saves loses what it had
acknowledged but not yet passed on. Until the first such acknowledgement
arrives (an older control plane sends none), the broker's PUBACK (QoS 1)
counts as delivered. With the broker away, events accumulate on disk; past
``max_events`` or ``max_bytes`` the oldest are dropped and counted. After a
restart or a reconnect the rest are replayed in order. Delivery is
at-least-once: each event carries an ``id`` for deduplication.

Storage faults never stop the agent: a damaged file (it fails to open, or
``PRAGMA quick_check``) is moved aside (:func:`~edge_agent._quarantine.quarantine`)
and a fresh outbox starts. With the disk full (or a write failing), events are
held in memory instead (``in_memory``, ``full`` in the stats) and published
from there all the same; past 1024 events or 8 MiB the oldest of them are
dropped and counted in ``dropped``. Each later event first moves those held
back to disk, oldest first, so storing resumes, in order, once there is
space. Only those still held when the process ends are lost (logged).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._confirm import Confirmations
from ._quarantine import DamagedStoreError, is_corruption, is_disk_full, quarantine, quick_check
from ._sqlite import Schema, apply_schema
from ._supervisor import Supervisor
from .protocol import OutboxStats

__all__ = ["Outbox", "OutboxItem"]

logger = logging.getLogger(__name__)

_REMEDY = (
    "upgrade the agent (pip install -U 'fogmesh[edge]'), or move the file away to start "
    "with an empty outbox (its unsent events are then lost)"
)

_SPILL_EVENTS = 1024  # events held in memory at most while the disk is full
_SPILL_BYTES = 8 * 1024 * 1024

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
        self,
        path: Path,
        *,
        max_events: int = 10000,
        max_bytes: int = 64 * 1024 * 1024,
        confirm_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open (or create) the buffer at ``path``; a damaged file is moved aside first.

        ``confirm_timeout_s``: how long an event may wait for the control plane's
        acknowledgement before the unconfirmed are sent again (doubling per resend
        without one, up to 300 s). ``clock`` times that (injectable for tests).

        Raises:
            SchemaVersionError: a newer agent wrote the file (the message says what to do).
            sqlite3.Error: the file cannot be opened (and is not damaged: e.g. no access).
            OSError: a damaged file could not be moved aside.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        #: Where damaged files of this outbox were moved (by this process).
        self.quarantined: list[Path] = []
        try:
            self._db = self._open(path)
        except (sqlite3.DatabaseError, DamagedStoreError) as exc:
            if not is_corruption(exc):
                raise
            self.quarantined.append(quarantine(path, str(exc)))
            self._db = self._open(path)
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
        # Events the disk would not take (full), newest last; all newer than those on disk.
        self._spill: deque[OutboxItem] = deque()
        self._spill_bytes = 0
        self._max_spill = min(max_events, _SPILL_EVENTS)
        self._max_spill_bytes = min(max_bytes, _SPILL_BYTES)
        self._full = False  # the last write failed
        self._undeleted: set[int] = set()  # delivered, but the disk would not delete them
        self._wake = threading.Condition(self._lock)
        self._inflight: deque[tuple[int, int, Acked]] = deque()  # (seq, qos, handle), in order
        self._sent_upto = 0  # highest seq handed to the MQTT client since the last rewind
        self._confirm = Confirmations(timeout_s=confirm_timeout_s, clock=clock)
        self._reconnected = False  # online again since the pump last looked
        self._pump: threading.Thread | None = None
        self._stopping = False
        self._online = False
        self._last_drop_log = -1e9

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # A small write-ahead log: devices have small disks (1 MiB, not 4, between
            # checkpoints; truncated back to that after one).
            db.execute("PRAGMA wal_autocheckpoint=256")
            db.execute("PRAGMA journal_size_limit=1048576")
            quick_check(db, path)
            apply_schema(db, _SCHEMA, path=str(path), remedy=_REMEDY)
            # What the counters read first: damage there is found here, not later.
            db.execute("SELECT COUNT(*), SUM(LENGTH(payload)) FROM events").fetchone()
            db.execute("SELECT * FROM meta").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        try:
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        except sqlite3.Error as exc:  # disk full: the count is kept, and written next time
            logger.debug("outbox %s: %s not saved: %s", self.path, key, exc)

    # -------------------------------------------------------------- buffer

    def put(self, topic: str, payload: bytes | Callable[[int], bytes], qos: int = 1) -> int:
        """Append an event; drops the oldest when over the bounds. Returns its seq.

        ``payload`` may be a function of the event's sequence number, so that the
        event can carry it. Never raises for storage faults: an event the disk
        cannot take is held in memory (see the module's docstring).
        """
        with self._lock:
            self._seq += 1
            seq = self._seq
            if callable(payload):
                payload = payload(seq)
            item = OutboxItem(seq, topic, payload, qos)
            if self._spill:
                self._flush_spill()  # the older events first: the order holds
            if self._spill or not self._insert(item):
                self._hold(item)
            else:
                if self._full:  # those held in memory were all delivered meanwhile
                    self._stored_again()
                self._count += 1
                self._bytes += len(payload)
                try:
                    self._trim()
                except sqlite3.Error as exc:  # over a bound with the disk full: trim next time
                    logger.debug("outbox %s: not trimmed: %s", self.path, exc)
            self._wake.notify_all()
        return seq

    def _insert(self, item: OutboxItem) -> bool:
        """Write one event; False when the disk would not take it (logged once per episode)."""
        for attempt in (1, 2):
            try:
                self._db.execute(
                    "INSERT INTO events(seq, topic, payload, qos) VALUES(?, ?, ?, ?)",
                    (item.seq, item.topic, item.payload, item.qos),
                )
            except sqlite3.Error as exc:
                if attempt == 1 and is_disk_full(exc) and self._reclaim():
                    continue
                if not self._full:
                    self._full = True
                    what = "the disk is full" if is_disk_full(exc) else "the write failed"
                    logger.error(
                        "outbox %s: cannot store events (%s: %s): holding up to %d in memory, "
                        "dropping the oldest beyond",
                        self.path,
                        what,
                        exc,
                        self._max_spill,
                    )
                return False
            return True
        return False

    def _reclaim(self) -> bool:
        """Give the write-ahead log's space back (checkpoint, truncate); True if it shrank.

        On a small disk the log can fill it by itself before it is checkpointed.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            before = wal.stat().st_size
            if before == 0:
                return False
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return wal.stat().st_size < before
        except (OSError, sqlite3.Error) as exc:
            logger.debug("outbox %s: write-ahead log not reclaimed: %s", self.path, exc)
            return False

    def _hold(self, item: OutboxItem) -> None:
        """Keep an event the disk would not take in memory; over the bound, drop the oldest."""
        self._spill.append(item)
        self._spill_bytes += len(item.payload)
        dropped = 0
        while len(self._spill) > self._max_spill or (
            self._spill_bytes > self._max_spill_bytes and len(self._spill) > 1
        ):
            old = self._spill.popleft()
            self._spill_bytes -= len(old.payload)
            self._confirm.drop(old.seq)
            dropped += 1
        if dropped:
            self._dropped += dropped
            self._log_drops(dropped)

    def _flush_spill(self) -> None:
        """Move the events held in memory to disk, oldest first, while it takes them.

        In transactions of up to 64 events: one write-ahead-log frame per page
        touched, not per event, which matters on a disk that has just filled.
        """
        reclaimed = False
        while self._spill:
            batch = list(itertools.islice(self._spill, 64))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT INTO events(seq, topic, payload, qos) VALUES(?, ?, ?, ?)",
                        [(i.seq, i.topic, i.payload, i.qos) for i in batch],
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                if not reclaimed and is_disk_full(exc) and self._reclaim():
                    reclaimed = True
                    continue
                logger.debug("outbox %s: still cannot store events: %s", self.path, exc)
                return
            for item in batch:
                self._spill.popleft()
                self._spill_bytes -= len(item.payload)
                self._count += 1
                self._bytes += len(item.payload)
        if not self._spill and self._full:
            self._stored_again()

    def _stored_again(self) -> None:
        self._full = False
        self._set_meta("dropped", self._dropped)
        logger.warning(
            "outbox %s: storing events again (%d dropped in all)", self.path, self._dropped
        )

    def _trim(self) -> None:
        dropped = 0
        while self._count > self._max_events or (self._bytes > self._max_bytes and self._count > 1):
            row = self._db.execute(
                "SELECT seq, LENGTH(payload) FROM events ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM events WHERE seq = ?", (row[0],))
            self._confirm.drop(int(row[0]))
            self._count -= 1
            self._bytes -= int(row[1])
            dropped += 1
        if dropped:
            self._dropped += dropped
            self._set_meta("dropped", self._dropped)
            self._log_drops(dropped)

    def _log_drops(self, dropped: int) -> None:
        now = time.monotonic()
        if now - self._last_drop_log < 10.0:  # at most one line per 10 s while full
            return
        self._last_drop_log = now
        logger.warning(
            "outbox %s full (%d events, %d bytes max; %d in memory while the disk is full): "
            "dropped %d oldest, %d dropped in all",
            self.path,
            self._max_events,
            self._max_bytes,
            self._max_spill,
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
        items = [OutboxItem(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]
        for held in self._spill:  # all newer than the disk's
            if len(items) >= limit:
                break
            if held.seq > after:
                items.append(held)
        return items

    def ack(self, seq: int) -> None:
        """Forget a delivered event."""
        with self._lock:
            self._confirm.drop(seq)
            self._ack(seq)

    def confirmed(self, seqs: list[int]) -> None:
        """The control plane has handled these events: delete them (on the pump thread).

        Called on paho's network thread: it never blocks and never touches
        SQLite. The first call switches the outbox to keeping events until
        confirmed, for the rest of the process.
        """
        self._confirm.arrive(seqs)
        if self._lock.acquire(blocking=False):  # else the pump is busy; it polls anyway
            try:
                self._wake.notify_all()
            finally:
                self._lock.release()

    def unconfirmed(self) -> int:
        """Events the broker acknowledged and the control plane not yet (kept on disk)."""
        return len(self._confirm)

    def _ack(self, seq: int) -> None:
        if self._spill and self._spill[0].seq <= seq:
            for i, held in enumerate(self._spill):
                if held.seq == seq:
                    del self._spill[i]
                    self._spill_bytes -= len(held.payload)
                    self._delivered += 1
                    return
        row = self._db.execute("SELECT LENGTH(payload) FROM events WHERE seq = ?", (seq,))
        found = row.fetchone()
        if found is None:
            return  # dropped meanwhile
        self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
        self._count -= 1
        self._bytes -= int(found[0])
        self._delivered += 1

    def stats(self) -> OutboxStats:
        """Depth (held in memory included), dropped, delivered, held in memory, and "full"."""
        return OutboxStats(
            depth=self._count + len(self._spill),
            dropped=self._dropped,
            delivered=self._delivered,
            in_memory=len(self._spill),
            full=self._full,
        )

    # -------------------------------------------------------------- pump

    def start_pump(
        self, publish: PublishFn, *, window: int = 64, supervisor: Supervisor | None = None
    ) -> None:
        """Publish buffered events in order from a thread, ``window`` unacknowledged at most.

        An event handed to the MQTT client stays with it until the broker
        acknowledges it (the client resends it after a reconnect). Until the
        control plane confirms anything, the pump sends each event once per
        process; after that it also resends the unconfirmed ones after a
        reconnect or a timeout, and holds at most ``16 * window`` unconfirmed
        (then it waits). After a restart, whatever is still stored is sent
        again. The thread runs under ``supervisor`` (its own if None): if it
        fails it is started again.
        """
        self._confirm.limit = 16 * window
        sup = supervisor or Supervisor()
        self._pump = sup.spawn("outbox-pump", lambda: self._run_pump(publish, window))

    def set_online(self, online: bool) -> None:
        """Tell the pump whether the broker is reachable."""
        with self._lock:
            if online and not self._online:
                self._reconnected = True  # the pump resends the unconfirmed (if any)
            self._online = online
            self._wake.notify_all()

    def _ready(self, window: int) -> bool:
        return (
            self._online
            and len(self._inflight) < window
            and self._confirm.may_send(self._sent_upto, len(self._inflight))
            and self._count + len(self._spill) > len(self._inflight)
            and self._has_after(self._sent_upto)
        )

    def _poll_s(self) -> float:
        if self._inflight:
            return 0.02  # acks are polled: cheap, and never deadlock
        if self._confirm.waiting():
            return 0.1  # confirmations to apply (their notify may miss), timeouts to watch
        return 1.0

    def _run_pump(self, publish: PublishFn, window: int) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopping:
                        return
                    self._settle()
                    if self._ready(window):
                        break
                    self._wake.wait(self._poll_s())
                room = self._confirm.room(self._sent_upto, len(self._inflight))
                batch = self._peek(min(window - len(self._inflight), room), self._sent_upto)
            for item in batch:
                handle = publish(item)
                if handle is None:
                    break
                with self._lock:
                    self._inflight.append((item.seq, item.qos, handle))
                    self._sent_upto = item.seq

    def _settle(self) -> None:
        """Collect PUBACKs, apply confirmations, and plan a resend when one is due."""
        done = self._collect_acks()
        seqs = self._confirm.take()
        if seqs:
            inflight = {seq for seq, _, _ in self._inflight}
            for seq in self._confirm.confirm(seqs, inflight):
                done += self._delete(seq)
        if done:
            self._set_meta("delivered", self._delivered)
        reconnected, self._reconnected = self._reconnected, False
        if not self._confirm.active:
            return
        if reconnected:
            self._rewind("the broker is back")
        elif self._confirm.due() and self._rewind("no confirmation in time"):
            logger.info(
                "outbox %s: next resend after %.0f s without confirmation",
                self.path,
                self._confirm.backoff(),
            )

    def _rewind(self, why: str) -> bool:
        """Send the unconfirmed (and those awaiting a PUBACK) again, in order."""
        inflight = [seq for seq, _, _ in self._inflight]
        self._inflight.clear()  # the MQTT client may resend these too: duplicates are dropped
        after = self._confirm.rewind(inflight, self._sent_upto, self._stored)
        if after is None:
            return False
        logger.info(
            "outbox %s: sending events again from seq %d, %d unconfirmed (%s)",
            self.path,
            after + 1,
            len(self._confirm),
            why,
        )
        self._sent_upto = after
        return True

    def _stored(self, lo: int, hi: int) -> set[int]:
        rows = self._db.execute("SELECT seq FROM events WHERE seq BETWEEN ? AND ?", (lo, hi))
        found = {int(r[0]) for r in rows}
        found.update(i.seq for i in self._spill if lo <= i.seq <= hi)
        return found

    def _delete(self, seq: int) -> int:
        """Delete a delivered event (1), or note it for later when the disk fails (0)."""
        try:
            self._ack(seq)
        except sqlite3.Error as exc:  # disk full: delivered, deleted once it can be
            logger.debug("outbox %s: ack of %d not saved: %s", self.path, seq, exc)
            self._undeleted.add(seq)
            return 0
        return 1

    def _collect_acks(self) -> int:
        done = 0
        for seq in sorted(self._undeleted):  # acknowledged while the disk was full
            try:
                self._ack(seq)
            except sqlite3.Error:
                break
            self._undeleted.discard(seq)
        while self._inflight and self._inflight[0][2].is_published():
            seq, qos, _ = self._inflight.popleft()
            if self._confirm.on_puback(seq, qos):
                self._delete(seq)
                done += 1
        return done

    def _has_after(self, seq: int) -> bool:
        if self._spill and self._spill[-1].seq > seq:
            return True
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
            self._flush_spill()
            if self._spill:
                logger.error(
                    "outbox %s: %d event(s) held in memory are lost (the disk is still full)",
                    self.path,
                    len(self._spill),
                )
            self._db.close()
