"""The control plane's fresh-data service on a fake bus: samples and labels in, sampling on, metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from edge_agent.protocol import SampleUpload, SamplingPolicy, Tensor, Topics, encode_frame
from mesh.core._metrics import MetricsRegistry
from mesh.core._topics import topic_matches
from mesh.models import FreshData
from mesh.runtime._fresh_data import FreshDataService
from mesh.sdk import Canary, Drift, QoS
from mesh.sdk._specs import ModuleSpec

T = Topics()


class FakeBus:
    prefix = "mesh/v1"

    def __init__(self) -> None:
        self.handlers: list[tuple[str, Callable[[str, bytes], None]]] = []

    def subscribe(self, pattern: str, handler: Callable[[str, bytes], None]) -> Callable[[], None]:
        entry = (pattern, handler)
        self.handlers.append(entry)
        return lambda: self.handlers.remove(entry)

    def patterns(self) -> list[str]:
        return sorted(p for p, _ in self.handlers)

    def deliver(self, topic: str, payload: bytes) -> None:
        for pattern, handler in list(self.handlers):
            if topic_matches(pattern, topic):
                handler(topic, payload)


class FakeInstaller:
    def __init__(self) -> None:
        self.calls: list[tuple[str, SamplingPolicy | None]] = []

    def set_sampling(self, module: str, policy: SamplingPolicy | None) -> list[str]:
        self.calls.append((module, policy))
        return []


def spec(name: str = "counter", *, drift: bool = True, canary: bool = False) -> ModuleSpec:
    return ModuleSpec(
        name=name,
        model=name,
        qos=QoS(p95_latency_ms=50),
        drift=Drift(statistic="error", threshold=1.5, labels="traffic/{site}/truth")
        if drift
        else None,
        canary=Canary() if canary else None,
    )


def sample(
    agent: str, site: str, ts: float, value: float, *, module: str = "counter", dropped: int = 0
) -> tuple[str, bytes]:
    head = SampleUpload(
        agent=agent, site=site, module=module, version="v1", source_ts=ts, seq=1, dropped=dropped
    )
    x = Tensor.from_numpy("x", np.full((1, 3), value, np.float32))
    return T.samples(agent, module), encode_frame(head, [x])


def label(site: str, ts: float, values: list[float]) -> bytes:
    return json.dumps({"site": site, "ts": ts, "values": values}).encode()


class Env(NamedTuple):
    service: FreshDataService
    bus: FakeBus
    installer: FakeInstaller
    metrics: MetricsRegistry


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    bus, installer, metrics = FakeBus(), FakeInstaller(), MetricsRegistry()
    service = FreshDataService(
        bus, FreshData(tmp_path), installer=installer, metrics=metrics
    ).start()
    yield Env(service, bus, installer, metrics)
    service.stop()
    service.store.close()


def test_samples_and_labels_are_stored_and_joined(env: Env) -> None:
    service, bus, installer, metrics = env
    assert bus.patterns() == ["mesh/v1/agents/+/samples/+"]
    service.track(spec(), sites={"cam-1": "j1", "cam-2": "j2"})
    assert "traffic/+/truth" in bus.patterns()
    assert installer.calls == [("counter", SamplingPolicy())]
    for i in range(4):
        bus.deliver(*sample("cam-1", "j1", 10.0 + i, float(i), dropped=i))
    bus.deliver(*sample("cam-2", "j2", 10.0, 7.0, dropped=5))
    bus.deliver("traffic/j1/truth", label("j1", 11.0, [1.0]))
    bus.deliver("traffic/j2/truth", label("j2", 10.0, [7.0]))
    assert service.drain()
    snap = service.store.snapshot("counter")
    assert (snap.rows, snap.sites) == (2, ("j1", "j2"))
    inputs, labels = snap.arrays()
    np.testing.assert_allclose(inputs[:, 0], labels[:, 0])
    text = metrics.render()
    assert 'mesh_fresh_samples_total{module="counter"} 5.0' in text
    assert 'mesh_fresh_labelled{module="counter"} 2.0' in text
    assert 'mesh_fresh_dropped_total{module="counter",reason="budget"} 8.0' in text  # 3 + 5


def test_the_site_comes_from_the_agent_when_sites_are_known(env: Env) -> None:
    service, bus, _, metrics = env
    service.track(spec(), sites={"cam-1": "j1"})
    bus.deliver(*sample("cam-1", "j9", 1.0, 1.0))  # says j9; cam-1 is at j1
    bus.deliver(*sample("cam-7", "j1", 2.0, 1.0))  # not one of the module's agents
    assert service.drain()
    stats = service.store.stats("counter")
    assert stats.samples == 1
    service.store.add_label("counter", "j1", 1.0, [1.0])
    assert service.store.snapshot("counter").sites == ("j1",)
    assert 'mesh_fresh_dropped_total{module="counter",reason="invalid"} 1.0' in metrics.render()


def test_bad_messages_are_dropped_counted_and_change_nothing(
    env: Env,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, bus, _, metrics = env
    service.track(spec())
    topic, good = sample("cam-1", "j1", 1.0, 1.0)
    bad_samples = [
        (topic, b"\x00garbage"),
        (topic, good[:-3]),  # short
        (T.samples("cam-2", "counter"), good),  # the header names cam-1
        (sample("cam-1", "j1", 1.0, 1.0, module="other")[0], good),
    ]
    for t, p in bad_samples:
        bus.deliver(t, p)
    for payload in [
        b"{not json",
        b"[1, 2]",
        json.dumps({"site": "j1", "ts": 1.0}).encode(),
        label("j1", float("nan"), [1.0]),
        label("j/1", 1.0, [1.0]),
        label("j1", 1.0, []),
        label("j1", 1.0, ["a"]),  # type: ignore[list-item]
    ]:
        bus.deliver("traffic/j1/truth", payload)
    assert service.drain()
    stats = service.store.stats("counter")
    assert (stats.samples, stats.labels) == (0, 0)
    assert 'reason="invalid"} 10.0' in metrics.render()  # 'other' is not tracked: ignored
    assert "a label refused" in caplog.text and "a sample from cam-2 refused" in caplog.text


def test_sampling_is_turned_on_for_drift_or_canary_or_an_explicit_policy(
    env: Env,
) -> None:
    service, bus, installer, _ = env
    service.track(spec("plain", drift=False))
    service.track(spec("tried", drift=False, canary=True))
    service.track(spec("asked", drift=False), policy=SamplingPolicy(samples_per_min=2))
    assert installer.calls == [
        ("tried", SamplingPolicy()),
        ("asked", SamplingPolicy(samples_per_min=2)),
    ]
    assert service.tracked() == ["asked", "plain", "tried"]
    assert bus.patterns() == ["mesh/v1/agents/+/samples/+"]  # no labels topic: none followed
    bus.deliver(*sample("cam-1", "j1", 1.0, 1.0, module="nobody"))  # untracked: ignored
    assert service.drain()
    assert service.store.modules() == []


def test_untrack_stops_following_labels(env: Env) -> None:
    service, bus, _, _ = env
    service.track(spec())
    service.track(spec())  # again: replaces, does not subscribe twice
    assert bus.patterns().count("traffic/+/truth") == 1
    service.untrack("counter")
    assert "traffic/+/truth" not in bus.patterns()
    bus.deliver(*sample("cam-1", "j1", 1.0, 1.0))
    assert service.drain()
    assert service.store.modules() == []
