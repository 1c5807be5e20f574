"""The control plane's end-to-end acknowledgements of events, on the dispatcher (no MQTT).

Who is acknowledged (the agent known at the event's site, events that asked),
when (after the handlers, batched, duplicates too), and in how many messages.
"""

from __future__ import annotations

import json

import pytest

from edge_agent import protocol as p
from mesh.edge._dispatch import Dispatcher
from mesh.edge._event_acks import EventAckBatcher
from mesh.edge._flood import FloodGuard, FloodLimits
from mesh.edge._registry import AgentRegistry
from mesh.edge._subscriptions import Subscriptions

T = p.Topics()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _online(registry: AgentRegistry, agent: str, site: str) -> None:
    status = p.AgentStatus(agent=agent, state="online", site=site)
    registry.handle_agent(agent, "status", T.status(agent), status.model_dump_json().encode())


def _event(agent: str, seq: int, *, ack: bool = True, site: str = "j1") -> bytes:
    event = p.Event(id=f"{agent}-{seq}", agent=agent, site=site, stream="counts", seq=seq, ack=ack)
    return event.model_dump_json().encode()


class Bed:
    """A dispatcher with a batcher whose sends are recorded, and a handler log."""

    def __init__(self, flood: FloodGuard | None = None) -> None:
        self.clock = FakeClock()
        self.registry = AgentRegistry()
        self.log: list[str] = []  # handler calls and sends, in order
        self.sent: list[tuple[str, list[int]]] = []
        self.acks = EventAckBatcher(
            T, self._send, self.registry.site_of, max_delay_s=0.05, clock=self.clock
        )
        self.dispatcher = Dispatcher(
            prefix=T.prefix,
            registry=self.registry,
            subscriptions=Subscriptions([], client=lambda: None),
            flood=flood,
            acks=self.acks,
        )
        self.dispatcher.on_event(lambda e: self.log.append(f"handled {e.id}"))

    def _send(self, topic: str, payload: bytes) -> None:
        message = p.parse_json(payload, p.EventAcks)
        self.sent.append((topic, list(message.seqs)))
        self.log.append(f"acked {topic.split('/')[-2]} {list(message.seqs)}")


def test_events_are_acknowledged_per_agent_after_their_handlers_ran() -> None:
    bed = Bed()
    _online(bed.registry, "cam-1", "j1")
    _online(bed.registry, "cam-2", "j2")
    for seq in (1, 2, 3):
        bed.dispatcher.dispatch(T.events("j1", "counts"), _event("cam-1", seq))
    bed.dispatcher.dispatch(T.events("j2", "counts"), _event("cam-2", 7, site="j2"))
    assert bed.sent == []  # batched: nothing sent in the middle of the messages
    bed.acks.flush()

    assert sorted(bed.sent) == [
        (T.event_acks("cam-1"), [1, 2, 3]),
        (T.event_acks("cam-2"), [7]),
    ]
    assert bed.log.index("acked cam-1 [1, 2, 3]") > bed.log.index("handled cam-1-3")
    assert bed.acks.acked == 4 and not bed.acks.pending


def test_a_duplicate_is_acknowledged_again_but_handled_once() -> None:
    bed = Bed()
    _online(bed.registry, "cam-1", "j1")
    for _ in range(2):  # the first acknowledgement was lost: the agent sent it again
        bed.dispatcher.dispatch(T.events("j1", "counts"), _event("cam-1", 5))
        bed.acks.flush()

    assert bed.log == ["handled cam-1-5", "acked cam-1 [5]", "acked cam-1 [5]"]


@pytest.mark.parametrize(
    ("agent", "site", "ack", "why"),
    [
        ("cam-1", "j1", False, "the event did not ask (an older agent)"),
        ("stranger", "j1", True, "no agent of that id is known"),
        ("cam-1", "j9", True, "the agent is known at another site than the topic's"),
    ],
)
def test_no_acknowledgement_when(agent: str, site: str, ack: bool, why: str) -> None:
    bed = Bed()
    _online(bed.registry, "cam-1", "j1")
    bed.dispatcher.dispatch(T.events(site, "counts"), _event(agent, 1, ack=ack, site=site))
    bed.acks.flush()

    assert bed.log == [f"handled {agent}-1"], why
    assert bed.sent == []
    assert bed.acks.refused == (1 if ack else 0)


def test_the_dispatcher_thread_sends_when_idle_and_when_the_oldest_is_due() -> None:
    bed = Bed()
    _online(bed.registry, "cam-1", "j1")
    topic = T.events("j1", "counts")
    bed.dispatcher.put(topic, _event("cam-1", 1))
    bed.dispatcher.start()
    bed.dispatcher.stop()  # handles what is queued, then flushes
    assert bed.sent == [(T.event_acks("cam-1"), [1])]

    busy = Bed()
    _online(busy.registry, "cam-1", "j1")
    busy.dispatcher.dispatch(topic, _event("cam-1", 1))
    assert not busy.acks.due()
    busy.clock.now += 0.06
    assert busy.acks.due()  # the loop flushes after the message it is handling


def test_a_batch_over_the_limit_goes_in_several_messages() -> None:
    bed = Bed()
    _online(bed.registry, "cam-1", "j1")
    for seq in range(1, p.MAX_ACKED_SEQS + 11):
        bed.dispatcher.dispatch(T.events("j1", "counts"), _event("cam-1", seq))
    bed.acks.flush()

    assert [len(seqs) for _, seqs in bed.sent] == [p.MAX_ACKED_SEQS, 10]
    assert [s for _, seqs in bed.sent for s in seqs] == list(range(1, p.MAX_ACKED_SEQS + 11))


def test_events_dropped_over_the_agents_rate_are_acknowledged_not_resent() -> None:
    guard = FloodGuard(FloodLimits(events_per_s=1.0, events_burst=1, deferred_max=1))
    bed = Bed(flood=guard)
    _online(bed.registry, "cam-1", "j1")
    for seq in (1, 2, 3):  # 1 handled, 2 deferred, 3 dropped
        bed.dispatcher.dispatch(T.events("j1", "counts"), _event("cam-1", seq))
    bed.acks.flush()

    assert bed.log == ["handled cam-1-1", "acked cam-1 [1, 3]"]
    report = guard.report("cam-1")
    assert report is not None and report.dropped == {"events": 1}


def test_a_send_that_fails_is_not_counted() -> None:
    registry = AgentRegistry()
    _online(registry, "cam-1", "j1")

    def offline(topic: str, payload: bytes) -> None:
        raise RuntimeError("not connected")

    acks = EventAckBatcher(T, offline, registry.site_of)
    event = p.parse_json(_event("cam-1", 1), p.Event)
    assert acks.add(T.events("j1", "counts"), event)
    acks.flush()
    assert (acks.acked, acks.pending) == (0, False)  # the agent's timeout resends it


def test_the_message_is_the_contract_s_event_acks() -> None:
    sent: list[bytes] = []
    registry = AgentRegistry()
    _online(registry, "cam-1", "j1")
    acks = EventAckBatcher(T, lambda t, payload: sent.append(payload), registry.site_of)
    acks.add(T.events("j1", "x"), p.parse_json(_event("cam-1", 9), p.Event))
    acks.flush()
    body = json.loads(sent[0])
    assert (body["kind"], body["seqs"], body["schema_version"]) == ("event-acks", [9], 1)
