"""The agent registry, fed payloads directly (no broker), with a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from edge_agent import protocol as p
from mesh.edge._dispatch import Dispatcher
from mesh.edge._records import EdgeRequestTimeoutError
from mesh.edge._registry import AgentRegistry
from mesh.edge._subscriptions import Subscriptions

T = p.Topics()


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self, *, fail: bool = False) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def record_health(self, agent_id: str, **fields: Any) -> None:
        if self.fail:
            raise OSError("disk full")
        self.records.append((agent_id, fields))


def _status(agent: str, state: str, **kw: Any) -> bytes:
    return p.AgentStatus(agent=agent, state=state, **kw).model_dump_json().encode()


def _heartbeat(
    agent: str, *, cpu: float = 10.0, period_s: float = 5.0, site: str | None = None
) -> bytes:
    host = p.HostMetrics(
        cpu_percent=cpu, mem_percent=20, mem_available_mb=100, rss_mb=50, load1=0, load5=0, load15=0
    )
    return (
        p.Heartbeat(agent=agent, site=site, period_s=period_s, host=host).model_dump_json().encode()
    )


def _event(event_id: str) -> bytes:
    return (
        p.Event(id=event_id, site="j1", stream="counts", data={"n": 1}).model_dump_json().encode()
    )


def _feed(registry: AgentRegistry, agent: str, leaf: str, payload: bytes) -> bool:
    return registry.handle_agent(agent, leaf, f"{T.prefix}/agents/{agent}/{leaf}", payload)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def registry(clock: FakeClock, sink: Sink) -> AgentRegistry:
    return AgentRegistry(
        metrics_ring=3, dedupe_window=2, health_sink=sink, name="gw-test", clock=clock
    )


# ------------------------------------------------------------------ agents


def test_status_sets_state_site_and_persists_health(
    registry: AgentRegistry, clock: FakeClock, sink: Sink
) -> None:
    assert registry.agent("cam-07") is None
    assert _feed(registry, "cam-07", "status", _status("cam-07", "online", site="j1"))
    view = registry.agent("cam-07")
    assert view is not None
    assert (view.state, view.site, view.status_received_at) == ("online", "j1", clock.now)
    assert view.health(clock.now) == "online"
    assert sink.records == [("cam-07", {"state": "online", "seen_at": clock.now})]

    clock.now += 1
    # The last will: offline, and the site is kept when the will carries none.
    assert _feed(registry, "cam-07", "status", _status("cam-07", "offline", reason="lost"))
    view = registry.agent("cam-07")
    assert view is not None and (view.state, view.site) == ("offline", "j1")
    assert view.health() == "offline"
    assert sink.records[-1] == ("cam-07", {"state": "offline", "seen_at": clock.now})


def test_heartbeats_fill_a_bounded_ring_and_persist_at_most_every_10_s(
    registry: AgentRegistry, clock: FakeClock, sink: Sink
) -> None:
    for cpu in range(5):
        clock.now += 4
        assert _feed(registry, "cam-07", "heartbeat", _heartbeat("cam-07", cpu=cpu, site="j2"))
    ring = registry.metrics("cam-07")
    assert [s.cpu_percent for s in ring] == [2, 3, 4]  # metrics_ring=3, oldest first
    assert [s.received_at for s in ring] == [1_012.0, 1_016.0, 1_020.0]
    view = registry.agent("cam-07")
    assert view is not None
    assert (view.site, view.last_heartbeat_at, view.state) == ("j2", clock.now, "unknown")
    # At 1004 (first), then 1016: 1008 and 1012 are under 10 s since the last one.
    persisted = [fields["heartbeat_at"] for _, fields in sink.records]
    assert persisted == [1_004.0, 1_016.0]
    assert sink.records[0][1]["metrics"]["cpu_percent"] == 0


def test_online_agent_goes_stale_after_three_silent_periods(
    registry: AgentRegistry, clock: FakeClock
) -> None:
    _feed(registry, "cam-07", "status", _status("cam-07", "online"))
    _feed(registry, "cam-07", "heartbeat", _heartbeat("cam-07", period_s=5.0))
    view = registry.agent("cam-07")
    assert view is not None
    assert view.health(clock.now + 15) == "online"
    assert view.health(clock.now + 15.1) == "stale"
    assert view.heartbeat_age_s(clock.now + 2) == 2


def test_observed_and_desired_states(registry: AgentRegistry) -> None:
    observed = p.ObservedState(agent="cam-07", version=3)
    assert _feed(registry, "cam-07", "observed", observed.model_dump_json().encode())
    desired = p.DesiredState(agent="cam-07", version=4)
    assert _feed(registry, "cam-07", "desired", desired.model_dump_json().encode())
    view = registry.agent("cam-07")
    assert view is not None and view.observed == observed and view.desired_version == 4
    registry.set_desired_version("cam-07", 5)
    view = registry.agent("cam-07")
    assert view is not None and view.desired_version == 5


def test_malformed_cleared_and_unknown_messages(registry: AgentRegistry, sink: Sink) -> None:
    assert not _feed(registry, "cam-07", "status", b"{not json")
    assert not _feed(registry, "cam-07", "heartbeat", _status("cam-07", "online"))
    assert registry.counters().malformed == 2
    assert _feed(registry, "cam-07", "status", b"")  # a cleared retained message
    assert _feed(registry, "cam-07", "logs", b"anything")  # not a registry leaf
    assert registry.agents() == [] and sink.records == []


def test_a_failing_health_sink_is_logged_not_raised(clock: FakeClock) -> None:
    registry = AgentRegistry(health_sink=Sink(fail=True), clock=clock)
    assert _feed(registry, "cam-07", "status", _status("cam-07", "online"))
    view = registry.agent("cam-07")
    assert view is not None and view.state == "online"


def test_agents_are_listed_by_id(registry: AgentRegistry) -> None:
    for agent in ["cam-09", "cam-01", "cam-05"]:
        _feed(registry, agent, "status", _status(agent, "online"))
    assert [v.agent_id for v in registry.agents()] == ["cam-01", "cam-05", "cam-09"]
    assert registry.metrics("nobody") == []


# ------------------------------------------------------------------ events


def test_events_are_deduplicated_within_the_window(registry: AgentRegistry) -> None:
    topic = T.events("j1", "counts")
    first = registry.accept_event(topic, _event("e1"))
    assert first is not None and first.id == "e1"
    assert registry.accept_event(topic, _event("e1")) is None
    assert registry.accept_event(topic, _event("e2")) is not None
    assert registry.accept_event(topic, _event("e3")) is not None  # window 2: e1 forgotten
    assert registry.accept_event(topic, _event("e1")) is not None
    assert registry.accept_event(topic, b"[]") is None
    counters = registry.counters()
    assert (counters.events, counters.duplicate_events, counters.malformed) == (4, 1, 1)


# ------------------------------------------------------------------ waiting


def test_wait_for_agent_wakes_on_a_change_from_another_thread(registry: AgentRegistry) -> None:
    feeder = threading.Thread(
        target=_feed, args=(registry, "cam-07", "status", _status("cam-07", "online"))
    )
    feeder.start()
    view = registry.wait_for_agent("cam-07", state="online", timeout_s=10)
    feeder.join()
    assert view.state == "online"


def test_waits_time_out_with_the_condition_in_the_error(registry: AgentRegistry) -> None:
    with pytest.raises(EdgeRequestTimeoutError, match=r"status=online on cam-07"):
        registry.wait_for_agent("cam-07", timeout_s=0.01)
    _feed(
        registry,
        "cam-07",
        "observed",
        p.ObservedState(agent="cam-07", version=1).model_dump_json().encode(),
    )
    with pytest.raises(EdgeRequestTimeoutError, match=r"observed>=2 on cam-07"):
        registry.wait_for_observed("cam-07", 2, timeout_s=0.01)
    assert registry.wait_for_observed("cam-07", 1, timeout_s=0.01).version == 1
    assert not registry.wait_until(lambda: False, 0.01)


def test_predicates_may_call_the_registry(registry: AgentRegistry) -> None:
    _feed(registry, "cam-07", "status", _status("cam-07", "online"))
    assert registry.wait_until(lambda: len(registry.agents()) == 1, 1.0)


# ------------------------------------------- as fed by the gateway's dispatcher


def _dispatcher(registry: AgentRegistry) -> tuple[Dispatcher, list[str]]:
    subscriptions = Subscriptions([], client=lambda: None)
    delivered: list[str] = []
    subscriptions.add(f"{T.prefix}/#", lambda topic, payload: delivered.append(topic))
    dispatcher = Dispatcher(prefix=T.prefix, registry=registry, subscriptions=subscriptions)
    return dispatcher, delivered


def test_dispatcher_feeds_the_registry_and_drops_malformed(registry: AgentRegistry) -> None:
    dispatcher, delivered = _dispatcher(registry)
    dispatcher.dispatch(T.status("cam-07"), _status("cam-07", "online"))
    dispatcher.dispatch(T.status("cam-08"), b"garbage")
    view = registry.agent("cam-07")
    assert view is not None and view.state == "online"
    assert delivered == [T.status("cam-07")]  # the malformed one reaches no handler
    stats = dispatcher.counters().stats(registry.counters())
    assert (stats.messages, stats.malformed) == (2, 1)


def test_dispatcher_calls_event_handlers_once_per_event(registry: AgentRegistry) -> None:
    dispatcher, delivered = _dispatcher(registry)
    seen: list[str] = []
    unsubscribe = dispatcher.on_event(lambda event: seen.append(event.id))

    def broken(event: p.Event) -> None:
        raise RuntimeError("handler bug")

    dispatcher.on_event(broken)
    topic = T.events("j1", "counts")
    for event_id in ["e1", "e1", "e2"]:
        dispatcher.dispatch(topic, _event(event_id))
    unsubscribe()
    dispatcher.dispatch(topic, _event("e3"))
    assert seen == ["e1", "e2"]
    assert delivered == [topic] * 3  # the duplicate is dropped before the bus handlers
    assert dispatcher.counters().handler_errors == 3
