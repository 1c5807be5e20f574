"""The gateway's HTTP app: the Open Inference Protocol v2 and the mesh's REST API.

A FastAPI app (:func:`create_gateway_app`) over a :class:`~mesh.serving._gateway.Gateway`:

=======  ==============================================  =================================
POST     /v2/models/{name}[/versions/{v}]/infer          inference (scope ``invoke``)
GET      /v2/models/{name}[/versions/{v}]                model metadata (``read``)
GET      /v2/models/{name}[/versions/{v}]/ready          200 ready, 503 not, 404 unknown
GET      /v2                                             server metadata (``read``)
GET      /v2/health/live, /v2/health/ready               open (for probes)
GET      /v1/routes                                      where each module is served (``read``)
GET      /metrics                                        Prometheus text (``read``)
*        /v1/models...                                   the model registry (read/admin)
*        routers given                                   ``/v1/modules``, ``/v1/placements``,
                                                         ``/v1/artifacts`` in the control plane
=======  ==============================================  =================================

The inference route is answered by :class:`GatewayApp` before FastAPI's
request machinery (measured: it costs more than the hop to the replica); the
same route is declared in FastAPI for the OpenAPI document.

Auth: ``Authorization: Bearer <token>`` (:mod:`mesh.security._auth`; ``mesh tokens
create``) on ``/v1`` and ``/v2`` (health excepted), checked before a body is read:
by the fast path for inference, by :class:`~mesh.serving._gateway_guard.RequestGuard`
(which also caps and times bodies) for every other route. Every error, on every route,
is the one JSON body of :mod:`mesh.core._http_errors`
(``{"error": "<message>", "type": ..., "status": ...}``) with the status its
class declares; 401s carry a ``WWW-Authenticate`` challenge.

Example:
    >>> auth = TokenAuth(TokenSigner.load_or_create(data_dir))          # doctest: +SKIP
    >>> gateway = Gateway(RouteTable(), auth=auth)                       # doctest: +SKIP
    >>> server = serve_asgi(create_gateway_app(gateway), port=8080)      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from mesh.core._errors import MeshError, RequestTooLargeError
from mesh.core._http_errors import error_status, install_error_handlers
from mesh.core._http_server import (
    MAX_BODY_BYTES,
    READ_TIMEOUT_S,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    respond,
    respond_error,
)
from mesh.core._metrics import CONTENT_TYPE
from mesh.core._read_deadlines import ReadDeadlines
from mesh.serving._gateway import FORWARDED_HEADERS, Gateway
from mesh.serving._gateway_guard import JSON_BODY_BYTES, RequestGuard
from mesh.serving._oip import ServingError, parse_model_path
from mesh.serving._oip_limits import REQUEST_SCHEMA

if TYPE_CHECKING:
    from mesh.models._registry import ModelRegistry

__all__ = ["GatewayApp", "create_gateway_app"]

logger = logging.getLogger(__name__)

_INFER_SUFFIX = "/infer"


class _InferFastPath:
    """Answers ``POST /v2/models/.../infer`` with no framework machinery in the way."""

    def __init__(
        self,
        gateway: Gateway,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        # One sweeping deadline timer per event loop (~1 us a request, not asyncio.timeout's ~6).
        self._deadlines: dict[int, ReadDeadlines] = {}

    def _read_deadlines(self) -> ReadDeadlines:
        key = id(asyncio.get_running_loop())
        deadlines = self._deadlines.get(key)
        if deadlines is None:
            deadlines = self._deadlines[key] = ReadDeadlines(self.read_timeout_s)
        return deadlines

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
            body = await self._read_deadlines().read(
                read_body(receive, self.max_body_bytes, timeout_s=None, scope=scope)
            )
            if body is None:
                raise RequestTooLargeError(
                    f"request body over {self.max_body_bytes} bytes, or the client left"
                )
            forwarded = [(k, v) for k, v in scope["headers"] if k in FORWARDED_HEADERS]
            status, headers, payload = await gateway.infer(module, version, body, forwarded)
        except Exception as exc:  # the one place a fast-path failure becomes a response
            if error_status(exc) >= 500 and not isinstance(exc, ServingError):
                logger.exception("inference on %s failed", path)
            await respond_error(send, exc)
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
    guard: RequestGuard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: the fast path, else the guard (token, body caps), then FastAPI."""
        if scope["type"] == "http":
            fast = self.fast_path
            if fast is not None and scope["method"] == "POST":
                path: str = scope["path"]
                if (
                    path.startswith("/v2/models/")
                    and path.endswith(_INFER_SUFFIX)
                    and await fast(scope, receive, send)
                ):
                    return
            guard = self.guard
            if guard is not None:
                guarded = await guard(scope, receive, send)
                if guarded is None:
                    return
                receive = guarded
        await super().__call__(scope, receive, send)


def create_gateway_app(
    gateway: Gateway,
    *,
    registry: ModelRegistry | Callable[[], ModelRegistry] | None = None,
    routers: Sequence[APIRouter] = (),
    title: str = "fogmesh",
    max_body_bytes: int = MAX_BODY_BYTES,
    json_body_bytes: int = JSON_BODY_BYTES,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> GatewayApp:
    """The gateway's FastAPI app: ``/v2`` inference, ``/v1/routes``, ``/metrics``, ``/v1/models``.

    Args:
        gateway: routes, auth and metrics.
        registry: mount ``/v1/models`` over this registry (read / admin scopes).
        routers: more routers to mount (e.g. the artifact router for agents).
        title: the OpenAPI title.
        max_body_bytes: inference bodies past this get 413.
        json_body_bytes: other bodies (the ``/v1`` JSON routes) past this get 413.
        read_timeout_s: a body not sent within this gets 408.
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
    app.fast_path = _InferFastPath(gateway, max_body_bytes, read_timeout_s)
    app.guard = RequestGuard(
        auth,
        max_body_bytes=max_body_bytes,
        json_body_bytes=json_body_bytes,
        read_timeout_s=read_timeout_s,
    )
    install_error_handlers(app)
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

    body_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": REQUEST_SCHEMA}},
        }
    }

    @app.post("/v2/models/{name}/infer", tags=["v2"], dependencies=invoke, openapi_extra=body_doc)
    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["v2"],
        dependencies=invoke,
        openapi_extra=body_doc,
    )
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        """Inference: JSON tensors, or the binary tensor extension."""
        body = await request.body()
        forwarded = [(k, v) for k, v in request.headers.raw if k in FORWARDED_HEADERS]
        status, headers, payload = await gateway.infer(name, version, body, forwarded)
        return Response(
            payload, status_code=status, headers={k.decode(): v.decode() for k, v in headers}
        )

    @app.get("/v1/routes", tags=["routes"], dependencies=read)
    def list_routes() -> list[dict[str, Any]]:
        """Where each module is served now: version, epoch, endpoints."""
        return [r.describe() for r in gateway.routes.routes()]

    @app.get("/metrics", tags=["metrics"], dependencies=read, response_class=PlainTextResponse)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: latency per module, version and node; errors; replicas.

        ``?name[]=NAME`` (repeatable) renders only those metrics.
        """
        names = request.query_params.getlist("name[]") or None
        return Response(gateway.metrics.render(names), media_type=CONTENT_TYPE)

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
