"""Issue #4 end to end, on real Ray, a real Mosquitto and a real edge agent process.

train -> tune -> export -> register -> deploy to fog -> infer with tritonclient through the
gateway -> the same module on an edge agent, same gateway URL -> back to fog under load ->
promote v2 under continuous load with zero failed requests -> roll back under load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from mesh.core._metrics import MetricsRegistry
from mesh.edge._artifact_api import UrlSigner, create_artifact_app, serve_in_thread
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings, control_plane_credentials, enroll
from mesh.edge._install import EdgeInstaller
from mesh.edge.broker._broker import free_port, start_mosquitto
from mesh.models import Lineage, ModelRegistry, SelectionMetric
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.serving._manager import ServingManager
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint, RouteTable
from mesh.serving.replica._server import ModelRunner, ServerThread
from tests.support.agent_fixtures import AgentProcess, agent_processes  # noqa: F401
from tests.support.brokers import require_mosquitto
from tests.support.metrics import sample
from tests.support.serving import LoadRunner, running_gateway

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytest.importorskip("torch")
pytestmark = [pytest.mark.ray, pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(360)]

AGENT = "cam-serving"
TINY = {"train_size": 96, "val_size": 32, "epochs": 3}


@dataclass
class ControlPlane:
    settings: EdgeSettings
    registry: ModelRegistry
    manager: ServingManager
    edge: EdgeBus
    gateway_url: str
    server: ServerThread
    metrics: MetricsRegistry
    agent_command: list[str]


@pytest.fixture
def control_plane(tmp_path: Path, ray_backend: RayBackend) -> Iterator[ControlPlane]:
    """What `mesh up` runs: registry, broker, edge gateway, artifact endpoint, manager, gateway."""
    from mesh.ray._replicas import RayReplicaLauncher

    require_mosquitto()
    settings = EdgeSettings(data_dir=tmp_path / "cp", broker_url=f"mqtt://127.0.0.1:{free_port()}")
    enrolment = enroll(AGENT, site="int-1-1", settings=settings)
    broker = start_mosquitto(
        int(settings.broker_url.rsplit(":", 1)[1]),
        workdir=tmp_path / "mosquitto",
        password_file=settings.password_file,
        acl_file=settings.acl_file,
    )
    creds = control_plane_credentials(settings)
    registry = ModelRegistry.open(settings)
    edge = EdgeBus(
        broker.url, username=creds.username, password=creds.password, keepalive_s=5
    ).start()
    artifacts = serve_in_thread(create_artifact_app(settings), port=0)
    installer = EdgeInstaller(
        edge,
        store=ArtifactStore(settings.data_dir / "artifacts"),
        signer=ArtifactSigner.load_or_create(settings.data_dir),
        url_signer=UrlSigner.load_or_create(settings.data_dir),
        base_url=artifacts.url,
    )
    metrics = MetricsRegistry()
    manager = ServingManager(
        RouteTable(),
        RayReplicaLauncher(nodes=ray_backend.nodes),
        registry=registry,
        installer=installer,
        metrics=metrics,
        period_s=0.25,
        start_timeout_s=120,
    ).start()
    from mesh.security._auth import TokenSigner

    try:
        with running_gateway(
            manager.routes,
            signer=TokenSigner.load_or_create(settings.data_dir),
            edge=edge,
            registry=registry,
            metrics=metrics,
        ) as (_, server):
            yield ControlPlane(
                settings,
                registry,
                manager,
                edge,
                f"{server.host}:{server.port}",
                server,
                metrics,
                enrolment.command[1:],
            )
    finally:
        manager.close()
        artifacts.stop()
        edge.stop()
        broker.stop()
        registry.close()


def mesh_token(data_dir: Path, *scopes: str) -> str:
    """`mesh tokens create` as a user runs it."""
    args = [a for s in scopes for a in ("--scope", s)]
    out = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "tokens", "create", "e2e", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "MESH_DATA_DIR": str(data_dir)},
    )
    return out.stdout.strip()


def frames(n: int) -> list[np.ndarray[Any, Any]]:
    from functions.traffic.app import VehicleCounter
    from functions.traffic.occupancy import synthetic_dataset

    counter = VehicleCounter()
    images = synthetic_dataset(n, seed=7).images
    return [counter.preprocess(images[i])["occupancy"] for i in range(n)]


def train(backend: RayBackend, out: Path, run_id: str, **config: Any) -> dict[str, Any]:
    from functions.traffic.app import app

    call = backend.submit(
        app.get("train_counter"), {**TINY, "out_dir": str(out), **config}, run_id=run_id
    )
    ref: dict[str, Any] = call.result(timeout_s=300).value
    return ref


def register(registry: ModelRegistry, ref: dict[str, Any], run_id: str) -> str:
    version = registry.register(
        ref["model"],
        Path(ref["onnx_path"]),
        code_version=ref["code_version"],
        metric=SelectionMetric("val_mae", ref["metrics"]["val_mae"], "min"),
        lineage=Lineage(
            run_id=run_id, data_id=ref["data_id"], hyperparameters=ref["hyperparameters"]
        ),
    )
    return version.version


def test_train_tune_register_serve_on_fog_and_edge_promote_and_roll_back(
    control_plane: ControlPlane,
    ray_backend: RayBackend,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from functions.traffic.app import COUNTER_MODEL, app

    cp = control_plane
    spec = app.modules["VehicleCounter"].spec
    name = spec.name
    token = mesh_token(cp.settings.data_dir, "invoke")
    inputs = frames(16)

    # ---- train -> tune -> export (inside train_counter) -> register
    ref1 = train(ray_backend, tmp_path / "exports", "train-1", seed=1)
    v1 = register(cp.registry, ref1, "train-1")
    cp.registry.promote(COUNTER_MODEL, v1)
    tuned = ray_backend.submit(app.get("tune_counter"), TINY, run_id="tune").result(400).value
    assert tuned.metric == "val_mae" and len(tuned.trials) == 4
    runners = {
        v1: ModelRunner(
            cp.registry.artifact_path(COUNTER_MODEL, v1)[1], cpus=1, batching="off", warmup_runs=0
        )
    }

    def expected(version: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return runners[version].run({"occupancy": x})["counts"]

    client = triton.InferenceServerClient(url=cp.gateway_url)

    def infer(x: np.ndarray[Any, Any]) -> triton.InferResult:
        inp = triton.InferInput("occupancy", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(name, [inp], headers={"Authorization": f"Bearer {token}"})

    try:
        # ---- deploy to fog, infer with tritonclient through the gateway
        route = cp.manager.deploy(spec, "production", tier="fog")
        fog_nodes = {n.node_id for n in ray_backend.nodes() if n.alive and n.tier == "fog"}
        assert [
            isinstance(e, ReplicaEndpoint) and e.node_id in fog_nodes for e in route.endpoints
        ] == [True]
        meta = client.get_model_metadata(name, headers={"Authorization": f"Bearer {token}"})
        assert meta["inputs"][0]["name"] == "occupancy" and meta["versions"] == [v1]
        for x in inputs[:4]:
            result = infer(x)
            np.testing.assert_allclose(
                result.as_numpy("counts"), expected(v1, x), rtol=1e-4, atol=1e-4
            )
            assert result.get_response()["model_version"] == v1
        with pytest.raises(InferenceServerException, match="expected inputs occupancy"):
            infer(inputs[0][:, :2])

        # ---- the same module on an edge agent, the same gateway URL
        agent = agent_processes(
            [
                *cp.agent_command,
                "--cache-dir",
                str(tmp_path / "cache"),
                "--heartbeat-period-s",
                "0.5",
                "--log-level",
                "INFO",
            ],
            tmp_path / "agent.log",
        ).start()
        cp.edge.wait_for_agent(AGENT, timeout_s=30)
        route = cp.manager.deploy_to_agent(spec, AGENT, "production", timeout_s=60)
        assert route.endpoints == (AgentEndpoint(AGENT, v1),) and route.tier == "edge"
        for x in inputs[:4]:
            result = infer(x)
            np.testing.assert_allclose(
                result.as_numpy("counts"), expected(v1, x), rtol=1e-4, atol=1e-4
            )
        with pytest.raises(InferenceServerException, match="expected inputs occupancy"):
            infer(inputs[0][:, :2])
        served = {"module": name, "version": v1, "node": AGENT, "code": "200"}
        assert (sample(cp.metrics.render(), "mesh_inference_requests_total", **served) or 0) >= 4

        # ---- under continuous load: back to fog, promote v2, roll back; nothing fails
        def check(feeds: dict[str, Any], outputs: dict[str, Any], version: str | None) -> None:
            want = expected(version or "?", feeds["occupancy"]).ravel()
            np.testing.assert_allclose(outputs["counts"], want, rtol=1e-4, atol=1e-4)

        load = LoadRunner(
            cp.server.host,
            cp.server.port,
            name,
            lambda i: {"occupancy": inputs[i % len(inputs)]},
            token=token,
            workers=4,
            check=check,
        ).start()
        try:
            load.wait_for(lambda: load.count(v1) >= 40, 30, "v1 answers from the agent")
            edge_answers = load.count()
            cp.manager.deploy(spec, "production", tier="fog")
            load.wait_for(lambda: load.count() >= edge_answers + 40, 30, "answers from fog")

            best = tuned.best_config
            ref2 = train(
                ray_backend,
                tmp_path / "exports",
                "train-2",
                seed=2,
                lr=best["lr"],
                width=best["width"],
            )
            v2 = register(cp.registry, ref2, "train-2")
            runners[v2] = ModelRunner(
                cp.registry.artifact_path(COUNTER_MODEL, v2)[1],
                cpus=1,
                batching="off",
                warmup_runs=0,
            )
            cp.registry.promote(COUNTER_MODEL, v2)
            assert cp.manager.deploy(spec, "production").version == v2
            load.wait_for(lambda: load.count(v2) >= 40, 30, "v2 answers")

            assert cp.registry.rollback(COUNTER_MODEL).version == v1
            before = load.count(v1)
            assert cp.manager.deploy(spec, "production").version == v1
            load.wait_for(lambda: load.count(v1) >= before + 40, 30, "v1 answers again")
        finally:
            load.stop()
        assert load.failures() == [], load.failures()[:5]
        versions = [o.version for o in load.outcomes]
        assert versions[0] == v1 and v2 in versions and versions[-1] == v1
        agent.terminate()

        text = cp.metrics.render()
        for node in (AGENT, *fog_nodes):
            assert f'mesh_inference_latency_seconds_count{{module="{name}"' in text
            assert f'node="{node}"' in text
        assert f'mesh_route_switches_total{{module="{name}"}}' in text
    finally:
        client.close()
