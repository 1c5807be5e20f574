"""The gateway: the Open Inference Protocol v2, routed to wherever a module lives now.

A FastAPI app (:func:`create_gateway_app`) serving:

=======  ==============================================  =================================
POST     /v2/models/{name}[/versions/{v}]/infer          inference (scope ``invoke``)
GET      /v2/models/{name}[/versions/{v}]                model metadata (``read``)
GET      /v2/models/{name}[/versions/{v}]/ready          200 ready, 503 not, 404 unknown
GET      /v2                                             server metadata (``read``)
GET      /v2/health/live, /v2/health/ready               open (for probes)
GET      /v1/routes                                      where each module is served (``read``)
GET      /metrics                                        Prometheus text (``read``)
*        /v1/models...                                   the model registry (read/admin)
=======  ==============================================  =================================

Inference follows the module's :class:`~mesh.serving._routes.ModuleRoute`: for a
replica on a cloud or fog node the request body is forwarded as it came (JSON
or binary tensors) over a pooled keep-alive connection to the replica's own
socket, which checks the tensors and answers; for an edge agent the gateway
decodes the tensors, checks them against the model's signature and asks the
agent over MQTT through the edge gateway. A replica that cannot be reached (or
answers 503) gets the request retried once on another endpoint of the current
route. The real ``tritonclient[http]`` works against it unchanged.

The inference route is answered by :class:`GatewayApp` before FastAPI's
request machinery (measured: it costs more than the hop to the replica); the
same route is declared in FastAPI for the OpenAPI document.

Auth: ``Authorization: Bearer <token>`` (:mod:`mesh.security._auth`; ``mesh tokens
create``) on ``/v1`` and ``/v2`` (health excepted); verified tokens are cached
until they expire. Errors are ``{"error": "..."}`` with the status
:func:`mesh.serving._oip.http_status` gives.

Example:
    >>> auth = TokenAuth(TokenSigner.load_or_create(data_dir))          # doctest: +SKIP
    >>> gateway = Gateway(RouteTable(), auth=auth)                       # doctest: +SKIP
    >>> server = serve_asgi(create_gateway_app(gateway), port=8080)      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from mesh.core._errors import MeshError
from mesh.core._metrics import CONTENT_TYPE, MetricsRegistry
from mesh.security._auth import AuthError, TokenClaims, TokenSigner
from mesh.serving._oip import (
    HEADER_LENGTH,
    InferenceInputError,
    ModelNotReadyError,
    ModelNotServedError,
    UpstreamError,
    UpstreamTimeoutError,
    check_inputs,
    decode_request,
    encode_response,
    error_body,
    http_status,
    model_metadata,
    parse_model_path,
)
from mesh.serving._routes import AgentEndpoint, ModuleRoute, ReplicaEndpoint, RouteTable
from mesh.serving._upstream import UpstreamConnectionError, UpstreamPool
from mesh.serving.replica._server import Receive, Scope, Send, header, read_body, respond

if TYPE_CHECKING:
    import numpy.typing as npt

    from mesh.models._registry import ModelRegistry

__all__ = [
    "EdgeInference",
    "Gateway",
    "GatewayApp",
    "LatencyObserver",
    "TokenAuth",
    "create_gateway_app",
]

logger = logging.getLogger(__name__)

_FORWARD = (b"content-type", HEADER_LENGTH.encode())
_CHALLENGE = (b"www-authenticate", b'Bearer realm="fogmesh"')
_INFER_SUFFIX = "/infer"
_UNKNOWN = "<unknown>"


class EdgeInference(Protocol):
    """What the gateway needs of the edge gateway (:class:`mesh.edge._bus.EdgeBus`)."""

    async def infer(
        self,
        module: str,
        node: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        timeout_s: float = 5.0,
        version: str | None = None,
    ) -> Any:
        """Run ``module`` on agent ``node``; the result has ``outputs`` and ``reply.version``."""
        ...


class LatencyObserver(Protocol):
    """Told every answered request (the placement monitors: :class:`~mesh.control.Monitors`)."""

    def observe(self, module: str, node: str, latency_s: float, ok: bool) -> None:
        """A request of ``module`` on ``node`` took ``latency_s``; ``ok`` unless it failed."""
        ...


# ---------------------------------------------------------------- auth


class TokenAuth:
    """Bearer-token checks for ``/v1`` and ``/v2``, with verified tokens cached.

    Args:
        signer: verifies tokens; None turns auth off (every call is let through).
        clock: Unix seconds (injected in tests).
        cache_size: verified tokens remembered (each still checked for expiry).
    """

    def __init__(
        self,
        signer: TokenSigner | None,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
    ) -> None:
        """Check tokens with ``signer``."""
        self.signer = signer
        self._clock = clock
        self._cache: dict[str, TokenClaims] = {}
        self._cache_size = cache_size

    @property
    def enabled(self) -> bool:
        """Whether tokens are checked."""
        return self.signer is not None

    def check(self, authorization: str | bytes | None, scope: str) -> TokenClaims | None:
        """The claims of the request's token, which must grant ``scope``.

        Returns None when auth is off.

        Raises:
            AuthError: no token, not a bearer token, forged or expired (401).
            ForbiddenError: the token lacks ``scope`` (403).
        """
        if self.signer is None:
            return None
        if not authorization:
            raise AuthError(
                "missing Authorization: Bearer <token> (make one with "
                "`mesh tokens create NAME --scope invoke`)"
            )
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        now = self._clock()
        claims = self._cache.get(token)
        if claims is None:
            claims = self.signer.verify(token, now=now)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[token] = claims
        elif now >= claims.expires_at:
            self._cache.pop(token, None)
            raise AuthError(f"token {claims.token_id} of {claims.subject!r} has expired")
        claims.require(scope)
        return claims

    def dependency(self, scope: str) -> Callable[[Request], TokenClaims | None]:
        """A FastAPI dependency requiring ``scope``."""

        def require(request: Request) -> TokenClaims | None:
            return self.check(request.headers.get("authorization"), scope)

        require.__name__ = f"require_{scope}"
        return require


# ---------------------------------------------------------------- the gateway


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Gateway:
    """Routes inference to replicas and agents; records metrics per module, version and node.

    Args:
        routes: the route table (the serving manager keeps it).
        edge: the edge gateway, for modules served by agents.
        auth: token checks (default: off).
        metrics: where latency histograms and error counters go.
        observer: told each request's module, node, latency and outcome (placement monitors).
        upstream_timeout_s: how long a replica may take to answer.
        edge_timeout_s: how long an agent may take to answer.
        cold_start_timeout_s: how long a request waits for a module scaled to zero.
        retries: attempts on another endpoint after a connection failure or a 503.
    """

    def __init__(
        self,
        routes: RouteTable,
        *,
        edge: EdgeInference | None = None,
        auth: TokenAuth | None = None,
        metrics: MetricsRegistry | None = None,
        observer: LatencyObserver | None = None,
        upstream_timeout_s: float = 30.0,
        edge_timeout_s: float = 10.0,
        cold_start_timeout_s: float = 120.0,
        retries: int = 1,
    ) -> None:
        """Nothing is connected until the first request."""
        self.routes = routes
        self.edge = edge
        self.auth = auth or TokenAuth(None)
        self.metrics = metrics or MetricsRegistry()
        self.observer = observer
        self._upstream_timeout_s = upstream_timeout_s
        self._edge_timeout_s = edge_timeout_s
        self._cold_start_timeout_s = cold_start_timeout_s
        self._retries = retries
        self._pools: dict[int, UpstreamPool] = {}
        m = self.metrics
        labels = ("module", "version", "node")
        self._latency = m.histogram(
            "mesh_inference_latency_seconds", "Inference latency at the gateway.", labels
        )
        self._requests = m.counter(
            "mesh_inference_requests_total",
            "Inference requests answered, by status code.",
            (*labels, "code"),
        )
        self._errors = m.counter(
            "mesh_inference_errors_total",
            "Failed inference requests, by reason.",
            (*labels, "reason"),
        )
        self._slow = m.counter(
            "mesh_inference_slo_violations_total",
            "Requests slower than the module's p95 latency target.",
            labels,
        )
        self._retried = m.counter(
            "mesh_inference_retries_total", "Requests retried on another endpoint.", ("module",)
        )
        m.gauge_callback(
            "mesh_inference_in_flight",
            "Requests in flight at the gateway.",
            ("module",),
            lambda: [
                ((r.module,), float(routes.module_in_flight(r.module))) for r in routes.routes()
            ],
        )
        if edge is not None and hasattr(edge, "agents"):
            m.gauge_callback(
                "mesh_edge_agents",
                "Edge agents by liveness.",
                ("state",),
                lambda: self._agent_states(edge),
            )

    @staticmethod
    def _agent_states(edge: Any) -> list[tuple[tuple[str, ...], float]]:
        counts: dict[str, float] = {"online": 0.0, "stale": 0.0, "offline": 0.0}
        for view in edge.agents():
            state = view.health()
            counts[state] = counts.get(state, 0.0) + 1.0
        return [((k,), v) for k, v in counts.items()]

    def _pool(self) -> UpstreamPool:
        key = id(asyncio.get_running_loop())
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = UpstreamPool()
        return pool

    async def close(self) -> None:
        """Close the connections of the running loop's pool."""
        pool = self._pools.pop(id(asyncio.get_running_loop()), None)
        if pool is not None:
            await pool.close()

    # -- routing

    def route(self, module: str, version: str | None = None) -> ModuleRoute:
        """The route serving ``module`` (at ``version``, if given).

        Raises:
            ModelNotServedError: no such module or version is served.
        """
        route = self.routes.get(module)
        if route is None:
            raise ModelNotServedError(module, None, [r.module for r in self.routes.routes()])
        if version is not None and version != route.version:
            raise ModelNotServedError(module, version, [f"{module} {route.version}"])
        return route

    async def _wait_for_endpoints(self, route: ModuleRoute) -> ModuleRoute:
        if route.endpoints:
            return route
        if not route.scale_from_zero:
            raise ModelNotReadyError(f"model {route.module!r} has no ready replica or agent")
        self.routes.note_demand(route.module)
        deadline = time.monotonic() + self._cold_start_timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            current = self.routes.get(route.module)
            if current is None:
                raise ModelNotServedError(route.module)
            if current.endpoints:
                return current
            self.routes.note_demand(route.module)
        raise ModelNotReadyError(
            f"model {route.module!r} scaled to zero did not start a "
            f"replica within {self._cold_start_timeout_s:g} s"
        )

    async def infer(
        self, module: str, version: str | None, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Answer:
        """Answer one inference request: status, response headers and body.

        Raises:
            ServingError: not served, not ready, bad input, or the upstream failed
                (map with :func:`mesh.serving._oip.http_status`).
        """
        started = time.perf_counter()
        node, served_version = "", version or ""
        try:
            route = await self._wait_for_endpoints(self.route(module, version))
            served_version = route.version
            answer, node, served_version = await self._dispatch(route, body, headers)
        except Exception as exc:
            node = getattr(exc, "node", None) or node
            self.count_error(module, served_version, node, exc)
            # Only served modules: the names of others come from clients.
            if (
                self.observer is not None
                and http_status(exc) >= 500
                and self.routes.get(module) is not None
            ):
                self.observer.observe(module, node, time.perf_counter() - started, False)
            raise
        elapsed = time.perf_counter() - started
        status = answer[0]
        if self.observer is not None:
            self.observer.observe(module, node, elapsed, status < 500)
        self._latency.labels(module, served_version, node).observe(elapsed)
        self._requests.labels(module, served_version, node, str(status)).inc()
        if status >= 400:
            self._errors.labels(module, served_version, node, _reason_for(status)).inc()
        elif route.slo_ms is not None and elapsed * 1000.0 > route.slo_ms:
            self._slow.labels(module, served_version, node).inc()
        return answer

    def count_error(self, module: str, version: str, node: str, exc: BaseException) -> None:
        """Count a failed request (by status reason) in the metrics.

        Modules and versions that are not served are counted as ``<unknown>``: their
        names come from clients (before auth, too) and must not grow the metrics
        without bound.
        """
        route = self.routes.get(module)
        if route is None:
            module, version = _UNKNOWN, ""
        elif version and version != route.version:
            version = _UNKNOWN
        status = http_status(exc)
        self._requests.labels(module, version, node, str(status)).inc()
        self._errors.labels(module, version, node, _reason_for(status)).inc()

    async def _dispatch(
        self, route: ModuleRoute, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[Answer, str, str]:
        tried: list[ReplicaEndpoint] = []
        failure: Exception | None = None
        for attempt in range(self._retries + 1):
            endpoint = self.routes.pick(route, tried)
            if endpoint is None:
                break
            if isinstance(endpoint, AgentEndpoint):
                answer = await self._infer_agent(route, endpoint, body, headers)
                return answer, endpoint.node, endpoint.version
            if attempt:
                self._retried.labels(route.module).inc()
            self.routes.acquire(endpoint)
            try:
                response = await self._pool().request(
                    endpoint.host,
                    endpoint.port,
                    "POST",
                    f"/v2/models/{route.module}/infer",
                    body=body,
                    headers=headers,
                    timeout_s=self._upstream_timeout_s,
                )
            except UpstreamConnectionError as exc:
                logger.warning(
                    "%s %s: replica %s on node %s failed (%s); %s",
                    route.module,
                    endpoint.version,
                    endpoint.replica_id,
                    endpoint.node_id[:8],
                    exc,
                    "retrying" if attempt < self._retries else "giving up",
                )
                failure = exc
                tried.append(endpoint)
                route = self.routes.get(route.module) or route  # it may have switched
                continue
            except TimeoutError as exc:
                raise UpstreamTimeoutError(
                    f"replica {endpoint.replica_id} of {route.module} on node "
                    f"{endpoint.node_id[:8]} did not answer within "
                    f"{self._upstream_timeout_s:g} s",
                    model=route.module,
                    node=endpoint.node,
                ) from exc
            finally:
                self.routes.release(endpoint)
            if response.status == 503 and attempt < self._retries:
                tried.append(endpoint)  # overloaded or draining: another replica may answer
                route = self.routes.get(route.module) or route
                continue
            out = [(k, v) for k, v in response.headers.items() if k in _FORWARD]
            return (response.status, out, response.body), endpoint.node, endpoint.version
        detail = f" ({failure})" if failure is not None else ""
        raise UpstreamError(
            f"no replica of {route.module!r} could be reached{detail}", model=route.module
        )

    async def _infer_agent(
        self,
        route: ModuleRoute,
        endpoint: AgentEndpoint,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Answer:
        from mesh.edge._bus import (
            EdgeConnectionError,
            EdgeInferenceError,
            EdgeRequestTimeoutError,
        )

        module = route.module
        if self.edge is None:
            raise ModelNotReadyError(
                f"model {module!r} is on agent {endpoint.agent_id} but "
                "the gateway has no edge connection"
            )
        raw = next((v for k, v in headers if k == _FORWARD[1]), None)
        request = decode_request(module, body, _header_length(module, raw))
        if route.signature is not None:
            check_inputs(module, request.inputs, route.signature.inputs)
        self.routes.acquire(endpoint)
        try:
            result = await self.edge.infer(
                module, endpoint.agent_id, request.inputs, timeout_s=self._edge_timeout_s
            )
        except EdgeRequestTimeoutError as exc:
            raise UpstreamTimeoutError(str(exc), model=module, node=endpoint.agent_id) from exc
        except EdgeInferenceError as exc:
            if exc.code == "bad_input":
                raise InferenceInputError(module, str(exc), exc.expected) from exc
            if exc.code in ("unknown_module", "not_ready"):
                raise ModelNotReadyError(str(exc)) from exc
            raise UpstreamError(str(exc), model=module, node=endpoint.agent_id) from exc
        except EdgeConnectionError as exc:
            raise UpstreamError(str(exc), model=module, node=endpoint.agent_id) from exc
        finally:
            self.routes.release(endpoint)
        version = getattr(result.reply, "version", None) or endpoint.version
        payload, json_length = encode_response(
            module,
            version,
            request.id,
            result.outputs,
            requested=request.outputs,
            binary=request.binary,
        )
        if json_length is None:
            return 200, [(b"content-type", b"application/json")], payload
        return (
            200,
            [
                (b"content-type", b"application/octet-stream"),
                (_FORWARD[1], str(json_length).encode()),
            ],
            payload,
        )

    # -- metadata

    def metadata(self, module: str, version: str | None = None) -> dict[str, Any]:
        """The OIP model metadata of a served module.

        Raises:
            ModelNotServedError: not served.
            ModelNotReadyError: its signature is not known yet.
        """
        route = self.route(module, version)
        if route.signature is None:
            raise ModelNotReadyError(f"model {module!r} has no known signature yet")
        doc = model_metadata(module, [route.version], route.signature)
        doc["parameters"] = {"tier": route.tier, "epoch": route.epoch}
        return doc

    def ready(self, module: str, version: str | None = None) -> bool:
        """Whether the module has an endpoint (or can wake one)."""
        route = self.route(module, version)
        return bool(route.endpoints) or route.scale_from_zero


def _reason_for(status: int) -> str:
    return {
        400: "bad_input",
        401: "auth",
        403: "auth",
        404: "not_found",
        413: "too_large",
        503: "not_ready",
        504: "timeout",
    }.get(status, "upstream" if status >= 500 else "client")


def _header_length(module: str, raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InferenceInputError(module, f"{HEADER_LENGTH} is not a number: {raw!r}") from None


# ---------------------------------------------------------------- ASGI fast path


class _InferFastPath:
    """Answers ``POST /v2/models/.../infer`` with no framework machinery in the way."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve the request; False when it is not an inference route after all."""
        path: str = scope["path"]
        gateway = self.gateway
        parsed = parse_model_path(path)
        if parsed is None:
            return False
        module, version, _ = parsed
        try:
            try:
                gateway.auth.check(header(scope, b"authorization"), "invoke")
            except MeshError as exc:
                gateway.count_error(module, version or "", "", exc)
                raise
            body = await read_body(receive)
            if body is None:
                await respond(send, 413, error_body(ValueError("request body too large")))
                return True
            forwarded = [(k, v) for k, v in scope["headers"] if k in _FORWARD]
            status, headers, payload = await gateway.infer(module, version, body, forwarded)
        except MeshError as exc:
            status = http_status(exc)
            if status >= 500 and not isinstance(exc, UpstreamError | ModelNotReadyError):
                logger.exception("inference on %s failed", path)
            extra = [_CHALLENGE] if status == 401 else []
            await respond(send, status, error_body(exc), headers=extra)
            return True
        content_type = next((v for k, v in headers if k == b"content-type"), b"application/json")
        await respond(
            send,
            status,
            payload,
            content_type=content_type,
            headers=[h for h in headers if h[0] != b"content-type"],
        )
        return True


class GatewayApp(FastAPI):
    """The gateway's FastAPI app; inference requests skip FastAPI's per-request machinery.

    Measured here, FastAPI's request handling costs more than the whole hop to
    the replica, so ``POST /v2/models/.../infer`` is answered before it; the
    same route is declared in FastAPI for the OpenAPI document.
    """

    fast_path: _InferFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        fast = self.fast_path
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if (
                path.startswith("/v2/models/")
                and path.endswith(_INFER_SUFFIX)
                and await fast(scope, receive, send)
            ):
                return
        await super().__call__(scope, receive, send)


# ---------------------------------------------------------------- the app


def _error_response(exc: Exception) -> JSONResponse:
    status = http_status(exc)
    headers = {"WWW-Authenticate": _CHALLENGE[1].decode()} if status == 401 else None
    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)


def create_gateway_app(
    gateway: Gateway,
    *,
    registry: ModelRegistry | Callable[[], ModelRegistry] | None = None,
    routers: Sequence[APIRouter] = (),
    title: str = "fogmesh",
) -> GatewayApp:
    """The gateway's FastAPI app: ``/v2`` inference, ``/v1/routes``, ``/metrics``, ``/v1/models``.

    Args:
        gateway: routes, auth and metrics.
        registry: mount ``/v1/models`` over this registry (read / admin scopes).
        routers: more routers to mount (e.g. the artifact router for agents).
        title: the OpenAPI title.
    """
    auth = gateway.auth

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.close()  # the pooled connections of the serving loop

    app = GatewayApp(
        title=title,
        version="1",
        lifespan=lifespan,
        description="Open Inference Protocol v2 and the mesh's REST API.",
    )
    app.fast_path = _InferFastPath(gateway)

    async def on_mesh_error(_request: Request, exc: Exception) -> Response:
        return _error_response(exc)

    app.add_exception_handler(MeshError, on_mesh_error)
    read = [Depends(auth.dependency("read"))]
    invoke = [Depends(auth.dependency("invoke"))]

    @app.get("/v2/health/live", tags=["v2"])
    def live() -> Response:
        """Liveness: the gateway answers (no token needed)."""
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=["v2"])
    def server_ready() -> Response:
        """Readiness: the gateway routes requests (no token needed)."""
        return Response(status_code=200)

    @app.get("/v2", tags=["v2"], dependencies=read)
    def server_metadata() -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return {"name": "fogmesh", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}", tags=["v2"], dependencies=read)
    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"], dependencies=read)
    def model_meta(name: str, version: str | None = None) -> dict[str, Any]:
        """Model metadata: versions, platform, inputs and outputs."""
        return gateway.metadata(name, version)

    @app.get("/v2/models/{name}/ready", tags=["v2"], dependencies=read)
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], dependencies=read)
    def model_ready(name: str, version: str | None = None) -> Response:
        """200 when the model can answer, 503 when not (404 when not served)."""
        return Response(status_code=200 if gateway.ready(name, version) else 503)

    @app.post("/v2/models/{name}/infer", tags=["v2"], dependencies=invoke)
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], dependencies=invoke)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        """Inference: JSON tensors, or the binary tensor extension."""
        body = await request.body()
        forwarded = [(k, v) for k, v in request.headers.raw if k in _FORWARD]
        status, headers, payload = await gateway.infer(name, version, body, forwarded)
        return Response(
            payload, status_code=status, headers={k.decode(): v.decode() for k, v in headers}
        )

    @app.get("/v1/routes", tags=["routes"], dependencies=read)
    def list_routes() -> list[dict[str, Any]]:
        """Where each module is served now: version, epoch, endpoints."""
        return [r.describe() for r in gateway.routes.routes()]

    @app.get("/metrics", tags=["metrics"], dependencies=read, response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus metrics: latency per module, version and node; errors; replicas."""
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    if registry is not None:
        from mesh.models._api import create_models_router

        app.include_router(
            create_models_router(
                registry, auth=(lambda scope: auth.dependency(scope)) if auth.enabled else None
            )
        )
    for router in routers:
        app.include_router(router)
    return app
