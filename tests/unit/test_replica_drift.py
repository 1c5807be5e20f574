"""Replicas' drift summaries: the lease that gates them, ``GET /drift``, and the feed.

The summaries are :class:`~edge_agent._drift_stats.DriftStats`' (shared with
agents); a replica computes them only while a reader keeps asking, and the
control plane's :class:`ReplicaDriftFeed` hands each window to the drift service
under the route's tier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.protocol._reports import DriftSummary, ValueMoments
from mesh.core._metrics import MetricsRegistry
from mesh.runtime._drift import DriftService, expose_drift
from mesh.runtime._replica_drift import HttpDriftReader, ReplicaDriftFeed
from mesh.sdk._specs import Drift
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint, RouteTable
from mesh.serving.replica._drift import LEASE_S, ReplicaDrift
from mesh.serving.replica._server import serve_asgi
from tests.unit.test_drift import Clock, FakeBus, Lineage, Registry, Version, spec
from tests.unit.test_replica_server import call, infer, make_app


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.agent_fixtures import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", scale=3.0)


def test_a_replica_summarises_only_while_a_reader_keeps_asking() -> None:
    clock = Clock()
    drift = ReplicaDrift("v2", "x", clock=clock)
    x, y = {"x": np.full((2, 4), 5.0)}, {"y": np.full((2, 1), 15.0)}
    drift.observe(x, y)  # nobody asked: skipped
    assert not drift.active and drift.take() is None
    assert drift.active
    drift.observe(x, y)
    drift.observe({"other": np.ones((1, 4))}, y)  # no first input: its outputs still count
    window = drift.take()
    assert window is not None and window["version"] == "v2"
    assert window["inputs"]["count"] == 2 and window["inputs"]["mean"] == 5.0
    assert window["outputs"]["y"]["count"] == 4  # two rows a run
    clock.now += LEASE_S + 1  # the reader stopped asking: the lease ran out
    assert not drift.active
    drift.observe(x, y)
    assert drift.take() is None


def test_get_drift_takes_the_window_of_what_the_model_ran(tiny: Path) -> None:
    app = make_app(tiny)
    try:
        x = np.full((1, 4), 2.0, dtype=np.float32)
        assert infer(app, {"x": x}).status_code == 200  # before any read: not summarised
        first = asyncio.run(call(app, "GET", "/drift"))
        assert first.status_code == 200 and first.json() == {"summary": None}
        for value in (1.0, 3.0):
            assert infer(app, {"x": np.full((1, 4), value, dtype=np.float32)}).status_code == 200
        summary = DriftSummary.model_validate(
            asyncio.run(call(app, "GET", "/drift")).json()["summary"]
        )
        assert summary.version == "v1" and summary.inputs.count == 2
        assert summary.inputs.mean == pytest.approx(2.0)
        assert summary.outputs["y"].mean == pytest.approx(6.0)  # y = 3x
        assert asyncio.run(call(app, "GET", "/drift")).json() == {"summary": None}  # taken
    finally:
        app.close()


@pytest.fixture
def keyed(tiny: Path) -> Iterator[ReplicaEndpoint]:
    app = make_app(tiny, key="k" * 32)
    server = serve_asgi(app, port=0)
    try:
        yield ReplicaEndpoint("r1", "n1", server.host, server.port, "v1", key="k" * 32)
    finally:
        server.stop()
        app.close()


def test_the_http_reader_sends_the_replica_key(keyed: ReplicaEndpoint) -> None:
    reader = HttpDriftReader()
    assert reader.read(keyed, 2.0) is None  # the first read starts the lease
    no_key = ReplicaEndpoint("r1", "n1", keyed.host, keyed.port, "v1")
    assert reader.read(no_key, 2.0) is None  # 401: nothing
    gone = ReplicaEndpoint("r1", "n1", "127.0.0.1", 9, "v1")
    assert reader.read(gone, 0.5) is None  # no answer: nothing


class FakeReader:
    def __init__(self, mean: float) -> None:
        self.mean = mean
        self.read_from: list[str] = []

    def read(self, endpoint: ReplicaEndpoint, timeout_s: float) -> DriftSummary | None:
        self.read_from.append(endpoint.replica_id)
        return DriftSummary(
            version=endpoint.version,
            inputs=ValueMoments(count=10, mean=self.mean, m2=0.0),
            outputs={"counts": ValueMoments(count=10, mean=self.mean, m2=0.0)},
        )


def test_the_feed_scores_a_replica_served_module_under_its_tier() -> None:
    bus, clock = FakeBus(), Clock()
    reference = {"drift_reference": {"outputs": {"mean": 2.0, "std": 0.5}}}
    service = DriftService(
        bus, Registry({"v1": Version("v1", None, Lineage(reference))}), clock=clock
    )
    routes = RouteTable()
    replicas = [ReplicaEndpoint(f"r{i}", "n1", "127.0.0.1", 1, "v1") for i in (1, 2)]
    routes.set("counter", "v1", [replicas[0], AgentEndpoint("cam-1", "v1")], tier="fog")
    routes.set_standby("counter", [replicas[1]])
    routes.set("untracked", "v1", [ReplicaEndpoint("r9", "n1", "127.0.0.1", 1, "v1")])
    reader = FakeReader(mean=4.0)  # 4 std over the reference
    feed = ReplicaDriftFeed(routes, service, reader=reader)
    assert feed.poll() == 0  # nothing tracked: no replica is asked (none summarises)
    service.track(
        spec(Drift(statistic="outputs", threshold=3.0, min_samples=20, output="counts")),
        version="v1",
        event_topics=[],
    )
    clock.now += 1
    assert feed.poll() == 2 and reader.read_from == ["r1", "r2"]  # endpoints and standby
    (fired,) = service.evaluate()
    assert fired["site"] == "fog" and fired["samples"] == 20
    assert fired["score"] == pytest.approx(4.0)
    metrics = MetricsRegistry()
    expose_drift(metrics, service)
    assert 'mesh_module_drift_score{module="counter",site="fog"} 4.0' in metrics.render()


def test_a_module_tracked_on_live_error_is_not_read() -> None:
    service = DriftService(FakeBus(), Registry({}), clock=Clock())
    service.track(
        spec(Drift(statistic="error", threshold=2.0, labels="traffic/{site}/truth")),
        version="v1",
        event_topics=[],
    )
    routes = RouteTable()
    routes.set("counter", "v1", [ReplicaEndpoint("r1", "n1", "127.0.0.1", 1, "v1")])
    reader = FakeReader(mean=1.0)
    assert ReplicaDriftFeed(routes, service, reader=reader).poll() == 0
    assert reader.read_from == [] and service.summarised() == []


class Switch:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def set_drift_stats(self, module: str, on: bool) -> list[str]:
        self.calls.append((module, on))
        if module == "broken":
            raise RuntimeError("broker gone")
        return []


def test_the_service_turns_agents_summaries_on_for_what_it_tracks() -> None:
    switch = Switch()
    service = DriftService(FakeBus(), Registry({}), clock=Clock(), installer=switch)
    service.track(spec(Drift(statistic="outputs", threshold=3.0)), version="v1", event_topics=[])
    service.untrack("counter")
    service.track(
        spec(Drift(statistic="error", threshold=2.0, labels="traffic/{site}/truth")),
        version="v1",
        event_topics=[],
    )
    assert switch.calls == [("counter", True), ("counter", False), ("counter", False)]
    broken = spec(Drift(statistic="inputs", threshold=3.0)).model_copy(update={"name": "broken"})
    service.track(broken, version="v1", event_topics=[])  # the switch fails: tracked all the same
    assert service.summarised() == ["broken"]


def test_each_version_is_scored_against_its_own_reference_for_the_canary() -> None:
    """DriftService.version_score: what a canary compares for a module without labels."""
    bus, clock = FakeBus(), Clock()
    old = {"drift_reference": {"outputs": {"mean": 2.0, "std": 0.5}}}
    new = {"drift_reference": {"outputs": {"mean": 4.2, "std": 0.5}}}
    registry = Registry(
        {"v1": Version("v1", None, Lineage(old)), "v2": Version("v2", None, Lineage(new))}
    )
    service = DriftService(bus, registry, clock=clock)
    check = Drift(statistic="outputs", threshold=3.0, min_samples=5, output="counts")
    service.track(spec(check), version="v1", event_topics=[])
    for site, version in (("j1", "v1"), ("j2", "v2"), ("fog", "v2")):
        summary = DriftSummary(
            version=version,
            inputs=ValueMoments(count=10, mean=4.0, m2=0.0),
            outputs={"counts": ValueMoments(count=10, mean=4.0, m2=0.0)},
        )  # the world moved: outputs near 4 everywhere
        service.add_summary("counter", site, summary)
    since = clock.now - 1
    v1 = service.version_score("counter", since=since, version="v1")
    v2 = service.version_score("counter", since=since, version="v2")
    assert (v1.n, v1.mae) == (10, pytest.approx(4.0))  # 4 std from the old reference
    assert (v2.n, v2.mae) == (20, pytest.approx(0.4))  # agents' and replicas' alike
    at_j2 = service.version_score("counter", since=since, site="j2", version="v2")
    assert at_j2.n == 10
    assert service.version_score("counter", since=clock.now + 1, version="v2").mae is None
    assert service.version_score("other", since=since, version="v1").n == 0


def test_the_feed_reads_a_candidate_replica_on_canary_too() -> None:
    """Its window is the candidate's drift score: the canary's measure without labels."""
    service = DriftService(FakeBus(), Registry({}), clock=Clock())
    service.track(
        spec(Drift(statistic="outputs", threshold=3.0, output="counts")),
        version="v1",
        event_topics=[],
    )
    routes = RouteTable()
    routes.set("counter", "v1", [ReplicaEndpoint("r1", "n1", "127.0.0.1", 1, "v1")], tier="fog")
    routes.set_canary("counter", [ReplicaEndpoint("c1", "n1", "127.0.0.1", 2, "v2")], 0.25)
    reader = FakeReader(mean=4.0)
    assert ReplicaDriftFeed(routes, service, reader=reader).poll() == 2
    assert reader.read_from == ["r1", "c1"]
    window = service.version_score("counter", since=0.0, version="v2")
    assert window.n == 10
