from __future__ import annotations

import math
import threading

import pytest
from prometheus_client import REGISTRY

from mesh.core._metrics import CONTENT_TYPE, MetricsRegistry
from tests.support.metrics import sample


def test_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    registry = MetricsRegistry()
    h = registry.histogram("lat_seconds", "Latency.", ("module", "node"), buckets=(0.001, 0.01))
    for value in (0.0005, 0.002, 0.003, 5.0):
        h.labels("counter", "n1").observe(value)
    text = registry.render()
    assert text.splitlines()[:2] == ["# HELP lat_seconds Latency.", "# TYPE lat_seconds histogram"]
    series = {"module": "counter", "node": "n1"}
    assert sample(text, "lat_seconds_bucket", **series, le="0.001") == 1
    assert sample(text, "lat_seconds_bucket", **series, le="0.01") == 3
    assert sample(text, "lat_seconds_bucket", **series, le="+Inf") == 4
    assert sample(text, "lat_seconds_count", **series) == 4
    assert math.isclose(sample(text, "lat_seconds_sum", **series) or 0, 5.0055)
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_bucket_bounds_are_inclusive_upper_bounds() -> None:
    registry = MetricsRegistry()
    h = registry.histogram("x", "X.", buckets=(1.0, 2.0))
    h.observe(1.0)
    h.observe(2.0)
    assert registry.snapshot(h).counts == [1, 1, 0]


def test_label_values_are_escaped() -> None:
    registry = MetricsRegistry()
    registry.counter("errors_total", "Errors.", ("reason",)).labels('bad "input"\\\n').inc()
    assert 'errors_total{reason="bad \\"input\\"\\\\\\n"} 1.0' in registry.render()


def test_counter_and_gauge() -> None:
    registry = MetricsRegistry()
    c = registry.counter("requests_total", "Requests.", ("code",))
    c.labels("200").inc()
    c.labels("200").inc(2)
    with pytest.raises(ValueError, match="non-negative"):
        c.labels("200").inc(-1)
    g = registry.gauge("in_flight", "In flight.", ("module",))
    g.labels("a").set(3)
    g.labels("a").dec()
    g.labels("b").set(1)
    text = registry.render()
    assert "# TYPE requests_total counter" in text
    assert sample(text, "requests_total", code="200") == 3
    assert sample(text, "in_flight", module="a") == 2
    g.remove("b")  # a replica that is gone
    assert sample(registry.render(), "in_flight", module="b") is None


def test_no_created_series_and_no_global_registry() -> None:
    registry = MetricsRegistry()
    registry.counter("once_total", "Once.").inc()
    registry.histogram("h_seconds", "H.").observe(0.1)
    text = registry.render()
    assert "_created" not in text
    assert sample(text, "once_total") == 1 and sample(text, "h_seconds_count") == 1
    # Two registries with the same names stay apart, and the library's default is untouched.
    other = MetricsRegistry()
    other.counter("once_total", "Once.")
    assert sample(other.render(), "once_total") == 0
    assert REGISTRY.get_sample_value("once_total") is None


def test_gauge_callback_is_read_at_render() -> None:
    registry = MetricsRegistry()
    state = {"online": 2.0}
    calls: list[int] = []

    def read() -> list[tuple[tuple[str, ...], float]]:
        calls.append(1)
        return [((k,), v) for k, v in state.items()]

    registry.gauge_callback("agents", "Agents.", ("state",), read)
    assert not calls  # registering does not read
    assert sample(registry.render(), "agents", state="online") == 2
    state["online"] = 5.0
    assert sample(registry.render(), "agents", state="online") == 5
    registry.gauge_callback("wrong", "W.", ("a", "b"), lambda: [(("x",), 1.0)])
    with pytest.raises(ValueError, match=r"wrong takes labels \['a', 'b'\], got \['x'\]"):
        registry.render()


def test_per_scrape_reads_a_shared_source_once_a_render() -> None:
    registry = MetricsRegistry()
    source = {"agents": ["a-1", "a-2"]}
    reads: list[int] = []

    class Edge:
        def agents(self) -> list[str]:
            reads.append(1)
            return list(source["agents"])

    edge = Edge()
    # Two places ask for the same bound method: they share one read.
    count, first = registry.per_scrape(edge.agents), registry.per_scrape(edge.agents)
    registry.gauge_callback("n_agents", "Agents.", (), lambda: [((), len(count()))])
    registry.gauge_callback("first_agent", "First.", ("agent",), lambda: [((first()[0],), 1.0)])
    text = registry.render()
    assert sample(text, "n_agents") == 2 and sample(text, "first_agent", agent="a-1") == 1
    assert len(reads) == 1
    source["agents"] = ["a-3"]  # the next scrape reads again
    text = registry.render()
    assert sample(text, "n_agents") == 1 and sample(text, "first_agent", agent="a-3") == 1
    assert len(reads) == 2
    assert count() == ["a-3"] and count() == ["a-3"] and len(reads) == 4  # outside: afresh


def test_render_of_some_names_reads_only_those() -> None:
    registry = MetricsRegistry()
    read: list[str] = []

    def gauge(name: str) -> None:
        registry.gauge_callback(name, "G.", (), lambda: read.append(name) or [((), 1.0)])

    gauge("agents_up")
    gauge("agents_age")
    latency = registry.histogram("lat_seconds", "L.", buckets=(0.1,))
    latency.observe(0.05)
    registry.counter("calls_total", "C.").inc()
    text = registry.render(["agents_up"])
    assert read == ["agents_up"]  # the other gauge was not walked
    assert sample(text, "agents_up") == 1 and "agents_age" not in text
    text = registry.render(["lat_seconds_count", "calls_total"])  # a histogram by its series
    assert sample(text, "lat_seconds_count") == 1 and sample(text, "calls_total") == 1
    assert "agents" not in text and "_created" not in text
    assert registry.render(["nothing_by_this_name"]) == ""
    read.clear()
    registry.render()  # no names: everything
    assert read == ["agents_up", "agents_age"]


def test_a_failed_render_keeps_nothing_after_it() -> None:
    registry = MetricsRegistry()
    values = iter([[((), 1.0)], [((), 2.0)]])
    shared = registry.per_scrape(lambda: next(values))
    registry.gauge_callback("read_once", "R.", (), shared)
    registry.gauge_callback("bad", "B.", ("a",), lambda: [((), 1.0)])
    with pytest.raises(ValueError, match="bad takes labels"):
        registry.render()
    assert shared() == [((), 2.0)]  # outside a render: read afresh, not the failed one's


def test_quantile_estimates_and_windows() -> None:
    registry = MetricsRegistry()
    h = registry.histogram("q", "Q.", ("module",), buckets=(0.001, 0.002, 0.004, 0.008))
    for _ in range(90):
        h.labels("m").observe(0.0015)
    h.labels("other").observe(5.0)
    before = registry.snapshot(h, "m")
    for _ in range(10):
        h.labels("m").observe(0.006)
    snap = registry.snapshot(h, "m")
    assert snap.count == 100 and math.isclose(snap.total, 90 * 0.0015 + 10 * 0.006)
    assert 0.001 <= (snap.quantile(0.5) or 0) <= 0.002
    assert 0.004 <= (snap.quantile(0.95) or 0) <= 0.008
    window = snap.minus(before)
    assert window.count == 10 and 0.004 <= (window.quantile(0.5) or 0) <= 0.008
    assert registry.snapshot(h, "never").quantile(0.5) is None
    empty = MetricsRegistry()
    assert empty.snapshot(empty.histogram("e", "E.")).quantile(0.5) is None
    with pytest.raises(ValueError, match=r"takes labels \['module'\], got \[\]"):
        registry.snapshot(h)
    with pytest.raises(ValueError, match="not a histogram of this registry"):
        empty.snapshot(h, "m")


def test_registration_is_idempotent_and_checked() -> None:
    registry = MetricsRegistry()
    a = registry.counter("c_total", "C.", ("x",))
    assert registry.counter("c_total", "C.", ("x",)) is a
    with pytest.raises(ValueError, match="already registered as a counter"):
        registry.gauge("c_total", "C.", ("x",))
    with pytest.raises(ValueError, match="invalid metric name 'bad-name': expected letters"):
        registry.gauge("bad-name", "B.")
    with pytest.raises(ValueError, match="invalid counter name 'requests': expected a name"):
        registry.counter("requests", "R.")
    with pytest.raises(ValueError, match=r"invalid label names for h: \['le'\]"):
        registry.histogram("h", "H.", ("le",))
    with pytest.raises(ValueError, match="Incorrect label count"):
        a.labels()
    with pytest.raises(ValueError, match="Buckets not in sorted order"):
        registry.histogram("h2", "H.", buckets=(2.0, 1.0))


def test_concurrent_observations_are_all_counted() -> None:
    registry = MetricsRegistry()
    h = registry.histogram("c", "C.", ("t",))

    def work() -> None:
        for _ in range(2000):
            h.labels("x").observe(0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.snapshot(h, "x").count == 8000
