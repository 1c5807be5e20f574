"""A replica answers only the gateway and the control plane (issue 14, item 2).

Before: a replica's OIP server, on its node's address, answered inference,
metadata, ``/stats`` and ``/metrics`` to anyone who could reach it. Now every
route but liveness and readiness (which carry no data) wants the replica key the
control plane issued at its start, as ``Authorization: Bearer <key>``; the
gateway's pool and the probes send it from the route's endpoint.

The replica here is the real one: ``python -m mesh.serving.replica._server``
(ONNX Runtime, uvicorn) with its key in the environment, or ``ReplicaApp``
under ``serve_asgi`` for the gateway's path.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mesh.serving._manager import HttpProbe
from mesh.serving._oip import decode_response, encode_request
from mesh.serving._routes import ReplicaEndpoint, RouteTable
from mesh.serving._upstream import UpstreamPool
from mesh.serving.replica._server import ModelRunner, ReplicaApp, serve_asgi
from tests.support.agent_fixtures import build_tiny_model
from tests.support.http_errors import assert_error
from tests.support.replica_process import ReplicaProcess
from tests.support.serving import running_gateway

KEY = secrets.token_urlsafe(32)
#: Every route with data: inference, metadata (model and server), stats, metrics.
GUARDED = [
    ("POST", "/v2/models/m/infer"),
    ("POST", "/v2/models/m/versions/v1/infer"),
    ("GET", "/v2/models/m"),
    ("GET", "/v2"),
    ("GET", "/stats"),
    ("GET", "/metrics"),
]


def infer_body() -> tuple[bytes, dict[str, str]]:
    body, length = encode_request({"x": np.ones((1, 4), np.float32)}, binary=False)
    assert length is None
    return body, {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", scale=2.0)


@pytest.fixture(scope="module")
def replica(model: Path) -> Iterator[ReplicaProcess]:
    with ReplicaProcess(model, key=KEY) as process:
        yield process


def call(
    replica: ReplicaProcess, method: str, path: str, key: str | None, auth: str | None = None
) -> httpx.Response:
    body, headers = infer_body() if method == "POST" else (b"", {})
    if auth is not None:
        headers["authorization"] = auth
    elif key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.request(method, replica.url + path, content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_a_call_without_the_key_is_refused(replica: ReplicaProcess, method: str, path: str) -> None:
    response = call(replica, method, path, None)
    assert_error(response, 401, "AuthError", "replica key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["connection"] == "close"


@pytest.mark.parametrize(("method", "path"), GUARDED)
@pytest.mark.parametrize(
    "auth",
    [
        f"Bearer {secrets.token_urlsafe(32)}",  # another replica's key
        f"Bearer {KEY[:-1]}",  # one character short
        f"Bearer {KEY}x",  # one too many
        KEY,  # no scheme
        f"Basic {KEY}",
        "Bearer",
    ],
    ids=["other", "short", "long", "bare", "basic", "empty"],
)
def test_a_wrong_key_is_refused(replica: ReplicaProcess, method: str, path: str, auth: str) -> None:
    assert_error(call(replica, method, path, None, auth=auth), 401, "AuthError")


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_the_right_key_opens_what_no_key_does(
    replica: ReplicaProcess, method: str, path: str
) -> None:
    assert_error(call(replica, method, path, None), 401, "AuthError")
    response = call(replica, method, path, KEY)
    assert response.status_code == 200, response.text
    if path.endswith("/infer"):
        outputs = decode_response(response.content, None)
        np.testing.assert_allclose(outputs["y"], np.full((1, 4), 2.0, np.float32))


def test_only_liveness_and_readiness_answer_without_the_key(replica: ReplicaProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):  # no data in them
        response = httpx.get(replica.url + path, timeout=10)
        assert response.status_code == 200 and response.content == b""
    for path in ("/v2/models/m/ready", "/v2/models/m/versions/v1/ready", "/v2/nothing"):
        assert_error(httpx.get(replica.url + path, timeout=10), 401, "AuthError")


def test_a_key_given_on_stdin_is_required(model: Path) -> None:
    key = secrets.token_urlsafe(32)
    with ReplicaProcess(model, key=key, stdin_key=True) as process:
        assert call(process, "GET", "/stats", None).status_code == 401
        assert call(process, "GET", "/stats", key).status_code == 200
        assert key.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()


def test_a_replica_on_a_reachable_address_will_not_start_without_a_key(model: Path) -> None:
    with pytest.raises(RuntimeError, match="give the replica a key"):
        ReplicaProcess(model, host="0.0.0.0", start_timeout_s=30).stop()  # stopped if it started


def test_the_probes_and_the_gateway_pool_send_the_key(replica: ReplicaProcess) -> None:
    keyed = ReplicaEndpoint("r1", "n1", replica.host, replica.port, "v1", key=KEY)
    keyless = ReplicaEndpoint("r1", "n1", replica.host, replica.port, "v1")
    stats = HttpProbe().stats(keyed, 10.0)
    assert stats is not None and stats["model"] == "m"
    assert HttpProbe().stats(keyless, 10.0) is None

    async def both() -> tuple[int, int]:
        pool = UpstreamPool()
        body, _ = infer_body()
        try:
            path = "/v2/models/m/infer"
            ok = await pool.request(
                replica.host, replica.port, "POST", path, body=body,
                authorization=keyed.authorization, timeout_s=10,
            )  # fmt: skip
            refused = await pool.request(
                replica.host, replica.port, "POST", path, body=body, timeout_s=10
            )
        finally:
            await pool.close()
        return ok.status, refused.status

    assert asyncio.run(both()) == (200, 401)


def test_the_key_is_never_shown(replica: ReplicaProcess) -> None:
    endpoint = ReplicaEndpoint("r1", "n1", replica.host, replica.port, "v1", key=KEY)
    assert KEY not in repr(endpoint) and KEY not in str(endpoint.describe())


def test_the_gateway_reaches_a_keyed_replica(model: Path) -> None:
    key = secrets.token_urlsafe(32)
    runner = ModelRunner(model, cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version="v1", replica_id="r1", key=key)
    app.warmup()
    server = serve_asgi(app, port=0)
    try:
        routes = RouteTable()
        routes.set("m", "v1", [ReplicaEndpoint("r1", "n1", server.host, server.port, "v1", key)])
        body, headers = infer_body()
        with running_gateway(routes) as (_, gateway):
            response = httpx.post(
                gateway.url + "/v2/models/m/infer", content=body, headers=headers, timeout=30
            )
        assert response.status_code == 200, response.text
        assert decode_response(response.content, None)["y"].tolist() == [[2.0] * 4]
        direct = httpx.post(
            server.url + "/v2/models/m/infer", content=body, headers=headers, timeout=30
        )
        assert_error(direct, 401, "AuthError")
    finally:
        server.stop()
        app.close()
