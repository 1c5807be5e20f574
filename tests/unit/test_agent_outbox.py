"""Disk outbox: bounded (drop oldest, counted), ordered, persistent, replayed with ids."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_agent._outbox import Outbox, OutboxItem
from edge_agent._transport import PublishHandle


def test_drop_oldest_by_count_and_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_events=3)
    for i in range(5):
        box.put("t", b"%d" % i)
    assert [i.payload for i in box.peek(10)] == [b"2", b"3", b"4"]
    assert box.stats().dropped == 2 and box.stats().depth == 3
    box.close()

    box = Outbox(tmp_path / "b.db", max_events=100, max_bytes=2048)
    for _ in range(5):
        box.put("t", b"x" * 1000)
    assert box.stats().depth == 2 and box.stats().dropped == 3
    box.close()


def test_persists_order_seq_and_counters(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_events=2)
    seqs = [box.put("t", lambda seq: b"event-%d" % seq) for _ in range(3)]
    assert seqs == [1, 2, 3]
    box.ack(2)
    box.close()

    box = Outbox(tmp_path / "o.db", max_events=2)
    assert [(i.seq, i.payload) for i in box.peek(10)] == [(3, b"event-3")]
    assert box.stats().dropped == 1
    assert box.put("t", b"later") == 4  # sequence continues after a restart
    box.close()


class FakeLink:
    """Publishes into a list; acks on demand; can be offline."""

    def __init__(self) -> None:
        self.sent: list[OutboxItem] = []
        self.handles: list[PublishHandle] = []
        self.online = True
        self.auto_ack = True
        self.lock = threading.Lock()

    def publish(self, item: OutboxItem) -> PublishHandle | None:
        if not self.online:
            return None
        with self.lock:
            h = PublishHandle(len(self.sent))
            h.published = self.auto_ack
            self.sent.append(item)
            self.handles.append(h)
            return h


def wait(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_pump_publishes_in_order_and_deletes_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = FakeLink()
    for i in range(50):
        box.put("t", b"%d" % i)
    box.start_pump(link.publish, window=8)
    box.set_online(True)
    assert wait(lambda: box.stats().depth == 0)
    assert [i.payload for i in link.sent] == [b"%d" % i for i in range(50)]
    assert box.stats().delivered == 50
    box.close()


def test_pump_waits_offline_and_keeps_unacked(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    link = FakeLink()
    link.auto_ack = False
    box.start_pump(link.publish, window=4)
    box.put("t", b"a")
    time.sleep(0.1)
    assert link.sent == []  # not online yet
    box.set_online(True)
    for i in range(10):
        box.put("t", b"%d" % i)
    assert wait(lambda: len(link.sent) == 4)  # window of unacknowledged events
    time.sleep(0.1)
    assert len(link.sent) == 4
    with link.lock:
        for h in link.handles:
            h.published = True
    assert wait(lambda: len(link.sent) == 8)
    box.close()

    # A restart sends whatever was not acknowledged, in order.
    box = Outbox(tmp_path / "o.db")
    link2 = FakeLink()
    box.start_pump(link2.publish, window=64)
    box.set_online(True)
    assert wait(lambda: box.stats().depth == 0)
    assert [i.payload for i in link2.sent] == [b"%d" % i for i in range(3, 10)]
    box.close()
