"""A module served by a fog replica on real Ray gets a drift score from its outputs.

The replica (a Ray actor) summarises its inferences once the control plane's
:class:`ReplicaDriftFeed` reads its ``GET /drift``; the feed hands each window to
the real :class:`DriftService` (over a real Mosquitto, with a real registry
holding the version's reference), which scores it under the tier, ``fog``, and
shows it in ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from mesh import QoS, Resources
from mesh.core._metrics import MetricsRegistry
from mesh.core._settings import MeshSettings
from mesh.edge._bus import EdgeBus
from mesh.edge.broker._broker import MosquittoBroker
from mesh.models._reference import drift_reference
from mesh.models._registry import ModelRegistry
from mesh.models._versions import Lineage
from mesh.runtime._drift import DriftService, expose_drift
from mesh.runtime._replica_drift import ReplicaDriftFeed
from mesh.sdk import ModuleSpec
from mesh.sdk._specs import Drift
from mesh.serving._manager import ModelArtifact, ServingManager
from mesh.serving._oip import encode_request
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.brokers import mosquitto, unique  # noqa: F401  (fixtures)
from tests.support.serving import wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.timeout(240)]

SPEC = ModuleSpec(
    name="doubler",
    model="tiny",
    qos=QoS(p95_latency_ms=50),
    tiers=("fog",),
    resources=Resources(cpus=0.25),
    drift=Drift(statistic="outputs", threshold=3.0, window_s=60, min_samples=20),
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry.open(MeshSettings(data_dir=tmp_path / "data"), batch_sizes=(1,))
    try:
        yield reg
    finally:
        reg.close()


def test_a_tracked_module_on_a_fog_replica_gets_a_drift_score(
    ray_backend: RayBackend,
    mosquitto: MosquittoBroker,  # noqa: F811
    registry: ModelRegistry,
    tmp_path: Path,
) -> None:
    from mesh.ray._replicas import RayReplicaLauncher

    model = build_tiny_model(tmp_path / "tiny.onnx", scale=2.0)  # y = 2x
    # Validated on inputs near 100: outputs near 200; served inputs are 1..20.
    held_out = np.random.default_rng(0).normal(100.0, 5.0, size=(64, 4)).astype(np.float32)
    reference = drift_reference(model, [held_out])
    version = registry.register(
        "tiny", model, code_version="test", lineage=Lineage(extra={"drift_reference": reference})
    ).version
    artifact = ModelArtifact.from_file(model, model="tiny", version=version)
    edge = EdgeBus(mosquitto.url, prefix=f"t/{unique('rdrift')}").start()
    service = DriftService(edge, registry, period_s=0.2).start()
    manager = ServingManager(
        RouteTable(), RayReplicaLauncher(nodes=ray_backend.nodes), start_timeout_s=90
    ).start()
    feed = ReplicaDriftFeed(manager.routes, service, period_s=0.2)
    try:
        route = manager.deploy(SPEC, artifact, tier="fog")
        (endpoint,) = route.endpoints
        assert isinstance(endpoint, ReplicaEndpoint)
        service.track(SPEC, version=version, event_topics=[])
        assert feed.poll() == 0  # the first read: the replica summarises from now on
        feed.start()
        headers = {"Authorization": endpoint.authorization.decode()}
        with httpx.Client(base_url=endpoint.url, headers=headers, timeout=10) as client:
            for i in range(1, 31):
                x = np.full((1, 4), float(i % 20 + 1), np.float32)
                body, _ = encode_request({"x": x}, binary=False)
                answer = client.post("/v2/models/doubler/infer", content=body)
                assert answer.status_code == 200, answer.text

        def scored() -> bool:
            return any(s.site == "fog" and s.samples >= 30 for s in service.scores())

        wait_until(scored, 30, "a drift score at fog over the 30 inferences")
        (score,) = service.scores()
        assert score.module == "doubler" and score.version == version and score.drifting
        assert score.score is not None and score.score > SPEC.drift.threshold  # type: ignore[union-attr]
        metrics = MetricsRegistry()
        expose_drift(metrics, service)
        assert 'mesh_module_drift_score{module="doubler",site="fog"}' in metrics.render()
    finally:
        feed.stop()
        manager.close()
        service.stop()
        edge.stop()
