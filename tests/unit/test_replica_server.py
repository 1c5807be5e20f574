"""The replica server: ONNX Runtime behind OIP v2, without Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mesh.serving._oip import decode_response, encode_request
from mesh.serving._upstream import UpstreamPool
from mesh.serving.replica._server import (
    ModelRunner,
    ReplicaApp,
    ReplicaStats,
    choose_providers,
    intra_op_threads,
    serve_asgi,
)
from tests.support.agent_fixtures import build_cnn, build_tiny_model
from tests.support.http_errors import assert_error
from tests.support.metrics import sample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", scale=3.0)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cnn(tmp_path_factory.mktemp("m") / "cnn.onnx")


def make_app(path: Path, **kw: Any) -> ReplicaApp:
    runner = ModelRunner(
        path, cpus=kw.pop("cpus", 0.5), batching=kw.pop("batching", "auto"), warmup_runs=1
    )
    app = ReplicaApp(runner, model="m", version="v1", node_id="n1", replica_id="r1", **kw)
    app.warmup()
    return app


async def call(app: ReplicaApp, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://replica"
    ) as client:
        return await client.request(method, path, **kw)


def infer(
    app: ReplicaApp,
    inputs: dict[str, np.ndarray[Any, Any]],
    *,
    binary: bool = False,
    path: str = "/v2/models/m/infer",
) -> httpx.Response:
    body, header_length = encode_request(inputs, binary=binary, binary_output=binary)
    headers = (
        {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    )
    return asyncio.run(call(app, "POST", path, content=body, headers=headers))


def outputs(response: httpx.Response) -> dict[str, np.ndarray[Any, Any]]:
    raw = response.headers.get("inference-header-content-length")
    return decode_response(response.content, int(raw) if raw else None)


def test_providers_and_threads() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(both, gpus=1) == both
    assert choose_providers(both, gpus=0) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"], gpus=1) == ["CPUExecutionProvider"]
    assert [intra_op_threads(c) for c in (0.25, 1, 1.5, 2, 4)] == [1, 1, 1, 2, 4]


def test_runner_reads_signature_and_decides_batching(cnn: Path) -> None:
    runner = ModelRunner(cnn, cpus=2, warmup_runs=1)
    assert runner.threads == 2 and runner.provider == "CPUExecutionProvider"
    assert [(s.name, s.dtype) for s in runner.signature.inputs] == [("input", "float32")]
    assert runner.batchable and not runner.warm
    runner.warmup()
    assert runner.warm and runner.single_ms is not None and runner.batch8_ms is not None
    assert runner.batching == (runner.batch8_ms / 8 < 0.75 * runner.single_ms)
    assert runner.feeds(3)["input"].shape == (3, 1, 32, 32)


@pytest.mark.parametrize("execution", ["inline", "thread"])
@pytest.mark.parametrize("binary", [False, True])
def test_infer_json_and_binary(tiny: Path, execution: str, binary: bool) -> None:
    app = make_app(tiny, execution=execution)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    response = infer(app, {"x": x}, binary=binary)
    assert response.status_code == 200, response.text
    assert ("inference-header-content-length" in response.headers) == binary
    np.testing.assert_allclose(outputs(response)["y"], x * 3.0)
    if not binary:
        doc = response.json()
        assert (doc["model_name"], doc["model_version"]) == ("m", "v1")
    app.close()


def test_versioned_path_and_unknown_model(tiny: Path) -> None:
    app = make_app(tiny)
    x = np.ones((1, 4), np.float32)
    assert infer(app, {"x": x}, path="/v2/models/m/versions/v1/infer").status_code == 200
    wrong = infer(app, {"x": x}, path="/v2/models/m/versions/v9/infer")
    assert_error(wrong, 404, "ModelNotServedError", "version 'v9' is not served")
    other = infer(app, {"x": x}, path="/v2/models/other/infer")
    assert_error(other, 404, "ModelNotServedError", "'other' is not served")


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ({"z": np.ones((1, 4), np.float32)}, "missing input 'x'; unknown input 'z'"),
        ({"x": np.ones((1, 5), np.float32)}, "input 'x' has shape [1, 5], not [-1,4]"),
        ({"x": np.ones((1, 4), np.int64)}, "input 'x' has datatype INT64, not FP32"),
    ],
)
def test_bad_tensors_get_400_naming_the_signature(
    tiny: Path, inputs: dict[str, Any], needle: str
) -> None:
    app = make_app(tiny)
    message = assert_error(infer(app, inputs), 400, "InferenceInputError", needle)["error"]
    assert "expected inputs x: FP32[-1,4]" in message
    assert app.stats.window()["errors"] == 1


def test_malformed_body_gets_400(tiny: Path) -> None:
    app = make_app(tiny)
    response = asyncio.run(call(app, "POST", "/v2/models/m/infer", content=b"{nope"))
    assert_error(response, 400, "InferenceInputError", "not JSON")
    bad_len = asyncio.run(
        call(
            app,
            "POST",
            "/v2/models/m/infer",
            content=b"{}",
            headers={"Inference-Header-Content-Length": "x"},
        )
    )
    assert_error(bad_len, 400, "InferenceInputError", "inference-header-content-length")


def test_routing_errors_are_the_one_json_shape(tiny: Path) -> None:
    app = make_app(tiny)
    assert_error(asyncio.run(call(app, "GET", "/nope")), 404, "NotFoundError", "GET /nope")
    bad_action = asyncio.run(call(app, "GET", "/v2/models/m/explain"))
    assert_error(bad_action, 404, "NotFoundError")
    get_infer = asyncio.run(call(app, "GET", "/v2/models/m/infer"))
    assert_error(get_infer, 405, "MethodNotAllowedError", "GET /v2/models/m/infer")
    app.close()


def test_a_full_queue_answers_503_so_the_gateway_tries_another_replica(tiny: Path) -> None:
    app = make_app(tiny, max_queue=0)
    response = infer(app, {"x": np.ones((1, 4), np.float32)})
    assert_error(response, 503, "ReplicaOverloadedError", "requests queued; try another replica")
    assert app.stats.window()["errors"] == 1
    app.close()


def test_health_metadata_stats_and_metrics(tiny: Path) -> None:
    app = make_app(tiny)
    assert asyncio.run(call(app, "GET", "/v2/health/live")).status_code == 200
    assert asyncio.run(call(app, "GET", "/v2/health/ready")).status_code == 200
    assert asyncio.run(call(app, "GET", "/v2/models/m/ready")).status_code == 200
    meta = asyncio.run(call(app, "GET", "/v2/models/m")).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["versions"] == ["v1"]
    server = asyncio.run(call(app, "GET", "/v2")).json()
    assert "binary_tensor_data" in server["extensions"]
    infer(app, {"x": np.ones((1, 4), np.float32)})
    stats = asyncio.run(call(app, "GET", "/stats")).json()
    assert stats["requests"] == 1 and stats["in_flight"] == 0 and stats["replica_id"] == "r1"
    assert stats["p50_ms"] is not None and stats["ready"] is True
    text = asyncio.run(call(app, "GET", "/metrics")).text
    assert sample(text, "mesh_replica_latency_seconds_count") == 1
    assert asyncio.run(call(app, "GET", "/nope")).status_code == 404
    app.draining = True
    assert asyncio.run(call(app, "GET", "/v2/health/ready")).status_code == 503


def test_concurrent_requests_are_batched_and_answered_apart(cnn: Path) -> None:
    app = make_app(cnn, batching="on", execution="thread")
    rng = np.random.default_rng(0)
    xs = [rng.random((1 + i % 2, 1, 32, 32), dtype=np.float32) for i in range(24)]
    expected = [app.runner.run({"input": x})["logits"] for x in xs]

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://replica"
        ) as client:

            async def one(x: np.ndarray[Any, Any]) -> httpx.Response:
                body, hl = encode_request({"input": x}, binary=True)
                return await client.post(
                    "/v2/models/m/infer",
                    content=body,
                    headers={"Inference-Header-Content-Length": str(hl)},
                )

            return await asyncio.gather(*[one(x) for x in xs])

    responses = asyncio.run(many())
    for response, want in zip(responses, expected, strict=True):
        assert response.status_code == 200
        np.testing.assert_allclose(outputs(response)["logits"], want, rtol=1e-4, atol=1e-5)
    info = app.describe()
    assert info["batches"] >= 1 and info["batched_requests"] >= 2
    app.close()


def test_stats_time_average_in_flight() -> None:
    now = [0.0]
    stats = ReplicaStats(clock=lambda: now[0])
    stats.started()
    now[0] = 1.0
    stats.started()
    now[0] = 2.0
    stats.finished(0.01, True)
    stats.finished(0.01, False)
    window = stats.window()
    assert window["avg_in_flight"] == pytest.approx(1.5)
    assert (window["requests"], window["errors"], window["in_flight"]) == (2, 1, 0)
    now[0] = 4.0
    assert stats.window()["avg_in_flight"] == 0.0


@pytest.fixture
def served(tiny: Path) -> Iterator[tuple[ReplicaApp, str, int]]:
    app = make_app(tiny)
    server = serve_asgi(app, port=0)
    try:
        yield app, server.host, server.port
    finally:
        server.stop()
        app.close()
    assert not server.alive


def test_served_on_a_socket_with_keep_alive(served: tuple[ReplicaApp, str, int]) -> None:
    app, host, port = served
    body, _ = encode_request({"x": np.ones((1, 4), np.float32)}, binary=False)

    async def run() -> None:
        pool = UpstreamPool()
        for _ in range(5):
            response = await pool.request(host, port, "POST", "/v2/models/m/infer", body=body)
            assert response.status == 200
            assert json.loads(response.body)["outputs"][0]["data"] == [3.0] * 4
        health = await pool.request(host, port, "GET", "/v2/health/ready")
        assert health.status == 200
        await pool.close()

    asyncio.run(run())
    assert app.stats.window()["requests"] == 5


@pytest.mark.gpu
def test_a_replica_holding_a_gpu_runs_on_cuda(cnn: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA execution provider")
    runner = ModelRunner(cnn, cpus=1, gpus=1, warmup_runs=1)
    assert runner.provider == "CUDAExecutionProvider"
    runner.warmup()
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    cpu = ModelRunner(cnn, cpus=1, warmup_runs=0)
    np.testing.assert_allclose(
        runner.run({"input": x})["logits"], cpu.run({"input": x})["logits"], rtol=1e-3, atol=1e-4
    )
