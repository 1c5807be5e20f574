"""End-to-end acks: once the control plane confirms events, the outbox keeps each until then.

A broker's PUBACK is not enough (a Mosquitto killed with -9 before it saves
loses what it acknowledged): confirmed events are deleted, unconfirmed ones are
sent again after a reconnect, a timeout (an injected clock) or a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent import Agent, AgentSettings, MemoryBroker, MemoryTransport
from edge_agent._confirm import Confirmations
from edge_agent._outbox import Outbox, OutboxItem
from edge_agent._transport import Message, PublishHandle
from edge_agent.protocol import Event, EventAcks, Topics


class FakeLink:
    """Publishes into a list; the broker acknowledges at once unless ``auto_ack`` is off."""

    def __init__(self) -> None:
        self.sent: list[OutboxItem] = []
        self.handles: list[PublishHandle] = []
        self.auto_ack = True
        self.lock = threading.Lock()

    def publish(self, item: OutboxItem) -> PublishHandle | None:
        with self.lock:
            h = PublishHandle(len(self.sent))
            h.published = self.auto_ack
            self.sent.append(item)
            self.handles.append(h)
            return h

    def seqs(self) -> list[int]:
        with self.lock:
            return [i.seq for i in self.sent]

    def ack_all(self) -> None:
        with self.lock:
            for h in self.handles:
                h.published = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def pumped(
    path: Path, *, window: int = 8, clock: FakeClock | None = None
) -> tuple[Outbox, FakeLink]:
    box = Outbox(path, clock=clock or FakeClock())
    link = FakeLink()
    box.start_pump(link.publish, window=window)
    box.set_online(True)
    return box, link


def activate(box: Outbox, link: FakeLink) -> None:
    """The first event goes as before (deleted at PUBACK); its confirmation switches modes."""
    seq = box.put("t", b"first")
    assert wait(lambda: box.stats().depth == 0)
    box.confirmed([seq])
    assert wait(lambda: box._confirm.active)
    link.sent.clear()


def test_without_confirmations_events_go_at_puback_as_before(tmp_path: Path) -> None:
    box, link = pumped(tmp_path / "o.db")
    for i in range(5):
        box.put("t", b"%d" % i)
    assert wait(lambda: box.stats().delivered == 5)
    assert box.stats().depth == 0 and box.unconfirmed() == 0
    box.set_online(False)
    box.set_online(True)  # a reconnect resends nothing: nothing is kept
    box.put("t", b"later")
    assert wait(lambda: box.stats().delivered == 6)
    assert [i.payload for i in link.sent] == [b"0", b"1", b"2", b"3", b"4", b"later"]
    box.close()


def test_confirmed_mode_keeps_each_event_until_confirmed(tmp_path: Path) -> None:
    box, link = pumped(tmp_path / "o.db")
    activate(box, link)
    seqs = [box.put("t", b"%d" % i) for i in range(4)]
    assert wait(lambda: box.unconfirmed() == 4)  # the broker acknowledged them: kept
    assert box.stats().depth == 4 and box.stats().delivered == 1
    box.confirmed(seqs[:2])
    assert wait(lambda: box.stats().depth == 2)
    assert box.unconfirmed() == 2 and box.stats().delivered == 3
    box.confirmed(seqs[2:] + seqs[:1])  # a duplicate confirmation counts once
    assert wait(lambda: box.stats().depth == 0)
    assert box.stats().delivered == 5 and link.seqs() == seqs
    box.close()


def test_qos0_events_are_not_kept(tmp_path: Path) -> None:
    box, link = pumped(tmp_path / "o.db")
    activate(box, link)
    box.put("t", b"q0", qos=0)
    kept = box.put("t", b"q1", qos=1)
    assert wait(lambda: box.unconfirmed() == 1)
    assert box.stats().depth == 1 and [i.seq for i in box.peek(10)] == [kept]
    box.close()


def test_a_confirmation_before_the_puback_deletes_and_is_not_awaited_again(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    box, link = pumped(tmp_path / "o.db", clock=clock)
    activate(box, link)
    link.auto_ack = False
    seqs = [box.put("t", b"%d" % i) for i in range(3)]
    assert wait(lambda: len(link.sent) == 3)
    box.confirmed(seqs)  # the control plane was faster than the pump's PUBACK poll
    assert wait(lambda: box.stats().depth == 0)
    link.ack_all()
    assert wait(lambda: not box._inflight)
    assert box.unconfirmed() == 0  # the PUBACKs did not make them unconfirmed again
    clock.now += 3600
    box.set_online(False)
    box.set_online(True)
    last = box.put("t", b"after")  # once it is sent, the pump has passed both chances
    assert wait(lambda: link.seqs()[-1:] == [last])
    assert link.seqs() == [*seqs, last]
    box.close()


def test_the_unconfirmed_are_sent_again_in_order_after_a_reconnect(tmp_path: Path) -> None:
    box, link = pumped(tmp_path / "o.db")
    activate(box, link)
    seqs = [box.put("t", b"%d" % i) for i in range(3)]
    assert wait(lambda: box.unconfirmed() == 3)
    box.confirmed(seqs[:1])
    assert wait(lambda: box.unconfirmed() == 2)
    link.auto_ack = False
    waiting = box.put("t", b"no puback yet")
    assert wait(lambda: len(link.sent) == 4)
    box.set_online(False)  # e.g. the broker was killed with -9
    box.set_online(True)
    assert wait(lambda: len(link.sent) == 7)
    assert link.seqs()[4:] == [seqs[1], seqs[2], waiting]  # in order, the in-flight one too
    link.ack_all()
    box.confirmed([*seqs[1:], waiting])
    assert wait(lambda: box.stats().depth == 0)
    assert box.unconfirmed() == 0
    box.close()


def two_unconfirmed(tmp_path: Path) -> tuple[FakeClock, Outbox, FakeLink, tuple[int, int]]:
    """A confirmed-mode outbox (30 s timeout) holding two sent, unconfirmed events."""
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", clock=clock, confirm_timeout_s=30)
    link = FakeLink()
    box.start_pump(link.publish, window=8)
    box.set_online(True)
    activate(box, link)
    a, b = box.put("t", b"a"), box.put("t", b"b")
    assert wait(lambda: box.unconfirmed() == 2)
    return clock, box, link, (a, b)


def test_the_unconfirmed_are_sent_again_after_a_timeout_that_backs_off(tmp_path: Path) -> None:
    clock, box, link, (a, b) = two_unconfirmed(tmp_path)

    def sent_next(payload: bytes) -> int:
        """Put an event and wait until it is sent: the pump has looked at the clock since."""
        seq = box.put("t", payload)
        assert wait(lambda: link.seqs()[-1:] == [seq])
        return seq

    clock.now += 29
    c = sent_next(b"c")
    assert link.seqs() == [a, b, c]  # not yet
    assert wait(lambda: box.unconfirmed() == 3)
    clock.now += 1.5  # the oldest waited 30.5 s
    assert wait(lambda: link.seqs() == [a, b, c, a, b, c])
    assert wait(lambda: box.unconfirmed() == 3)
    clock.now += 59  # the timeout doubled to 60 s
    d = sent_next(b"d")
    assert link.seqs()[6:] == [d]
    clock.now += 1.5
    assert wait(lambda: link.seqs()[7:] == [a, b, c, d])
    box.confirmed([a, b, c, d])  # a confirmation: the timeout is 30 s again
    assert wait(lambda: box.stats().depth == 0)
    e = sent_next(b"e")
    assert wait(lambda: box.unconfirmed() == 1)
    clock.now += 31
    assert wait(lambda: link.seqs()[-2:] == [e, e])
    box.close()


def test_a_control_plane_confirming_late_stretches_the_timeout_instead_of_a_resend(
    tmp_path: Path,
) -> None:
    # Thousands of agents reconnecting at once: the control plane works through a
    # backlog and confirms 50 s late. Resending what it has queued would feed it.
    clock, box, link, (a, b) = two_unconfirmed(tmp_path)
    clock.now += 25
    box.confirmed([a])  # 25 s after it went out: within the timeout
    assert wait(lambda: box.unconfirmed() == 1)
    clock.now += 10  # b waited 35 s, past 30 s, but the control plane lags 25 s: 50 s
    c = box.put("t", b"c")
    assert wait(lambda: link.seqs()[-1:] == [c])
    assert link.seqs() == [a, b, c]  # nothing sent again
    clock.now += 16  # b waited 51 s: now it is sent again
    assert wait(lambda: link.seqs()[3:5] == [b, c])
    box.close()


def test_unconfirmed_events_are_sent_again_after_a_restart(tmp_path: Path) -> None:
    box, link = pumped(tmp_path / "o.db")
    activate(box, link)
    seqs = [box.put("t", b"%d" % i) for i in range(3)]
    assert wait(lambda: box.unconfirmed() == 3)
    box.confirmed(seqs[:1])
    assert wait(lambda: box.unconfirmed() == 2)
    box.close()

    box, link = pumped(tmp_path / "o.db")
    assert wait(lambda: box.stats().depth == 0)  # a new process: deleted at PUBACK first
    assert link.seqs() == seqs[1:]
    box.close()


def test_the_unconfirmed_are_bounded_and_the_pump_waits_past_the_bound(tmp_path: Path) -> None:
    box, link = pumped(tmp_path / "o.db", window=2)  # at most 16 * 2 unconfirmed
    activate(box, link)
    seqs = [box.put("t", b"%d" % i) for i in range(40)]
    assert wait(lambda: box.unconfirmed() == 32)
    time.sleep(0.2)  # the pump would have sent more by now
    assert link.seqs() == seqs[:32] and box.stats().depth == 40
    box.confirmed(seqs[:10])
    assert wait(lambda: box.stats().depth == 30 and len(link.sent) == 40)
    assert link.seqs() == seqs
    box.close()


def test_rewind_forgets_the_unconfirmed_that_were_dropped() -> None:
    clock = FakeClock()
    c = Confirmations(timeout_s=30, clock=clock)
    c.arrive([1])
    c.confirm(c.take(), inflight=set())
    for seq in (2, 3, 4):
        assert not c.on_puback(seq, qos=1)
    after = c.rewind([5], sent_upto=5, stored=lambda lo, hi: {3, 4, 5})
    assert after == 2 and len(c) == 2 and c.resend_upto == 5  # 2 was dropped over the bounds
    assert c.rewind([], sent_upto=5, stored=lambda lo, hi: set()) is None and len(c) == 0


# ------------------------------------------------------------------ the agent


def test_agent_confirms_its_outbox_from_event_acks_and_ignores_bad_ones(tmp_path: Path) -> None:
    topics = Topics()
    broker = MemoryBroker()
    settings = AgentSettings(
        id="cam-1", cache_dir=tmp_path, require_signature=False, heartbeat_period_s=60
    )
    agent = Agent(settings, transport=MemoryTransport(broker, "cam-1"))
    cp = MemoryTransport(broker, "cp")
    cp.start()
    try:
        agent.start()
        assert agent.wait_connected(5)
        ack_topic = topics.event_acks("cam-1")
        for bad in (b"not json", b'{"schema_version": 1, "kind": "event-acks", "seqs": []}'):
            agent._on_event_acks(Message(ack_topic, bad))  # logged, never raised
        assert not agent._outbox._confirm.active

        def body(seq: int) -> bytes:
            return Event(agent="cam-1", stream="x", seq=seq, ack=True).model_dump_json().encode()

        agent.emit("mesh/v1/events/s1/x", body, qos=1)
        assert wait(lambda: agent._outbox.stats().delivered == 1)  # at PUBACK: no acks yet
        cp.publish(ack_topic, EventAcks(seqs=[1]).model_dump_json().encode(), qos=0)
        assert wait(lambda: agent._outbox._confirm.active)
        seq = agent.emit("mesh/v1/events/s1/x", body, qos=1)
        assert wait(lambda: agent._outbox.unconfirmed() == 1)
        cp.publish(ack_topic, EventAcks(seqs=[seq]).model_dump_json().encode(), qos=0)
        assert wait(lambda: agent._outbox.stats().depth == 0)
        assert agent._outbox.stats().delivered == 2
    finally:
        agent.stop()
        cp.stop()
