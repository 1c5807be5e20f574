"""Failed requests trigger the placement controller as an SLO miss does.

A request the gateway failed (a 5xx, a timeout) reaches the monitors as
``observe(..., ok=False)``: no latency sample, but over any SLO. A module whose
requests fail where it serves must move, like one that is slow there.
"""

from __future__ import annotations

import math

from tests.unit.test_placement_controller import AGENT, FOG, world


def test_observed_p95_counts_failures_as_slower_than_any_answer() -> None:
    from mesh.control._snapshot import observed_p95

    assert observed_p95(20, 0, 12.0) == 12.0
    assert observed_p95(20, 1, 12.0) == 12.0  # the failure is the slowest: above the p95
    assert math.isinf(observed_p95(20, 2, 12.0))  # two reach the 95th rank
    assert math.isinf(observed_p95(5, 5, math.nan))
    assert math.isnan(observed_p95(0, 0, math.nan))


def test_requests_failing_on_the_current_node_move_the_module() -> None:
    w = world()
    w.controller.step()
    w.advance(2.5)  # past the window since the module was placed
    assert w.served_on() == AGENT
    for _ in range(20):
        w.monitors.observe("counter", AGENT, 5.0, False)  # e.g. timed out at the agent
    result = w.controller.step()
    [record] = result.migrations
    assert record.to_node == FOG and w.served_on() == FOG
    assert "20 of 20 requests failed" in record.reason, record.reason


def test_failures_pinned_on_no_node_count_against_the_current_node() -> None:
    w = world()
    w.controller.step()
    w.advance(2.5)
    w.load(AGENT, ms=3.0, n=10)  # answered within the SLO
    for _ in range(10):
        w.monitors.observe("counter", "", 0.5, False)  # no endpoint could be reached
    [record] = w.controller.step().migrations
    assert record.to_node == FOG and "10 of 20 requests failed" in record.reason


def test_a_failure_within_the_tail_is_no_trigger() -> None:
    w = world()
    w.controller.step()
    w.advance(2.5)
    w.load(AGENT, ms=3.0, n=39)
    w.monitors.observe("counter", AGENT, 5.0, False)  # 1 of 40: under the 5 % tail
    result = w.controller.step()
    assert not result.migrations and w.served_on() == AGENT
    assert not any("failed" in t for t in result.triggers), result.triggers
