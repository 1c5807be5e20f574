"""Replicas on a real Ray cluster: pinned to fog, served direct, supervised, make-before-break."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from mesh import QoS, Resources, UnsatisfiableError
from mesh.sdk import ModuleSpec
from mesh.serving._manager import HttpProbe, ModelArtifact, ServingManager
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from mesh.serving.replica._server import ModelRunner
from tests.support.agent_fixtures import build_cnn
from tests.support.serving import LoadRunner, running_gateway, wait_until

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

SPEC = ModuleSpec(
    name="cnn",
    model="cnn",
    qos=QoS(p95_latency_ms=50),
    tiers=("fog", "cloud"),
    resources=Resources(cpus=0.5),
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelArtifact, ModelArtifact]:
    d = tmp_path_factory.mktemp("cnn")
    return (
        ModelArtifact.from_file(build_cnn(d / "v1.onnx", seed=1), model="cnn", version="v1"),
        ModelArtifact.from_file(build_cnn(d / "v2.onnx", seed=2), model="cnn", version="v2"),
    )


@pytest.fixture
def manager(ray_backend: RayBackend) -> Iterator[ServingManager]:
    from mesh.ray._replicas import RayReplicaLauncher

    m = ServingManager(
        RouteTable(),
        RayReplicaLauncher(nodes=ray_backend.nodes),
        period_s=0.2,
        unhealthy_after=2,
        start_timeout_s=90,
    ).start()
    try:
        yield m
    finally:
        m.close()


def reference(artifact: ModelArtifact) -> ModelRunner:
    return ModelRunner(artifact.data, cpus=1, batching="off", warmup_runs=0)


def frame(i: int) -> dict[str, Any]:
    return {"input": np.random.default_rng(i).random((1, 1, 32, 32), dtype=np.float32)}


def test_replicas_run_on_fog_and_serve_direct(
    ray_backend: RayBackend,
    manager: ServingManager,
    artifacts: tuple[ModelArtifact, ModelArtifact],
) -> None:
    v1, v2 = artifacts
    fog = {n.node_id for n in ray_backend.nodes() if n.alive and n.tier == "fog"}
    route = manager.deploy(SPEC, v1, tier="fog")
    (endpoint,) = route.endpoints
    assert isinstance(endpoint, ReplicaEndpoint) and endpoint.node_id in fog
    # it listens where Ray knows its node (loopback on a loopback cluster), with a key
    node = next(n for n in ray_backend.nodes() if n.node_id == endpoint.node_id)
    assert node.address.rpartition(":")[0] == endpoint.host
    assert len(endpoint.key) >= 43
    keyless = httpx.get(f"{endpoint.url}/stats", timeout=5)
    assert keyless.status_code == 401, keyless.text
    stats = HttpProbe().stats(endpoint, 5.0)
    assert stats is not None and stats["threads"] == 1 and stats["ready"]
    assert stats["provider"] == "CPUExecutionProvider" and stats["node_id"] in fog

    refs = {"v1": reference(v1), "v2": reference(v2)}

    def check(inputs: dict[str, Any], outputs: dict[str, Any], version: str | None) -> None:
        want = refs[version or "?"].run(inputs)["logits"].ravel()
        np.testing.assert_allclose(outputs["logits"], want, rtol=1e-4, atol=1e-5)

    with running_gateway(manager.routes) as (_, server):
        load = LoadRunner(server.host, server.port, "cnn", frame, workers=3, check=check).start()
        try:
            load.wait_for(lambda: load.count("v1") >= 50, 30, "v1 answers")
            # make-before-break under load: not one request fails
            assert manager.deploy(SPEC, v2, tier="fog").epoch == route.epoch + 1
            load.wait_for(lambda: load.count("v2") >= 50, 30, "v2 answers")
        finally:
            load.stop()
        assert load.failures() == []
        versions = [o.version for o in load.outcomes]
        assert versions[0] == "v1" and versions[-1] == "v2"
        assert "v1" not in versions[versions.index("v2") + 20 :]  # switched at once

        # Ray restarts a killed replica; the manager finds its new port
        (current,) = manager.routes.get("cnn").endpoints  # type: ignore[union-attr]
        assert isinstance(current, ReplicaEndpoint)
        pid = HttpProbe().stats(current, 5.0)["pid"]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            route = manager.routes.get("cnn")
            return route is not None and any(
                isinstance(e, ReplicaEndpoint) and e.port != current.port for e in route.endpoints
            )

        wait_until(restarted, 90, "the killed replica back in the route on a new port")
        (back,) = manager.routes.get("cnn").endpoints  # type: ignore[union-attr]
        assert isinstance(back, ReplicaEndpoint) and back.key and back.key != current.key
        load = LoadRunner(server.host, server.port, "cnn", frame, workers=1, check=check).start()
        try:
            load.wait_for(lambda: load.count("v2") >= 10, 30, "answers after the restart")
        finally:
            load.stop()
        assert load.failures() == []


def test_what_no_node_can_hold_is_refused_at_once(
    manager: ServingManager,
    artifacts: tuple[ModelArtifact, ModelArtifact],
) -> None:
    with pytest.raises(UnsatisfiableError, match="no live fog node has site 'nowhere'"):
        manager.deploy(SPEC, artifacts[0], tier="fog", site="nowhere")
    big = SPEC.model_copy(update={"resources": Resources(cpus=64)})
    with pytest.raises(UnsatisfiableError, match="resources"):
        manager.deploy(big, artifacts[0], tier="fog")
    assert manager.routes.get("cnn") is None


def test_replicas_scale_with_in_flight_requests(
    ray_backend: RayBackend,
    artifacts: tuple[ModelArtifact, ModelArtifact],
    tmp_path: Path,
) -> None:
    from mesh.ray._replicas import RayReplicaLauncher

    spec = SPEC.model_copy(
        update={
            "name": "cnn-auto",
            "min_replicas": 1,
            "max_replicas": 2,
            "target_in_flight": 1.0,
            "resources": Resources(cpus=0.25),
        }
    )
    m = ServingManager(
        RouteTable(),
        RayReplicaLauncher(nodes=ray_backend.nodes),
        period_s=0.2,
        autoscale_delays={"upscale_delay_s": 0.5, "downscale_delay_s": 1.0},
    ).start()
    try:
        m.deploy(spec, artifacts[0], tier="fog")
        with running_gateway(m.routes) as (_, server):
            load = LoadRunner(server.host, server.port, "cnn-auto", frame, workers=8).start()
            try:
                wait_until(
                    lambda: len(m.routes.get("cnn-auto").endpoints) == 2,  # type: ignore[union-attr]
                    60,
                    "a second replica under load",
                )
            finally:
                load.stop()
            assert load.failures() == []
        wait_until(
            lambda: len(m.routes.get("cnn-auto").endpoints) == 1,  # type: ignore[union-attr]
            30,
            "back to one replica when idle",
        )
        wait_until(lambda: len(m.status("cnn-auto")) == 1, 30, "the idle replica stopped")
    finally:
        m.close()


def test_a_model_that_cannot_load_fails_the_deploy_and_the_old_version_serves(
    manager: ServingManager,
    artifacts: tuple[ModelArtifact, ModelArtifact],
) -> None:
    import time

    from mesh.serving._manager import ReplicaFailedError

    v1 = artifacts[0]
    manager.deploy(SPEC, v1, tier="fog")
    broken = ModelArtifact("cnn", "v3", "0" * 64, b"not an onnx file", v1.signature)
    started = time.monotonic()
    with pytest.raises(ReplicaFailedError, match="cannot load the model"):
        manager.deploy(SPEC, broken, tier="fog")
    assert time.monotonic() - started < 60
    route = manager.routes.get("cnn")
    assert route is not None and route.version == "v1" and route.epoch == 1
    assert [s.version for s in manager.status("cnn")] == ["v1"]
