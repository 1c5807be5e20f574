from __future__ import annotations

import math
import threading

import pytest

from mesh.core._metrics import CONTENT_TYPE, MetricsRegistry


def test_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    registry = MetricsRegistry()
    h = registry.histogram("lat_seconds", "Latency.", ("module", "node"), buckets=(0.001, 0.01))
    for value in (0.0005, 0.002, 0.003, 5.0):
        h.observe(value, "counter", "n1")
    lines = registry.render().splitlines()
    assert lines[:2] == ["# HELP lat_seconds Latency.", "# TYPE lat_seconds histogram"]
    assert 'lat_seconds_bucket{module="counter",node="n1",le="0.001"} 1' in lines
    assert 'lat_seconds_bucket{module="counter",node="n1",le="0.01"} 3' in lines
    assert 'lat_seconds_bucket{module="counter",node="n1",le="+Inf"} 4' in lines
    assert 'lat_seconds_count{module="counter",node="n1"} 4' in lines
    total = next(line for line in lines if line.startswith("lat_seconds_sum"))
    assert math.isclose(float(total.rsplit(" ", 1)[1]), 5.0055)
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_bucket_bounds_are_inclusive_upper_bounds() -> None:
    h = MetricsRegistry().histogram("x", "X.", buckets=(1.0, 2.0))
    h.observe(1.0)
    h.observe(2.0)
    assert h.snapshot().counts == [1, 1, 0]


def test_label_values_are_escaped() -> None:
    registry = MetricsRegistry()
    registry.counter("errors_total", "Errors.", ("reason",)).inc(1, 'bad "input"\\\n')
    assert 'errors_total{reason="bad \\"input\\"\\\\\\n"} 1' in registry.render()


def test_counter_and_gauge() -> None:
    registry = MetricsRegistry()
    c = registry.counter("requests_total", "Requests.", ("code",))
    c.inc(1, "200")
    c.inc(2, "200")
    assert c.value("200") == 3
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(-1, "200")
    g = registry.gauge("in_flight", "In flight.", ("module",))
    g.set(3, "a")
    g.add(-1, "a")
    assert g.value("a") == 2
    g.remove("a")
    assert g.value("a") == 0
    text = registry.render()
    assert "# TYPE requests_total counter" in text and 'requests_total{code="200"} 3' in text
    assert text.index("# TYPE in_flight") < text.index("# TYPE requests_total")  # sorted


def test_gauge_collector_is_read_at_render() -> None:
    registry = MetricsRegistry()
    state = {"online": 2.0}
    registry.gauge("agents", "Agents.", ("state",)).set_collector(
        lambda: [((k,), v) for k, v in state.items()]
    )
    assert 'agents{state="online"} 2' in registry.render()
    state["online"] = 5.0
    assert 'agents{state="online"} 5' in registry.render()


def test_quantile_estimates_and_windows() -> None:
    h = MetricsRegistry().histogram("q", "Q.", buckets=(0.001, 0.002, 0.004, 0.008))
    for _ in range(90):
        h.observe(0.0015)
    before = h.snapshot()
    for _ in range(10):
        h.observe(0.006)
    snap = h.snapshot()
    assert 0.001 <= (snap.quantile(0.5) or 0) <= 0.002
    assert 0.004 <= (snap.quantile(0.95) or 0) <= 0.008
    window = snap.minus(before)
    assert window.count == 10 and 0.004 <= (window.quantile(0.5) or 0) <= 0.008
    assert MetricsRegistry().histogram("e", "E.").snapshot().quantile(0.5) is None


def test_registration_is_idempotent_and_checked() -> None:
    registry = MetricsRegistry()
    a = registry.counter("c_total", "C.", ("x",))
    assert registry.counter("c_total", "C.", ("x",)) is a
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("c_total", "C.", ("x",))
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.counter("bad-name", "B.")
    with pytest.raises(ValueError, match="invalid label"):
        registry.histogram("h", "H.", ("le",))
    with pytest.raises(ValueError, match="takes labels"):
        a.inc(1)
    with pytest.raises(ValueError, match="increasing"):
        registry.histogram("h2", "H.", buckets=(2.0, 1.0))


def test_concurrent_observations_are_all_counted() -> None:
    h = MetricsRegistry().histogram("c", "C.", ("t",))

    def work() -> None:
        for _ in range(2000):
            h.observe(0.001, "x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.snapshot("x").count == 8000
