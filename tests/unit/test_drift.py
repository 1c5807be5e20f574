"""Drift detection: scores, references, the latch, and the service over a fake bus."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import Event, Heartbeat, HostMetrics, ModuleStats, json_tensor
from edge_agent.protocol import Tensor as WireTensor
from edge_agent.protocol._reports import DriftSummary, ValueMoments
from mesh.control._drift import (
    DriftLatch,
    DriftReference,
    Moments,
    MomentWindow,
    ReferenceStats,
    moment_score,
)
from mesh.core._metrics import MetricsRegistry
from mesh.core._topics import topic_matches
from mesh.models._fresh_data import FreshData
from mesh.runtime._drift import DriftService, expose_drift
from mesh.runtime._fresh_data import FreshDataService
from mesh.sdk._specs import Drift, ModuleSpec, QoS, drift_topic
from mesh.sdk._triggers import TriggerSpec

# ------------------------------------------------------------------ pure parts


def test_moments_merge_as_numpy_would() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=n) for n in (5, 1, 17)]
    total = Moments()
    for p in parts:
        total = total.merge(Moments(p.size, float(p.mean()), float(((p - p.mean()) ** 2).sum())))
    every = np.concatenate(parts)
    assert total.count == every.size
    assert total.mean == pytest.approx(every.mean())
    assert total.m2 / total.count == pytest.approx(every.var())


def test_reference_from_lineage_and_metric() -> None:
    extra = {
        "drift_reference": {
            "outputs": {"mean": 2.0, "std": 0.5},
            "inputs": {"mean": "x", "std": 1.0},  # malformed: left out
            "by_output": {"counts": {"mean": 3.0, "std": 1.0}, "bad": 4},
        }
    }
    ref = DriftReference.from_version(extra, (0.7, "min"))
    assert ref.outputs == ReferenceStats(2.0, 0.5) and ref.inputs is None and ref.error == 0.7
    assert ref.stats_for("outputs", "counts") == ReferenceStats(3.0, 1.0)
    assert ref.stats_for("outputs", None) == ReferenceStats(2.0, 0.5)
    # An accuracy (mode max) is no error; the recorded error wins over the metric.
    assert DriftReference.from_version({}, (0.9, "max")).error is None
    given = {"drift_reference": {"error": 0.25}}
    assert DriftReference.from_version(given, (0.7, "min")).error == 0.25
    assert DriftReference.from_version({"drift_reference": [1]}) == DriftReference()


def test_score_of_a_constant_reference_is_finite() -> None:
    score = moment_score(Moments(3, 1.5, 0.0), ReferenceStats(1.0, 0.0))
    assert score is not None and 1e5 < score < float("inf")
    assert moment_score(Moments(), ReferenceStats(1.0, 1.0)) is None


def test_latch_fires_once_rearms_below_80_percent_or_on_a_new_version() -> None:
    latch = DriftLatch()

    def update(score: float | None, version: str = "v1", samples: int = 30) -> bool:
        return latch.update("j1", version, score, samples=samples, threshold=2.0, min_samples=20)

    assert not update(5.0, samples=19)  # too few samples
    assert update(2.0)
    assert latch.drifting("j1")
    assert not update(3.0) and not update(1.7)  # 1.7 >= 0.8 x 2: still drifting
    assert latch.drifting("j1")
    assert not update(1.5)  # re-armed
    assert not latch.drifting("j1")
    assert update(2.5)
    assert update(2.5, version="v2")  # the new version is judged afresh
    latch.forget([])
    assert not latch.drifting("j1")


def test_moment_window_by_version_and_time() -> None:
    w = MomentWindow(max_summaries=3)
    for i in range(4):
        w.add(float(i), "v1" if i < 3 else "v2", Moments(1, float(i), 0.0), {})
    assert w.moments("inputs", None, since=0.0, version="v1").count == 2  # bounded: 3 kept
    assert w.moments("inputs", None, since=0.0, version="v2").mean == 3.0
    assert w.latest_version() == "v2"
    w.prune(3.0)
    assert w.moments("inputs", None, since=0.0, version=None).count == 1


# ------------------------------------------------------------------ the service


@dataclass
class FakeBus:
    prefix: str = "mesh/v1"
    handlers: list[tuple[str, Callable[[str, bytes], None]]] = field(default_factory=list)
    event_handlers: list[Callable[[Event], None]] = field(default_factory=list)
    published: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)

    def subscribe(
        self, pattern: str, handler: Callable[[str, bytes], None], *, timeout_s: float = 5.0
    ) -> Callable[[], None]:
        entry = (pattern, handler)
        self.handlers.append(entry)
        return lambda: self.handlers.remove(entry)

    def patterns(self) -> list[str]:
        return [pattern for pattern, _ in self.handlers]

    def on_event(self, handler: Callable[[Event], None]) -> Callable[[], None]:
        self.event_handlers.append(handler)
        return lambda: self.event_handlers.remove(handler)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        self.published.append((topic, json.loads(payload), qos))

    def deliver(self, topic: str, payload: bytes) -> None:
        for pattern, handler in list(self.handlers):
            if topic_matches(pattern, topic):
                handler(topic, payload)

    def event(self, event: Event) -> None:
        for handler in list(self.event_handlers):
            handler(event)


@dataclass(frozen=True)
class Metric:
    value: float
    mode: str = "min"


@dataclass(frozen=True)
class Lineage:
    extra: dict[str, Any]


@dataclass(frozen=True)
class Version:
    version: str
    metric: Metric | None
    lineage: Lineage
    stage: str = "production"


class Registry:
    def __init__(self, versions: dict[str, Version]) -> None:
        self.versions = versions
        self.asked: list[str] = []

    def get(self, name: str, ref: str = "production") -> Version:
        self.asked.append(ref)
        if ref == "production":
            ref = "v1"
        if ref not in self.versions:
            raise LookupError(f"{name}@{ref} not registered")
        return self.versions[ref]


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def spec(drift: Drift) -> ModuleSpec:
    return ModuleSpec(
        name="counter", model="vehicle-counter", qos=QoS(p95_latency_ms=50), drift=drift
    )


def event(site: str, ts: float, counts: list[float], version: str = "v1") -> Event:
    tensor = WireTensor.from_numpy("counts", np.asarray([counts], dtype=np.float32))
    return Event(
        site=site,
        stream="counts",
        module="counter",
        version=version,
        source_ts=ts,
        outputs={"counts": json_tensor(tensor)},
    )


def label(site: str, ts: float, values: list[float]) -> bytes:
    return json.dumps({"site": site, "ts": ts, "values": values}).encode()


@pytest.fixture
def setup() -> tuple[FakeBus, Clock, DriftService]:
    bus, clock = FakeBus(), Clock()
    registry = Registry(
        {
            "v1": Version("v1", Metric(0.5), Lineage({})),
            "v2": Version("v2", Metric(1.0), Lineage({})),
        }
    )
    service = DriftService(bus, registry, clock=clock)
    drift = Drift(
        statistic="error", threshold=2.0, window_s=60, min_samples=5, labels="traffic/{site}/truth"
    )
    service.track(
        spec(drift),
        version="production",
        event_topics=["mesh/v1/events/+/counts"],
        sites={"a1": "j1", "a2": "j2"},
    )
    return bus, clock, service


def feed(bus: FakeBus, clock: Clock, site: str, error: float, n: int, version: str = "v1") -> None:
    for _ in range(n):
        clock.now += 0.5
        ts = clock.now - 3  # the frame, 3 s before its label arrives
        bus.event(event(site, ts, [2.0 + error, 1.0], version))
        bus.deliver(f"traffic/{site}/truth", label(site, ts, [2.0, 1.0 + error]))


def test_error_scores_per_site(setup: tuple[FakeBus, Clock, DriftService]) -> None:
    bus, clock, service = setup
    assert "traffic/+/truth" in bus.patterns()
    feed(bus, clock, "j1", 0.5, 10)  # MAE 0.5 = the reference: score 1
    feed(bus, clock, "j2", 1.5, 10)  # score 3
    assert [e["site"] for e in service.evaluate()] == ["j2"]
    scores = {s.site: s for s in service.scores()}
    assert scores["j1"].score == pytest.approx(1.0) and scores["j1"].samples == 10
    assert scores["j1"].version == "v1" and not scores["j1"].drifting
    assert scores["j2"].score == pytest.approx(3.0)


def test_scores_reach_the_threshold(setup: tuple[FakeBus, Clock, DriftService]) -> None:
    bus, clock, service = setup
    feed(bus, clock, "j2", 1.5, 4)
    assert service.evaluate() == []  # 4 of 5 samples
    (j1,) = [s for s in service.scores() if s.site == "j1"]
    assert j1.score is None and j1.reason == "no samples"
    feed(bus, clock, "j2", 1.5, 1)
    (fired,) = service.evaluate()
    assert fired["site"] == "j2" and fired["score"] == pytest.approx(3.0)
    assert set(fired) == {
        "module",
        "model",
        "version",
        "site",
        "statistic",
        "score",
        "threshold",
        "samples",
        "window_s",
        "ts",
    }
    topic, body, qos = bus.published[-1]
    assert topic == "lifecycle/drift/counter" == service.event_topic("counter")
    assert body == fired and qos == 1
    assert service.evaluate() == []  # once per drift
    assert [s.drifting for s in service.scores() if s.site == "j2"] == [True]
    clock.now += 61  # the window empties, then the error is back to normal: re-armed
    feed(bus, clock, "j2", 0.1, 10)
    assert service.evaluate() == []
    clock.now += 61
    feed(bus, clock, "j2", 1.5, 10)
    assert [e["site"] for e in service.evaluate()] == ["j2"]
    assert len(bus.published) == 2


def test_labels_and_drift_events_are_on_the_topics_as_declared(
    setup: tuple[FakeBus, Clock, DriftService], tmp_path: Path
) -> None:
    """Not under the bus's prefix: where the fresh-data service reads the same labels,
    the traffic plugin publishes them, and a trigger on drift_topic() listens."""
    bus, _, service = setup
    fresh = FreshDataService(bus, FreshData(tmp_path))
    fresh.track(spec(Drift(statistic="error", threshold=2.0, labels="traffic/{site}/truth")))
    labels = [p for p in bus.patterns() if p.endswith("/truth")]
    assert labels == ["traffic/+/truth", "traffic/+/truth"]  # drift's and fresh data's
    assert service.event_topic("counter") == drift_topic("counter")
    assert TriggerSpec(name="retrain", function="retrain", topic=drift_topic("counter")).topic == (
        service.event_topic("counter")
    )
    fresh.untrack("counter")


def test_a_new_version_is_scored_against_its_own_reference(
    setup: tuple[FakeBus, Clock, DriftService],
) -> None:
    bus, clock, service = setup
    feed(bus, clock, "j1", 1.5, 10, version="v1")
    assert len(service.evaluate()) == 1
    feed(bus, clock, "j1", 1.5, 10, version="v2")  # v2's reference error is 1.0
    assert len(service.evaluate()) == 0
    (j1,) = [s for s in service.scores() if s.site == "j1"]
    assert j1.version == "v2" and j1.score == pytest.approx(1.5) and not j1.drifting
    assert service.live_errors.window("counter", since=0.0, version="v2").n == 10


def test_a_candidate_beside_production_fires_no_drift_event() -> None:
    """The canary judges it: a drift event would retrain while the trial runs."""
    bus, clock = FakeBus(), Clock()
    registry = Registry(
        {
            "v1": Version("v1", Metric(0.5), Lineage({})),
            "v2": Version("v2", Metric(0.5), Lineage({}), stage="candidate"),
        }
    )
    service = DriftService(bus, registry, clock=clock)
    check = Drift(statistic="error", threshold=2.0, min_samples=5, labels="traffic/{site}/truth")
    service.track(spec(check), version="production", event_topics=["mesh/v1/events/+/counts"])
    feed(bus, clock, "j1", 1.5, 10, version="v2")  # score 3 on the candidate
    assert service.evaluate() == [] and bus.published == []
    (j1,) = service.scores()
    assert j1.version == "v2" and j1.score == pytest.approx(3.0)
    feed(bus, clock, "j2", 1.5, 10, version="v1")  # production drifts: that one fires
    assert [e["site"] for e in service.evaluate()] == ["j2"]


def test_tracking_again_keeps_what_was_seen(setup: tuple[FakeBus, Clock, DriftService]) -> None:
    bus, clock, service = setup
    feed(bus, clock, "j1", 1.5, 10)
    assert len(service.evaluate()) == 1
    drift = Drift(statistic="error", threshold=2.5, min_samples=5, labels="traffic/{site}/truth")
    service.track(spec(drift), version="v1")  # every event under the prefix naming it
    assert bus.patterns().count("traffic/+/truth") == 1  # the old one undone
    assert service.live_errors.window("counter", since=0.0).n == 10
    feed(bus, clock, "j1", 1.5, 2)
    assert service.evaluate() == []  # still in drift: not fired again
    assert [s.drifting for s in service.scores() if s.site == "j1"] == [True]
    assert [(s.site, s.threshold) for s in service.scores()] == [("j1", 2.5)]  # the new check


def test_bad_labels_are_dropped_with_one_log_line(
    setup: tuple[FakeBus, Clock, DriftService], caplog: pytest.LogCaptureFixture
) -> None:
    bus, clock, service = setup
    caplog.set_level(logging.WARNING, logger="mesh.runtime._drift")
    for _ in range(3):
        bus.deliver("traffic/j1/truth", b'{"site": "j1", "ts": "soon", "values": [1]}')
    bus.deliver("traffic/j1/truth", b"not json")
    bus.deliver("traffic/j1/truth", b'{"site": "j1", "ts": 1.0, "values": [true]}')
    lines = [r.getMessage() for r in caplog.records if "bad label" in r.getMessage()]
    # Three times the same fault: one line (the next different one says it repeated).
    assert len([m for m in lines if m.endswith("(finite Unix seconds), got 'soon'")]) == 1
    assert len(lines) == 3 and "repeated 2 times" in lines[1]
    assert all("expected" in m for m in lines) and "values: expected" in lines[2]
    # Events of other modules, and without a capture time, are not scored.
    other = event("j1", clock.now, [1.0]).model_copy(update={"module": "other"})
    bus.event(other)
    bus.event(event("j1", clock.now, [1.0]).model_copy(update={"source_ts": None}))
    assert service.live_errors.window("counter", since=0.0).n == 0


def test_untrack_and_stop_undo_the_subscriptions(
    setup: tuple[FakeBus, Clock, DriftService],
) -> None:
    bus, _clock, service = setup
    service.untrack("counter")
    assert "traffic/+/truth" not in bus.patterns() and service.tracked() == []
    service.stop()
    assert bus.event_handlers == []
    with pytest.raises(ValueError, match="no drift check"):
        service.track(
            ModuleSpec(name="m", model="m", qos=QoS(p95_latency_ms=5)),
            version="v1",
            event_topics=[],
        )


def heartbeat(agent: str, site: str | None, mean: float, n: int, version: str = "v1") -> bytes:
    summary = DriftSummary(
        version=version,
        inputs=ValueMoments(count=n, mean=mean, m2=0.0),
        outputs={"counts": ValueMoments(count=n, mean=mean * 2, m2=0.0)},
    )
    host = HostMetrics(
        cpu_percent=1, mem_percent=1, mem_available_mb=1, rss_mb=1, load1=0, load5=0, load15=0
    )
    beat = Heartbeat(
        agent=agent, site=site, host=host, modules={"counter": ModuleStats(summary=summary)}
    )
    return beat.model_dump_json().encode()


def test_output_drift_from_heartbeat_summaries() -> None:
    bus, clock = FakeBus(), Clock()
    reference = {"drift_reference": {"outputs": {"mean": 2.0, "std": 0.5}, "inputs": None}}
    service = DriftService(
        bus, Registry({"v1": Version("v1", None, Lineage(reference))}), clock=clock
    )
    service.track(
        spec(Drift(statistic="outputs", threshold=3.0, min_samples=20, output="counts")),
        version="v1",
        event_topics=[],
        sites={"a2": "j2"},
    )
    beats = "mesh/v1/agents/+/heartbeat"
    assert beats in bus.patterns()
    for _ in range(3):
        clock.now += 5
        bus.deliver("mesh/v1/agents/a1/heartbeat", heartbeat("a1", "j1", 1.0, 10))  # 2.0: 0
        bus.deliver("mesh/v1/agents/a2/heartbeat", heartbeat("a2", None, 2.0, 10))  # 4.0: 4 std
    (fired,) = service.evaluate()
    assert fired["site"] == "j2" and fired["samples"] == 30 and fired["statistic"] == "outputs"
    assert fired["score"] == pytest.approx(4.0)
    metrics = MetricsRegistry()
    expose_drift(metrics, service)
    text = metrics.render()
    assert 'mesh_module_drift_score{module="counter",site="j2"} 4.0' in text
    assert service.describe()[0]["module"] == "counter"


def test_no_reference_says_why() -> None:
    bus, clock = FakeBus(), Clock()
    service = DriftService(bus, Registry({}), clock=clock)
    service.track(
        spec(Drift(statistic="inputs", threshold=3.0, min_samples=1)),
        version="v9",
        event_topics=[],
        sites={"a1": "j1"},
    )
    clock.now += 1
    bus.deliver("mesh/v1/agents/a1/heartbeat", heartbeat("a1", "j1", 1.0, 10, version="v9"))
    assert service.evaluate() == []
    (score,) = service.scores()
    assert score.score is None and score.reason is not None and "v9" in score.reason


class Candidates:
    """The registry's versions with their stages (the drift service's ``candidates``)."""

    def __init__(self, stages: dict[str, str]) -> None:
        self.stages = stages

    def versions(self, name: str) -> list[Version]:
        return [Version(v, None, Lineage({}), stage=s) for v, s in self.stages.items()]


def test_drift_events_wait_for_a_trial_and_stop_after_max_rollbacks() -> None:
    """Retraining is retried a bounded number of times: a person decides after that."""
    bus, clock = FakeBus(), Clock()
    registry = Registry({"v1": Version("v1", Metric(0.5), Lineage({}))})
    candidates = Candidates({"v1": "production", "v2": "candidate"})
    service = DriftService(bus, registry, clock=clock, candidates=candidates)
    check = Drift(
        statistic="error", threshold=2.0, min_samples=5, labels="traffic/{site}/truth",
        max_rollbacks=2,
    )  # fmt: skip
    service.track(spec(check), version="production", event_topics=["mesh/v1/events/+/counts"])
    feed(bus, clock, "j1", 1.5, 10)  # production v1 at j1 drifts (score 3)
    assert service.evaluate() == []  # v2 is under trial: no event
    assert [s.drifting for s in service.scores()] == [False]  # armed for when the hold lifts
    candidates.stages["v2"] = "archived"  # v2 rolled back: one retry
    assert [e["site"] for e in service.evaluate()] == ["j1"]
    assert service.evaluate() == []  # once per drift, as ever
    clock.now += 61  # the error back to normal re-arms the site; then it drifts again
    feed(bus, clock, "j1", 0.1, 10)
    assert service.evaluate() == []
    clock.now += 61
    feed(bus, clock, "j1", 1.5, 10)
    candidates.stages["v3"] = "archived"  # the retry's candidate rolled back too: 2 of 2
    assert service.evaluate() == []
    assert len(bus.published) == 1
    candidates.stages["v4"] = "production"  # a person promoted one: events again
    candidates.stages["v1"] = "archived"
    registry.versions["v4"] = Version("v4", Metric(0.5), Lineage({}))
    feed(bus, clock, "j1", 1.5, 10)  # j1 still on v1: the promotion reaches it, no event
    assert service.evaluate() == []
    feed(bus, clock, "j1", 1.5, 10, version="v4")
    assert [(e["site"], e["version"]) for e in service.evaluate()] == [("j1", "v4")]


def test_the_drift_check_refuses_zero_rollbacks() -> None:
    with pytest.raises(ValueError, match="max_rollbacks"):
        Drift(statistic="outputs", threshold=2.0, max_rollbacks=0)
