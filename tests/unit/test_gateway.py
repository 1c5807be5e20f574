"""The gateway: OIP v2 routed to replicas and agents, auth, metrics, the real tritonclient."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mesh.edge._bus import EdgeConnectionError, EdgeInferenceError, EdgeRequestTimeoutError
from mesh.models._export import ModelSignature, TensorSpec
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth
from mesh.serving._gateway import Gateway
from mesh.serving._gateway_app import create_gateway_app
from mesh.serving._oip import decode_response, encode_request
from mesh.serving._routes import AgentEndpoint, ModuleRoute, ReplicaEndpoint, RouteTable
from mesh.serving._upstream import UpstreamPool
from mesh.serving.replica._server import ModelRunner, ReplicaApp, ServerThread, serve_asgi
from tests.support.agent_fixtures import build_tiny_model
from tests.support.http_errors import assert_error
from tests.support.metrics import sample

SIG = ModelSignature(
    inputs=(TensorSpec("x", "float32", ("N", 4)),),
    outputs=(TensorSpec("y", "float32", ("N", 4)),),
    opset=17,
)
SIGNER = TokenSigner(b"s" * 32)


@dataclass
class Replica:
    app: ReplicaApp
    server: ServerThread

    def endpoint(self, version: str = "v1", rid: str = "r1") -> ReplicaEndpoint:
        return ReplicaEndpoint(rid, f"node-{rid}", self.server.host, self.server.port, version)


def start_replica(path: Path, version: str = "v1") -> Replica:
    runner = ModelRunner(path, cpus=0.5, warmup_runs=1)
    app = ReplicaApp(runner, model="m", version=version, node_id="node-r1", replica_id="r1")
    app.warmup()
    return Replica(app, serve_asgi(app, port=0))


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    path = build_tiny_model(tmp_path_factory.mktemp("gw") / "tiny.onnx", scale=2.0)
    r = start_replica(path)
    try:
        yield r
    finally:
        r.server.stop()
        r.app.close()


def token(*scopes: str, ttl_s: float = 60.0, now: float | None = None) -> str:
    return SIGNER.issue(
        "tester", list(scopes), ttl_s=ttl_s, now=time.time() if now is None else now
    )


def bearer(*scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(*scopes)}"}


def make_gateway(routes: RouteTable, *, auth: bool = True, **kw: Any) -> Gateway:
    return Gateway(routes, auth=TokenAuth(SIGNER if auth else None), **kw)


async def request(gateway: Gateway, method: str, path: str, **kw: Any) -> httpx.Response:
    app = create_gateway_app(gateway)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw"
        ) as client:
            return await client.request(method, path, **kw)
    finally:
        await gateway.close()


def post_infer(
    gateway: Gateway,
    x: np.ndarray[Any, Any],
    *,
    module: str = "m",
    binary: bool = False,
    headers: dict[str, str] | None = None,
    version: str | None = None,
) -> httpx.Response:
    body, header_length = encode_request({"x": x}, binary=binary, binary_output=binary)
    h = dict(headers if headers is not None else bearer("invoke"))
    if header_length is not None:
        h["Inference-Header-Content-Length"] = str(header_length)
    path = (
        f"/v2/models/{module}/infer"
        if version is None
        else f"/v2/models/{module}/versions/{version}/infer"
    )
    return asyncio.run(request(gateway, "POST", path, content=body, headers=h))


def result(response: httpx.Response) -> np.ndarray[Any, Any]:
    raw = response.headers.get("inference-header-content-length")
    return decode_response(response.content, int(raw) if raw else None)["y"]


# ---------------------------------------------------------------- auth


def test_token_auth_checks_scheme_signature_expiry_and_scope() -> None:
    now = [1000.0]
    auth = TokenAuth(SIGNER, clock=lambda: now[0])
    good = token("invoke", ttl_s=10, now=1000.0)
    assert auth.check(f"Bearer {good}", "invoke") is not None
    assert auth.check(f"bearer {good}".encode(), "read") is not None  # cached, scope implied
    from mesh.security._auth import AuthError, ForbiddenError

    for header, needle in [
        (None, "missing"),
        ("Basic abc", "Bearer <token>"),
        ("Bearer mesh_x.y", "invalid token signature"),
    ]:
        with pytest.raises(AuthError, match=needle):
            auth.check(header, "read")
    with pytest.raises(ForbiddenError, match="needs 'admin'"):
        auth.check(f"Bearer {good}", "admin")
    now[0] = 1011.0
    with pytest.raises(AuthError, match="expired"):
        auth.check(f"Bearer {good}", "invoke")  # the cached claims expire too
    assert TokenAuth(None).check(None, "admin") is None


# ---------------------------------------------------------------- inference to replicas


@pytest.mark.parametrize("binary", [False, True])
def test_infer_through_the_gateway(replica: Replica, binary: bool) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG)
    gateway = make_gateway(routes)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    response = post_infer(gateway, x, binary=binary)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(result(response), 2 * x)
    versioned = post_infer(gateway, x, version="v1")
    assert versioned.status_code == 200
    text = gateway.metrics.render()
    series = {"module": "m", "version": "v1", "node": "node-r1"}
    assert sample(text, "mesh_inference_latency_seconds_count", **series) == 2
    assert sample(text, "mesh_inference_requests_total", **series, code="200") == 2


def test_auth_errors(replica: Replica) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG)
    gateway = make_gateway(routes)
    x = np.ones((1, 4), np.float32)
    missing = post_infer(gateway, x, headers={})
    assert_error(missing, 401, "AuthError", "missing Authorization")
    assert missing.headers["www-authenticate"] == 'Bearer realm="fogmesh"'
    expired = f"Bearer {token('invoke', ttl_s=1, now=time.time() - 10)}"
    assert post_infer(gateway, x, headers={"Authorization": expired}).status_code == 401
    forbidden = post_infer(gateway, x, headers=bearer("read"))
    assert_error(forbidden, 403, "ForbiddenError", "needs 'invoke'")
    meta = asyncio.run(
        request(gateway, "GET", "/v2/models/m")
    )  # through FastAPI, not the fast path
    assert_error(meta, 401, "AuthError", "missing Authorization")
    assert meta.headers["www-authenticate"] == 'Bearer realm="fogmesh"'
    assert_error(asyncio.run(request(gateway, "GET", "/metrics")), 401, "AuthError")
    assert asyncio.run(request(gateway, "GET", "/v2/health/ready")).status_code == 200
    assert 'reason="auth"' in gateway.metrics.render()


def test_unknown_model_and_version_get_404(replica: Replica) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG)
    gateway = make_gateway(routes, auth=False)
    x = np.ones((1, 4), np.float32)
    assert_error(post_infer(gateway, x, module="nope"), 404, "ModelNotServedError", "served: m")
    assert_error(post_infer(gateway, x, version="v7"), 404, "ModelNotServedError", "'v7'")
    meta = asyncio.run(request(gateway, "GET", "/v2/models/nope"))
    assert_error(meta, 404, "ModelNotServedError", "is not served")
    assert_error(asyncio.run(request(gateway, "GET", "/v2/nothing")), 404, "NotFoundError")
    wrong = asyncio.run(request(gateway, "DELETE", "/v2/models/m"))
    assert_error(wrong, 405, "MethodNotAllowedError")
    text = gateway.metrics.render()
    unknown = {"module": "<unknown>", "version": "", "node": "", "reason": "not_found"}
    assert sample(text, "mesh_inference_errors_total", **unknown) == 1
    assert 'module="nope"' not in text  # client-chosen names do not become labels
    assert asyncio.run(request(gateway, "GET", "/v2/models/nope/ready")).status_code == 404


def test_bad_tensors_get_400_with_the_signature(replica: Replica) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG)
    gateway = make_gateway(routes, auth=False)
    response = post_infer(gateway, np.ones((1, 3), np.float32))
    # The replica refused them; its body comes back as it was: the same one shape.
    assert_error(response, 400, "InferenceInputError", "expected inputs x: FP32[-1,4]")
    assert 'reason="bad_input"' in gateway.metrics.render()


def test_metadata_ready_routes_and_metrics(replica: Replica) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG, tier="fog")
    gateway = make_gateway(routes)
    read = bearer("read")
    meta = asyncio.run(request(gateway, "GET", "/v2/models/m", headers=read)).json()
    assert meta["name"] == "m" and meta["versions"] == ["v1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert (
        asyncio.run(request(gateway, "GET", "/v2/models/m/versions/v1", headers=read)).status_code
        == 200
    )
    assert (
        asyncio.run(request(gateway, "GET", "/v2/models/m/ready", headers=read)).status_code == 200
    )
    assert asyncio.run(request(gateway, "GET", "/v2", headers=read)).json()["name"] == "fogmesh"
    listed = asyncio.run(request(gateway, "GET", "/v1/routes", headers=read)).json()
    assert listed[0]["module"] == "m" and listed[0]["endpoints"][0]["kind"] == "replica"
    metrics = asyncio.run(request(gateway, "GET", "/metrics", headers=read))
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE mesh_inference_latency_seconds histogram" in metrics.text
    some = asyncio.run(
        request(gateway, "GET", "/metrics?name[]=mesh_inference_latency_seconds", headers=read)
    ).text
    assert "# TYPE mesh_inference_latency_seconds histogram" in some
    assert some.count("# TYPE") == 1 < metrics.text.count("# TYPE")  # the others left out
    routes.set("m", "v1", [])
    assert (
        asyncio.run(request(gateway, "GET", "/v2/models/m/ready", headers=read)).status_code == 503
    )
    openapi = asyncio.run(request(gateway, "GET", "/openapi.json")).json()
    assert "/v2/models/{name}/infer" in openapi["paths"]


def test_a_dead_endpoint_is_retried_on_another(replica: Replica) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = ReplicaEndpoint("r0", "node-r0", "127.0.0.1", dead_port, "v1")
    routes = RouteTable()
    routes.set("m", "v1", [dead, replica.endpoint()], signature=SIG)
    gateway = make_gateway(routes, auth=False)
    for _ in range(4):
        assert post_infer(gateway, np.ones((1, 4), np.float32)).status_code == 200
    retries = sample(gateway.metrics.render(), "mesh_inference_retries_total", module="m")
    assert (retries or 0) >= 1
    routes.set("m", "v1", [dead], signature=SIG)
    failed = post_infer(gateway, np.ones((1, 4), np.float32))
    assert_error(failed, 502, "UpstreamError", "could be reached")


@pytest.fixture
def overloaded(tmp_path: Path) -> Iterator[Replica]:
    """A real replica whose queue holds nothing: it answers every inference with 503."""
    runner = ModelRunner(build_tiny_model(tmp_path / "tiny.onnx"), cpus=0.5, warmup_runs=1)
    app = ReplicaApp(
        runner, model="m", version="v1", node_id="node-full", replica_id="full", max_queue=0
    )
    app.warmup()
    r = Replica(app, serve_asgi(app, port=0))
    try:
        yield r
    finally:
        r.server.stop()
        r.app.close()


def test_an_overloaded_replica_answers_503_and_the_gateway_retries_another(
    replica: Replica, overloaded: Replica
) -> None:
    full = overloaded.endpoint(rid="full")
    routes = RouteTable()
    routes.set("m", "v1", [full, replica.endpoint()], signature=SIG)
    gateway = make_gateway(routes, auth=False)
    x = np.ones((1, 4), np.float32)
    for _ in range(4):  # the gateway picks either first; the full one is always retried
        response = post_infer(gateway, x)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(result(response), 2 * x)
    retried = sample(gateway.metrics.render(), "mesh_inference_retries_total", module="m")
    assert retried is not None and retried >= 1
    assert overloaded.app.stats.window()["errors"] == retried
    routes.set("m", "v1", [full], signature=SIG)  # nowhere else to go: the client gets the 503
    assert_error(post_infer(gateway, x), 503, "ReplicaOverloadedError", "requests queued")
    errors = "mesh_inference_errors_total"
    text = gateway.metrics.render()
    assert sample(text, errors, module="m", version="v1", node="node-full", reason="not_ready") == 1


def test_no_endpoint_is_503_and_scale_from_zero_waits(replica: Replica) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [], signature=SIG)
    gateway = make_gateway(routes, auth=False)
    assert post_infer(gateway, np.ones((1, 4), np.float32)).status_code == 503
    routes.set("m", "v1", [], scale_from_zero=True)
    woken: list[str] = []

    def wake(module: str) -> None:  # what the serving manager does when asked
        woken.append(module)
        routes.set(module, "v1", [replica.endpoint()])

    routes.on_demand(lambda module: asyncio.get_running_loop().call_later(0.05, wake, module))
    assert post_infer(gateway, np.ones((1, 4), np.float32)).status_code == 200
    assert woken == ["m"]


# ---------------------------------------------------------------- inference to agents


class FakeEdge:
    """Answers like EdgeBus.infer: y = 2x, or an error."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: Exception | None = None

    async def infer(
        self,
        module: str,
        node: str,
        inputs: Any,
        *,
        timeout_s: float = 5.0,
        version: str | None = None,
    ) -> Any:
        self.calls.append((module, node))
        if self.fail is not None:
            raise self.fail

        class Reply:
            version = "v2"

        class Result:
            outputs = {"y": inputs["x"] * 2}
            reply = Reply()

        return Result()


@pytest.mark.parametrize("binary", [False, True])
def test_infer_on_an_agent(binary: bool) -> None:
    routes = RouteTable()
    routes.set("m", "v2", [AgentEndpoint("cam-1", "v2")], signature=SIG, tier="edge")
    edge = FakeEdge()
    gateway = make_gateway(routes, edge=edge)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    response = post_infer(gateway, x, binary=binary)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(result(response), 2 * x)
    assert edge.calls == [("m", "cam-1")]
    served = {"module": "m", "version": "v2", "node": "cam-1", "code": "200"}
    assert sample(gateway.metrics.render(), "mesh_inference_requests_total", **served) == 1
    bad = post_infer(gateway, np.ones((1, 5), np.float32))
    assert bad.status_code == 400 and "expected inputs x: FP32[-1,4]" in bad.json()["error"]
    assert len(edge.calls) == 1  # refused before going to the agent


def test_agent_errors_map_to_status_codes() -> None:
    routes = RouteTable()
    routes.set("m", "v2", [AgentEndpoint("cam-1", "v2")], tier="edge")  # no signature known
    edge = FakeEdge()
    gateway = make_gateway(routes, edge=edge, auth=False)
    x = np.ones((1, 4), np.float32)
    edge.fail = EdgeInferenceError(
        module="m", node="cam-1", code="bad_input", message="shape", expected=["x: float32[?,4]"]
    )
    assert_error(post_infer(gateway, x), 400, "InferenceInputError", "x: float32[?,4]")
    edge.fail = EdgeRequestTimeoutError(module="m", node="cam-1", correlation_id="c", timeout_s=1.0)
    assert_error(post_infer(gateway, x), 504, "UpstreamTimeoutError", "no reply")
    edge.fail = EdgeInferenceError(
        module="m", node="cam-1", code="unknown_module", message="not here"
    )
    assert_error(post_infer(gateway, x), 503, "ModelNotReadyError", "not here")
    edge.fail = EdgeInferenceError(module="m", node="cam-1", code="overloaded", message="busy")
    assert_error(post_infer(gateway, x), 503, "OverloadedError", "busy")  # as a replica's queue
    edge.fail = EdgeInferenceError(module="m", node="cam-1", code="internal", message="boom")
    assert_error(post_infer(gateway, x), 502, "UpstreamError", "boom")
    edge.fail = EdgeConnectionError("broker gone")
    assert_error(post_infer(gateway, x), 502, "UpstreamError", "broker gone")
    no_edge = make_gateway(routes, auth=False)
    assert_error(post_infer(no_edge, x), 503, "ModelNotReadyError", "no edge connection")
    text = gateway.metrics.render()
    # unknown_module and overloaded
    not_ready = {"module": "m", "version": "v2", "node": "cam-1", "reason": "not_ready"}
    assert sample(text, "mesh_inference_errors_total", **not_ready) == 2


# ---------------------------------------------------------------- the real tritonclient


@pytest.fixture
def served_gateway(replica: Replica) -> Iterator[tuple[str, RouteTable]]:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG)
    server = serve_asgi(create_gateway_app(make_gateway(routes)), port=0, lifespan="on")
    try:
        yield f"{server.host}:{server.port}", routes
    finally:
        server.stop()


def test_tritonclient_works_unchanged(served_gateway: tuple[str, RouteTable]) -> None:
    tritonclient_http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    url, _ = served_gateway
    client = tritonclient_http.InferenceServerClient(url=url)
    auth = bearer("invoke")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("m", headers=dict(auth))
        meta = client.get_model_metadata("m", headers=dict(auth))
        assert meta["inputs"][0]["shape"] == [-1, 4]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for binary in (True, False):
            inp = tritonclient_http.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [tritonclient_http.InferRequestedOutput("y", binary_data=binary)]
            # a fresh dict each call: tritonclient adds Inference-Header-Content-Length to it
            res = client.infer("m", [inp], outputs=outs, headers=dict(auth), request_id="42")
            np.testing.assert_allclose(res.as_numpy("y"), 2 * x)
            assert res.get_response()["id"] == "42"
        res = client.infer("m", [inp], headers=dict(auth))  # no outputs named: all, binary
        np.testing.assert_allclose(res.as_numpy("y"), 2 * x)
        with pytest.raises(InferenceServerException, match="missing Authorization"):
            client.infer("m", [inp])
        bad = tritonclient_http.InferInput("x", [2, 2], "FP32")
        bad.set_data_from_numpy(np.ones((2, 2), np.float32))
        with pytest.raises(InferenceServerException, match=r"expected inputs x: FP32\[-1,4\]"):
            client.infer("m", [bad], headers=dict(auth))
        with pytest.raises(InferenceServerException, match="not served"):
            client.infer("other", [inp], headers=dict(auth))
    finally:
        client.close()


# ---------------------------------------------------------------- the upstream pool


def test_pool_reuses_connections_and_survives_idle_closes(replica: Replica) -> None:
    host, port = replica.server.host, replica.server.port

    async def run() -> None:
        pool = UpstreamPool()
        first = await pool.request(host, port, "GET", "/v2/health/live")
        second = await pool.request(host, port, "GET", "/v2/health/live")
        assert first.status == second.status == 200
        assert len(pool._idle[(host, port)]) == 1
        conn = pool._idle[(host, port)][0]
        assert conn.used == 2
        assert conn.transport is not None
        conn.transport.close()  # as if the server had closed an idle connection
        await asyncio.sleep(0.01)
        assert (await pool.request(host, port, "GET", "/v2/health/live")).status == 200
        await pool.close()

    asyncio.run(run())


class _HandlerClosed:
    """A transport whose handle uvloop already closed, before ``connection_lost`` ran."""

    def __init__(self, real: asyncio.Transport) -> None:
        self._real = real

    def is_closing(self) -> bool:
        return False  # what uvloop's TCPTransport answered in that window

    def writelines(self, _data: object) -> None:
        raise RuntimeError(
            "unable to perform operation on <TCPTransport closed=True reading=False>; "
            "the handler is closed"
        )

    def close(self) -> None:
        self._real.close()


def test_a_connection_whose_handler_closed_under_the_write_is_retried_fresh(
    replica: Replica,
) -> None:
    # A replica killed while its connection sat idle: uvloop's write raised RuntimeError
    # ("the handler is closed"), which the gateway answered with 500 (tests/chaos/test_kill).
    host, port = replica.server.host, replica.server.port

    async def run() -> None:
        pool = UpstreamPool()
        assert (await pool.request(host, port, "GET", "/v2/health/live")).status == 200
        conn = pool._idle[(host, port)][0]
        assert conn.transport is not None
        conn.transport = _HandlerClosed(conn.transport)  # type: ignore[assignment]
        assert (await pool.request(host, port, "GET", "/v2/health/live")).status == 200
        assert pool._idle[(host, port)][0] is not conn and conn.closed
        await pool.close()

    asyncio.run(run())


def test_pool_reads_chunked_bodies_and_times_out() -> None:
    async def chunked(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(1.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"world", "more_body": False})

    server = serve_asgi(chunked, port=0)

    async def run() -> None:
        pool = UpstreamPool()
        response = await pool.request(server.host, server.port, "GET", "/")
        assert response.body == b"hello world"
        assert response.headers[b"transfer-encoding"] == b"chunked"
        with pytest.raises(TimeoutError):
            await pool.request(server.host, server.port, "GET", "/slow", timeout_s=0.1)
        assert (await pool.request(server.host, server.port, "GET", "/")).status == 200
        await pool.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_v1_models_is_mounted_behind_the_same_tokens(tmp_path: Path) -> None:
    from mesh import MeshSettings
    from mesh.models import ModelRegistry

    registry = ModelRegistry.open(MeshSettings(data_dir=tmp_path))
    try:
        registry.register("m", build_tiny_model(tmp_path / "m.onnx"), code_version="c1")
        gateway = make_gateway(RouteTable())
        app = create_gateway_app(gateway, registry=registry)

        async def run() -> list[int]:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw"
            ) as client:
                anonymous = await client.get("/v1/models")
                listed = await client.get("/v1/models", headers=bearer("read"))
                assert listed.json()[0]["name"] == "m"
                promote = await client.post(
                    "/v1/models/m/versions/v1/promote", headers=bearer("invoke")
                )
                admin = await client.post(
                    "/v1/models/m/versions/v1/promote", headers=bearer("admin")
                )
                return [
                    anonymous.status_code,
                    listed.status_code,
                    promote.status_code,
                    admin.status_code,
                ]

        assert asyncio.run(run()) == [401, 200, 403, 200]
    finally:
        registry.close()


def test_a_route_served_by_one_agent_names_it_for_listings() -> None:
    """`mesh modules list` and `mesh up`'s restore lines say which agent, not just "edge"."""
    on_agent = ModuleRoute("counter", "1", 1, (AgentEndpoint("edge-1", "1"),), tier="edge")
    assert on_agent.describe()["agent"] == "edge-1"
    two = ModuleRoute(
        "counter", "1", 1, (AgentEndpoint("a", "1"), AgentEndpoint("b", "1")), tier="edge"
    )
    assert two.describe()["agent"] is None
