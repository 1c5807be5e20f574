"""Flood limits (issue 19): token buckets per agent, what is dropped or deferred, the reports."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from edge_agent import protocol as p
from mesh.cli._agents import AgentHealth, fault_summary
from mesh.core._metrics import MetricsRegistry
from mesh.dashboard._agents import describe_agent
from mesh.edge._bus import EdgeBus
from mesh.edge._dispatch import Dispatcher
from mesh.edge._flood import FloodGuard, FloodLimits
from mesh.edge._registry import AgentRegistry
from mesh.edge._subscriptions import Subscriptions

T = p.Topics()


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _heartbeat(agent: str) -> bytes:
    host = p.HostMetrics(
        cpu_percent=1, mem_percent=2, mem_available_mb=100, rss_mb=50, load1=0, load5=0, load15=0
    )
    return p.Heartbeat(agent=agent, period_s=1.0, host=host).model_dump_json().encode()


def _event(agent: str | None, n: int) -> bytes:
    return (
        p.Event(id=f"{agent}-{n}", agent=agent, site="j1", stream="counts")
        .model_dump_json()
        .encode()
    )


# ----------------------------------------------------------------- the buckets


def test_a_bucket_takes_its_burst_then_its_rate() -> None:
    clock = FakeClock()
    guard = FloodGuard(FloodLimits(heartbeat_per_s=2.0, heartbeat_burst=3), clock=clock)

    assert [guard.admit("heartbeat", "a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back at 2/s
    assert [guard.admit("heartbeat", "a") for _ in range(2)] == [True, False]
    clock.now += 100.0  # refills up to the burst, not past it
    assert sum(guard.admit("heartbeat", "a") for _ in range(10)) == 3


def test_buckets_are_per_agent_and_per_kind() -> None:
    guard = FloodGuard(
        FloodLimits(heartbeat_per_s=1.0, heartbeat_burst=1, events_per_s=1.0, events_burst=2),
        clock=FakeClock(),
    )

    assert guard.admit("heartbeat", "a")
    assert not guard.admit("heartbeat", "a")
    assert guard.admit("heartbeat", "b")  # another agent is untouched
    assert guard.admit("events", "a") and guard.admit("events", "a")  # and another kind
    assert not guard.admit("events", "a")


@pytest.mark.parametrize(
    ("field", "value"),
    [("heartbeat_per_s", 0.0), ("events_burst", 0), ("deferred_max", -1), ("max_reported", 0)],
)
def test_limits_refuse_a_rate_or_bound_not_positive(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"FloodLimits\.{field}: expected a number > 0"):
        FloodLimits(**{field: value})  # type: ignore[arg-type]


# ----------------------------------------------------------------- reporting


def test_reports_count_per_agent_and_keep_only_the_most_recent() -> None:
    guard = FloodGuard(FloodLimits(max_reported=2), clock=FakeClock(), wall=lambda: 5.0)
    guard.dropped("heartbeat", "a")
    guard.dropped("heartbeat", "a")
    guard.deferred("events", "a")
    guard.dropped("events", "b")
    guard.dropped("heartbeat", "c")  # a third agent: "a", limited longest ago, goes

    assert guard.report("a") is None
    assert [r.agent_id for r in guard.reports()] == ["b", "c"]
    guard.deferred("events", "b")
    b = guard.report("b")
    assert b is not None
    assert (b.dropped, b.deferred, b.limited, b.last_at) == ({"events": 1}, 1, 2, 5.0)


def test_a_limited_agent_is_one_warning_per_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    guard = FloodGuard(FloodLimits(report_every_s=60.0), clock=clock)
    caplog.set_level(logging.WARNING, logger="mesh.edge._flood")

    for _ in range(500):
        guard.dropped("heartbeat", "bad")
    guard.dropped("heartbeat", "other")
    assert [r.getMessage().split(" sends")[0] for r in caplog.records] == [
        "gateway gateway: agent bad",
        "gateway gateway: agent other",
    ]
    clock.now += 61.0
    guard.dropped("heartbeat", "bad")
    assert len(caplog.records) == 3
    assert "since start 501 heartbeat dropped" in caplog.records[-1].getMessage()


def test_limited_agents_are_a_bounded_metric() -> None:
    metrics = MetricsRegistry()
    guard = FloodGuard(FloodLimits(max_reported=3), clock=FakeClock())
    guard.expose(metrics)
    for i in range(10):
        guard.dropped("heartbeat", f"a{i}")
    guard.deferred("events", "a9")

    lines = [x for x in metrics.render().splitlines() if x.startswith("mesh_edge_flood_limited{")]
    assert len(lines) == 4, lines  # three agents, one of them with two kinds
    assert 'mesh_edge_flood_limited{agent="a9",kind="events_deferred"} 1.0' in lines
    assert 'mesh_edge_flood_limited{agent="a9",kind="heartbeat_dropped"} 1.0' in lines


# ----------------------------------------------------------------- the dispatcher


def _dispatcher(guard: FloodGuard) -> tuple[Dispatcher, AgentRegistry, list[str]]:
    registry = AgentRegistry()
    seen: list[str] = []
    subs = Subscriptions([], client=lambda: None)
    dispatcher = Dispatcher(prefix=T.prefix, registry=registry, subscriptions=subs, flood=guard)
    dispatcher.on_event(lambda e: seen.append(e.id))
    return dispatcher, registry, seen


def test_heartbeats_over_the_rate_are_dropped_before_the_queue() -> None:
    guard = FloodGuard(FloodLimits(heartbeat_per_s=1.0, heartbeat_burst=5), clock=FakeClock())
    dispatcher, registry, _ = _dispatcher(guard)
    for _ in range(100):
        dispatcher.put(T.heartbeat("bad"), _heartbeat("bad"))
    dispatcher.put(T.heartbeat("good"), _heartbeat("good"))
    dispatcher.put(
        T.status("bad"), p.AgentStatus(agent="bad", state="online").model_dump_json().encode()
    )

    assert dispatcher._inbox.qsize() == 5 + 1 + 1  # the status is never limited
    dispatcher.start()
    dispatcher.stop()
    good, bad = registry.agent("good"), registry.agent("bad")
    assert good is not None and good.last_heartbeat is not None
    assert bad is not None and bad.state == "online"
    assert len(registry.metrics("bad")) == 5
    report = guard.report("bad")
    assert report is not None and report.dropped == {"heartbeat": 95}
    assert guard.report("good") is None


def test_events_over_the_rate_wait_behind_the_others_in_order() -> None:
    limits = FloodLimits(events_per_s=1.0, events_burst=2)
    guard = FloodGuard(limits, clock=FakeClock())
    dispatcher, _, seen = _dispatcher(guard)
    topic = T.events("j1", "counts")
    for n in range(5):
        dispatcher.put(topic, _event("bad", n))
    dispatcher.put(topic, _event("good", 0))
    dispatcher.put(topic, _event("bad", 1))  # a replayed duplicate: still counted once

    dispatcher.start()
    dispatcher.stop()  # handles what is queued, the deferred lane too

    assert seen == ["bad-0", "bad-1", "good-0", "bad-2", "bad-3", "bad-4"]
    report = guard.report("bad")
    assert report is not None and report.deferred == 4 and report.dropped == {}


def test_events_past_the_deferred_bound_are_dropped_and_counted() -> None:
    limits = FloodLimits(events_per_s=1.0, events_burst=1, deferred_max=2)
    guard = FloodGuard(limits, clock=FakeClock())
    dispatcher, registry, seen = _dispatcher(guard)
    topic = T.events("j1", "counts")
    for n in range(6):
        dispatcher.dispatch(topic, _event(None, n))  # no agent: limited by its site

    assert seen == ["None-0"]
    report = guard.report("site:j1")
    assert report is not None and report.deferred == 2 and report.dropped == {"events": 3}
    assert registry.counters().events == 1  # dropped ones were never remembered


# ----------------------------------------------------------------- where it shows


def test_the_bus_flags_a_limited_agent_in_its_listing() -> None:
    bus = EdgeBus("mqtt://127.0.0.1:1", flood=FloodLimits(heartbeat_per_s=1.0, heartbeat_burst=1))
    for agent in ("bad", "bad", "good"):
        message = SimpleNamespace(
            topic=T.heartbeat(agent), payload=_heartbeat(agent), properties=None
        )
        bus._on_message(None, None, message)
    bus._dispatcher.start()
    bus._dispatcher.stop()

    views = {v.agent_id: v for v in bus.agents()}
    assert views["good"].flood is None
    flood = views["bad"].flood
    assert flood is not None and flood.dropped == {"heartbeat": 1}
    assert bus.agent("bad") == views["bad"]
    assert describe_agent(views["bad"])["flood"]["dropped"] == {"heartbeat": 1}
    assert describe_agent(views["good"])["flood"] is None


def test_the_agents_listing_says_an_agent_floods() -> None:
    row = AgentHealth("a", None, True, "online", 1.0, None, None, None, "live", limited=1234)

    assert fault_summary(row) == "flooding: 1234 messages over its rate"


def test_the_bus_serves_its_counters_and_its_limited_agents() -> None:
    from mesh.edge._bus_metrics import expose_bus

    bus = EdgeBus("mqtt://127.0.0.1:1", flood=FloodLimits(heartbeat_per_s=1.0, heartbeat_burst=1))
    metrics = MetricsRegistry()
    expose_bus(metrics, bus)
    for agent in ("bad", "bad"):
        message = SimpleNamespace(
            topic=T.heartbeat(agent), payload=_heartbeat(agent), properties=None
        )
        bus._on_message(None, None, message)
    message = SimpleNamespace(topic=T.events("j1", "s"), payload=_event("good", 1), properties=None)
    bus._on_message(None, None, message)
    bus._dispatcher.start()
    bus._dispatcher.stop()

    text = metrics.render()
    assert 'mesh_edge_bus_messages{kind="events"} 1.0' in text
    assert 'mesh_edge_bus_messages{kind="messages"} 2.0' in text  # the dropped one never came in
    assert 'mesh_edge_flood_limited{agent="bad",kind="heartbeat_dropped"} 1.0' in text
