"""Drift detection over a real Mosquitto: pipeline events and late labels in, a drift event out.

A plain paho client plays the agents (their pipeline events, with outputs and
capture times) and the ground-truth publisher (labels a moment later); the
control plane's side is the real :class:`EdgeBus`, a real model registry and
the :class:`DriftService` on its own thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import Event, Tensor, Topics, json_tensor
from mesh.core._settings import MeshSettings
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import control_plane_credentials
from mesh.edge.broker._broker import MosquittoBroker
from mesh.models._reference import drift_reference
from mesh.models._registry import ModelRegistry
from mesh.models._versions import Lineage, SelectionMetric
from mesh.runtime._drift import DriftService
from mesh.sdk._specs import Drift, ModuleSpec, QoS
from tests.integration.test_edge_e2e import (  # noqa: F401  (the mesh fixture)
    AGENT,
    SITE,
    Mesh,
    _agent_args,
    _replay_file,
    mesh,
)
from tests.support.agent_fixtures import (  # noqa: F401  (fixtures)
    AgentProcess,
    agent_processes,
    build_tiny_model,
)
from tests.support.brokers import MqttProbe, mosquitto, unique  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry.open(MeshSettings(data_dir=tmp_path / "data"), batch_sizes=(1,))
    try:
        yield reg
    finally:
        reg.close()


def test_live_error_past_the_threshold_publishes_one_drift_event(
    mosquitto: MosquittoBroker,  # noqa: F811
    registry: ModelRegistry,
    tmp_path: Path,
) -> None:
    prefix = f"t/{unique('drift')}"
    topics = Topics(prefix)
    version = registry.register(
        "vehicle-counter",
        build_tiny_model(tmp_path / "counter.onnx"),
        code_version="test",
        metric=SelectionMetric("val_mae", 0.5, "min"),
        lineage=Lineage(extra={"drift_reference": {"outputs": {"mean": 1.0, "std": 1.0}}}),
    ).version
    edge = EdgeBus(mosquitto.url, prefix=prefix).start()
    service = DriftService(edge, registry, period_s=0.1).start()
    observer = MqttProbe(mosquitto)
    agent = MqttProbe(mosquitto)
    try:
        observer.subscribe(service.event_topic("counter"))
        spec = ModuleSpec(
            name="counter",
            model="vehicle-counter",
            qos=QoS(p95_latency_ms=50),
            drift=Drift(
                statistic="error",
                threshold=2.0,
                window_s=60,
                min_samples=10,
                labels="traffic/{site}/truth",
            ),
        )
        service.track(spec, version="production", event_topics=[f"{prefix}/events/+/counts"])
        assert service.tracked() == ["counter"]

        def publish(site: str, ts: float, error: float) -> None:
            counts = Tensor.from_numpy("y", np.asarray([[2.0 + error, 1.0]], np.float32))
            event = Event(
                agent=f"cam-{site}",
                site=site,
                stream="counts",
                module="counter",
                version=version,
                source_ts=ts,
                outputs={"y": json_tensor(counts)},
            )
            agent.publish(topics.events(site, "counts"), event.model_dump_json().encode())
            label = {"site": site, "ts": ts, "values": [2.0, 1.0]}
            agent.publish(f"traffic/{site}/truth", json.dumps(label).encode())

        # j1 errs as in validation (score 0.4 / 0.5); j2 errs three times more.
        for i in range(12):
            publish("j1", 1000.0 + i / 10, 0.8)  # per-element MAE 0.4
            publish("j2", 1000.0 + i / 10, 3.0)  # 1.5: score 3
        assert observer.wait_for(lambda: len(observer.messages) >= 1, 20)
        topic, payload, _ = observer.messages[0]
        body = json.loads(payload)
        assert topic == "lifecycle/drift/counter"
        assert body["module"] == "counter" and body["model"] == "vehicle-counter"
        assert body["site"] == "j2" and body["version"] == version
        assert body["statistic"] == "error" and body["score"] == pytest.approx(3.0)
        assert body["samples"] >= 10 and body["threshold"] == 2.0 and body["window_s"] == 60
        # More of the same: still one event (the site stays in drift until it re-arms).
        for i in range(12, 24):
            publish("j2", 1000.0 + i / 10, 3.0)
        assert edge.wait_until(
            lambda: any(s.site == "j2" and s.samples >= 24 for s in service.scores()), 20
        )
        scores = {s.site: s for s in service.scores()}
        assert scores["j1"].score == pytest.approx(0.8) and not scores["j1"].drifting
        assert scores["j2"].drifting and service.fired == 1
        assert service.live_errors.window("counter", since=0.0, version=version).n == 36
    finally:
        service.stop()
        observer.close()
        agent.close()
        edge.stop()


def test_a_real_agents_heartbeat_summaries_score_output_drift(
    mesh: Mesh,  # noqa: F811
    agent_processes: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    """The agent runs the module on a replayed file; its heartbeats carry the summaries."""
    m, edge = mesh, mesh.gateway
    model = build_tiny_model(m.tmp / "counter.onnx", scale=2.0)  # y = 2x
    # Validated on inputs near 100; the replayed frames are 1..20: outputs far lower.
    held_out = np.random.default_rng(0).normal(100.0, 5.0, size=(64, 4)).astype(np.float32)
    reference = drift_reference(model, [held_out])
    registry = ModelRegistry.open(MeshSettings(data_dir=m.tmp / "registry"), batch_sizes=(1,))
    # This broker's ACL confines the control plane to its prefix: the events go under it.
    service = DriftService(edge, registry, period_s=0.1, topic_prefix=f"{edge.prefix}/").start()
    observer = MqttProbe(m.broker, **_control_login(m))
    agent = agent_processes(_agent_args(m, m.tmp / "cache"), m.tmp / "agent.log").start()
    try:
        version = registry.register(
            "tiny",
            model,
            code_version="test",
            lineage=Lineage(extra={"drift_reference": reference}),
        ).version
        observer.subscribe(service.event_topic("counter"))
        spec = ModuleSpec(
            name="counter",
            model="tiny",
            qos=QoS(p95_latency_ms=50),
            drift=Drift(statistic="outputs", threshold=3.0, window_s=30, min_samples=20),
        )
        service.track(spec, version=version, event_topics=[], sites={AGENT: SITE})
        # drift_stats: what EdgeInstaller.set_drift_stats sets for a tracked module
        module = m.module(version, model).model_copy(update={"drift_stats": True})
        edge.publish_desired(AGENT, m.desired(1, module, _replay_file(m.tmp / "frames.bin")))
        assert observer.wait_for(lambda: len(observer.messages) >= 1, 60), agent.log()[-3000:]
        body = json.loads(observer.messages[0][1])
        assert body["site"] == SITE and body["version"] == version
        assert body["statistic"] == "outputs" and body["samples"] >= 20
        # Frames 1..20 give outputs 2..40 (mean 21) against a reference near 200.
        expected = abs(21.0 - reference["outputs"]["mean"]) / reference["outputs"]["std"]
        assert body["score"] == pytest.approx(expected, rel=0.2)
        (score,) = service.scores()
        assert score.drifting and score.samples >= 20
    finally:
        agent.terminate()
        service.stop()
        observer.close()
        registry.close()


def _control_login(m: Mesh) -> dict[str, Any]:
    creds = control_plane_credentials(m.settings)
    return {"username": creds.username, "password": creds.password}
