from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fastapi import FastAPI, Header, HTTPException
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette 1.x asks for httpx2 once, at import; the TestClient works on httpx.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from edge_agent.protocol import artifact_signing_message
from mesh.core._http_errors import install_error_handlers
from mesh.models._api import create_models_router
from mesh.models._artifacts import verify_signature
from mesh.models._registry import ModelRegistry
from tests.support.http_errors import assert_error

from .test_registry import broken_onnx, make_registry, tiny_onnx

RAW = {"content-type": "application/octet-stream"}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = make_registry(tmp_path)
    yield reg
    reg.close()


@pytest.fixture
def client(registry: ModelRegistry) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)  # as the gateway's app does
    app.include_router(create_models_router(registry, max_upload_bytes=64 * 1024))
    with TestClient(app) as c:
        yield c


def _upload(client: TestClient, data: bytes, name: str = "vehicle-counter", **params: Any) -> Any:
    query = {"code_version": "traffic-abc", **params}
    return client.post(f"/v1/models/{name}/versions", params=query, content=data, headers=RAW)


def test_upload_raw_body_registers_a_candidate(client: TestClient) -> None:
    r = _upload(
        client,
        tiny_onnx(),
        metric="val_mae",
        metric_value="0.71",
        mode="min",
        run_id="run-1",
        data_id="d-1",
        hyperparameters='{"lr": 0.002}',
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == "/v1/models/vehicle-counter/versions/v1"
    assert (body["version"], body["stage"], body["code_version"]) == (
        "v1",
        "candidate",
        "traffic-abc",
    )
    assert body["metric"] == {"name": "val_mae", "value": 0.71, "mode": "min"}
    assert body["lineage"]["hyperparameters"] == {"lr": 0.002}
    assert body["signature"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
    cpu = body["profile"]["providers"][0]
    assert cpu["provider"] == "CPUExecutionProvider" and cpu["threads"] == 1
    assert [s["batch_size"] for s in cpu["latency"]] == [1, 8, 32]
    again = _upload(client, tiny_onnx())
    assert again.status_code == 200 and again.json()["version"] == "v1"


def test_upload_multipart_form(client: TestClient) -> None:
    r = client.post(
        "/v1/models/forecaster/versions",
        files={"file": ("model.onnx", tiny_onnx(5.0), "application/octet-stream")},
        data={"code_version": "c9", "metric": "val_mae", "metric_value": "2.5"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["code_version"] == "c9" and r.json()["metric"]["value"] == 2.5


@pytest.mark.parametrize(
    "upload", [b"garbage, not onnx", broken_onnx(), b""], ids=["text", "checker", "empty"]
)
def test_corrupt_upload_is_422_and_registers_nothing(
    client: TestClient, registry: ModelRegistry, upload: bytes
) -> None:
    assert_error(_upload(client, upload), 422, "InvalidModelError")
    assert client.get("/v1/models").json() == []
    assert client.get("/v1/models/vehicle-counter").status_code == 404
    assert list(registry.artifacts) == []


def test_bad_metadata_is_422_and_registers_nothing(client: TestClient) -> None:
    assert_error(
        _upload(client, tiny_onnx(), code_version=""),
        422,
        "InvalidRegistrationError",
        "code_version is required",
    )
    assert _upload(client, tiny_onnx(), metric="val_mae").status_code == 422
    assert _upload(client, tiny_onnx(), hyperparameters="[1]").status_code == 422
    bad_name = client.post(
        "/v1/models/bad name!/versions",
        content=tiny_onnx(),
        params={"code_version": "c"},
        headers=RAW,
    )
    assert_error(bad_name, 422, "InvalidRequestError", "path.name")  # FastAPI's validation
    multipart_without_file = client.post(
        "/v1/models/m/versions", data={"code_version": "c"}, files={"other": ("x", b"")}
    )
    assert multipart_without_file.status_code == 422
    assert client.get("/v1/models").json() == []


def test_oversize_upload_is_413(client: TestClient) -> None:
    assert_error(_upload(client, b"\x00" * (64 * 1024 + 1)), 413, "RequestTooLargeError")
    assert client.get("/v1/models").json() == []


def test_list_get_promote_rollback(client: TestClient) -> None:
    for scale in (1.0, 2.0):
        assert _upload(client, tiny_onnx(scale)).status_code == 201
    assert_error(
        client.get("/v1/models/vehicle-counter/versions/production"),
        404,
        "ModelNotFoundError",
        "no production version",
    )
    assert (
        client.post("/v1/models/vehicle-counter/versions/v1/promote").json()["stage"]
        == "production"
    )
    assert_error(client.post("/v1/models/vehicle-counter/rollback"), 409, "StageError")
    assert client.post("/v1/models/vehicle-counter/versions/v2/promote").status_code == 200
    [summary] = client.get("/v1/models").json()
    assert (summary["name"], summary["versions"], summary["production"]) == (
        "vehicle-counter",
        2,
        "v2",
    )
    rolled = client.post("/v1/models/vehicle-counter/rollback")
    assert rolled.status_code == 200 and rolled.json()["version"] == "v1"
    detail = client.get("/v1/models/vehicle-counter").json()
    assert detail["production"] == "v1" and detail["latest"] == "v2"
    assert [e["action"] for e in detail["history"]] == ["promote", "promote", "rollback"]
    versions = client.get("/v1/models/vehicle-counter/versions").json()
    assert [v["stage"] for v in versions] == ["production", "archived"]
    assert client.get("/v1/models/vehicle-counter/versions/v9").status_code == 404
    assert client.post("/v1/models/nope/rollback").status_code == 404


def test_download_artifact_with_its_signature(client: TestClient, registry: ModelRegistry) -> None:
    data = tiny_onnx()
    _upload(client, data)
    r = client.get("/v1/models/vehicle-counter/versions/v1/artifact")
    assert r.status_code == 200 and r.content == data
    sha = r.headers["x-artifact-sha256"]
    verify_signature(
        registry.public_key_b64(),
        r.headers["x-artifact-signature"],
        artifact_signing_message("vehicle-counter", "v1", sha),
    )
    assert r.headers["x-artifact-key-id"] == registry.key_id
    assert_error(client.get("/v1/models/vehicle-counter/versions/v2/artifact"), 404)
    assert_error(client.get("/v1/nothing/here"), 404, "NotFoundError")  # FastAPI's own 404
    assert_error(client.delete("/v1/models"), 405, "MethodNotAllowedError")


def _token_auth(scope: str) -> Callable[..., None]:
    def check(authorization: str | None = Header(default=None)) -> None:
        if authorization is None:
            raise HTTPException(401, "missing bearer token")
        if scope == "admin" and authorization != "Bearer admin":
            raise HTTPException(403, f"needs scope {scope}")

    return check


def test_auth_dependency_is_injected(registry: ModelRegistry) -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(create_models_router(lambda: registry, auth=_token_auth))
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer reader"}).status_code == 200
        reader = {**RAW, "authorization": "Bearer reader"}
        assert (
            c.post(
                "/v1/models/m/versions",
                params={"code_version": "c"},
                content=tiny_onnx(),
                headers=reader,
            ).status_code
            == 403
        )
        admin = {**RAW, "authorization": "Bearer admin"}
        assert (
            c.post(
                "/v1/models/m/versions",
                params={"code_version": "c"},
                content=tiny_onnx(),
                headers=admin,
            ).status_code
            == 201
        )
