"""The gateway: Open Inference Protocol v2 requests, routed to wherever a module lives now.

:class:`Gateway` answers inference and metadata requests for its HTTP app
(:mod:`mesh.serving._gateway_app`). Inference follows the module's
:class:`~mesh.serving._routes.ModuleRoute`: for a replica on a cloud or fog
node the request body is forwarded as it came (JSON or binary tensors) over a
pooled keep-alive connection to the replica's own socket, which checks the
tensors and answers; for an edge agent the gateway decodes the tensors, checks
them against the model's signature and asks the agent over MQTT through the
edge bus. The real ``tritonclient[http]`` works against it unchanged.

Failover and retries: a replica that refuses or resets the connection (or closes
it before the answer is complete), or answers 502, is marked down in the route
table at once (:meth:`~mesh.serving._routes.RouteTable.mark_down`: the serving
manager is told, and no later request goes there) and the request is retried on
another endpoint of the current route, or on its warm standby; inference is
idempotent, so that is safe. A replica that answers 503 (its queue is full,
:class:`~mesh.serving.replica._batching.ReplicaOverloadedError`, or it is
draining) gets the request retried elsewhere too, without being marked down. All
attempts together stay within the request's deadline (``upstream_timeout_s``);
with no other endpoint the client gets the last 502/503.
``mesh_inference_retries_total`` counts retried requests and
``mesh_inference_failovers_total`` replicas marked down.

Canary: a route's ``canary`` endpoints (a candidate version beside production,
:mod:`mesh.serving._canary_replicas`) take their share of the requests
(:meth:`~mesh.serving._routes.RouteTable.pick`); theirs are counted under their
version, and not told to the placement monitors (the canary judges them). A
request naming production's version never goes there.

Errors: everything raises a class of the tree in :mod:`mesh.core._errors`,
whose status :mod:`mesh.core._http_errors` reads. An agent's error comes back
over MQTT as an ``edge_agent.protocol.ErrorCode``;
:data:`~mesh.serving._agent_errors.AGENT_ERRORS` turns each code into one class of
that tree (``overloaded`` is 503, like a replica's).

Auth: :class:`~mesh.security._token_auth.TokenAuth` checks ``Authorization: Bearer <token>``
(:mod:`mesh.security._auth`; ``mesh tokens create``); verified tokens are
cached until they expire.

Example:
    >>> auth = TokenAuth(TokenSigner.load_or_create(data_dir))          # doctest: +SKIP
    >>> gateway = Gateway(RouteTable(), auth=auth)                       # doctest: +SKIP
    >>> status, headers, body = await gateway.infer("counter", None, body, [])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mesh.core._errors import MeshError
from mesh.core._http_errors import error_status
from mesh.core._metrics import MetricsRegistry
from mesh.security._token_auth import TokenAuth
from mesh.serving import _route_waits as route_waits
from mesh.serving._agent_errors import agent_error
from mesh.serving._contract import AgentErrorReply
from mesh.serving._decode_pool import DecodePool
from mesh.serving._oip import (
    HEADER_LENGTH,
    InferenceInputError,
    ModelNotReadyError,
    ModelNotServedError,
    UpstreamError,
    UpstreamTimeoutError,
    check_inputs,
    encode_response,
    model_metadata,
)
from mesh.serving._routes import AgentEndpoint, ModuleRoute, ReplicaEndpoint, RouteTable
from mesh.serving._upstream import UpstreamConnectionError, UpstreamPool

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "FORWARDED_HEADERS",
    "EdgeInference",
    "Gateway",
    "LatencyObserver",
]

logger = logging.getLogger(__name__)

#: Request headers passed on to a replica (and response headers passed back).
FORWARDED_HEADERS = (b"content-type", HEADER_LENGTH.encode())
_UNKNOWN = "<unknown>"
#: Metric series kept per (module, version, node, status) before the cache starts over.
_MAX_CHILDREN = 4096


class EdgeInference(Protocol):
    """What the gateway needs of the edge bus (:class:`mesh.edge._bus.EdgeBus`).

    ``infer`` raises ``TimeoutError`` when no reply came in time, ``ConnectionError``
    when the edge connection is down, and an :class:`AgentErrorReply` when the
    agent answered with an error.
    """

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
    """Told each request served or failed: the placement :class:`~mesh.control.Monitors`.

    Not one refused (4xx): a client's bad input says nothing of the node.
    """

    def observe(self, module: str, node: str, latency_s: float, ok: bool) -> None:
        """A request of ``module`` on ``node`` took ``latency_s``; ``ok`` unless it failed (5xx)."""
        ...


# ---------------------------------------------------------------- the gateway


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Gateway:
    """Routes inference to replicas and agents; records metrics per module, version and node.

    Args:
        routes: the route table (the serving manager keeps it).
        edge: the edge bus, for modules served by agents.
        auth: token checks (default: off).
        metrics: where latency histograms and error counters go.
        observer: told each request's module, node, latency and outcome (placement monitors).
        upstream_timeout_s: how long a replica may take to answer.
        edge_timeout_s: how long an agent may take to answer.
        cold_start_timeout_s: how long a request waits for a module scaled to zero.
        retries: attempts on another endpoint (or a standby) after a connection
            failure, a 502 or a 503; all attempts together stay within
            ``upstream_timeout_s``.
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
        retries: int = 2,
        restoring: Callable[[str], bool] | None = None,
    ) -> None:
        """Nothing is connected until the first request.

        ``restoring(module)`` says whether a module recorded before a restart is
        still being restored: its requests wait for it (within
        ``upstream_timeout_s``), then get 503, never 404 "not served".
        """
        self.routes = routes
        self.edge = edge
        self.auth = auth or TokenAuth(None)
        self.metrics = metrics or MetricsRegistry()
        self.observer = observer
        self._upstream_timeout_s = upstream_timeout_s
        self._edge_timeout_s = edge_timeout_s
        self._cold_start_timeout_s = cold_start_timeout_s
        self._retries = retries
        self._restoring = restoring
        self._pools: dict[int, UpstreamPool] = {}
        self._decoder = DecodePool()
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
            "Requests that missed the module's p95 latency target: slower, failed or timed out.",
            labels,
        )
        self._lost = m.counter(
            "mesh_inference_lost_total",
            "Requests lost: the mesh failed them (5xx) or they timed out (504). "
            "Refused ones (4xx) are the client's and not counted.",
            ("module", "reason"),
        )
        self._retried = m.counter(
            "mesh_inference_retries_total", "Requests retried on another endpoint.", ("module",)
        )
        self._failovers = m.counter(
            "mesh_inference_failovers_total",
            "Replicas the gateway marked down after a refused or reset connection.",
            ("module",),
        )
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        m.gauge_callback(
            "mesh_inference_in_flight",
            "Requests in flight at the gateway.",
            ("module",),
            lambda: [
                ((r.module,), float(routes.module_in_flight(r.module))) for r in routes.routes()
            ],
        )
        if edge is not None and hasattr(edge, "agents"):
            agents = m.per_scrape(edge.agents)
            m.gauge_callback(
                "mesh_edge_agents",
                "Edge agents by liveness.",
                ("state",),
                # edge.agents, read once a scrape with the agent gauges (runtime._state_gauges)
                lambda: self._agent_states(agents()),
            )

    @staticmethod
    def _agent_states(agents: Iterable[Any]) -> list[tuple[tuple[str, ...], float]]:
        counts: dict[str, float] = {"online": 0.0, "stale": 0.0, "offline": 0.0}
        for view in agents:
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
        """Close the connections of the running loop's pool, and stop the decoding worker."""
        self._decoder.close()
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
        if version is not None and route.canary:  # asked for production: not its candidate
            route = dataclasses.replace(route, canary=(), canary_share=0.0)
        return route

    async def _route_restored(self, module: str, version: str | None) -> ModuleRoute:
        """The route of a module with none: waited for while a restart restores it.

        Only called when :meth:`route` found none (off the hot path); 404 when
        the module is not being restored, 503 if its restoration does not come.
        """
        restoring = self._restoring
        if restoring is not None and restoring(module):
            await route_waits.restored(self.routes, module, restoring, self._upstream_timeout_s)
        return self.route(module, version)

    async def _wait_for_endpoints(self, route: ModuleRoute) -> ModuleRoute:
        if route.endpoints or route.standby:
            return route
        if not route.scale_from_zero:
            # Its replicas were all lost at once: a replacement is starting.
            wait_s = min(route_waits.REPLACEMENT_WAIT_S, self._upstream_timeout_s)
            return await route_waits.replacement(self.routes, route, wait_s)
        return await route_waits.cold_start(self.routes, route, self._cold_start_timeout_s)

    async def infer(
        self, module: str, version: str | None, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Answer:
        """Answer one inference request: status, response headers and body.

        Raises:
            ServingError: not served, not ready, bad input, or the upstream failed
                (their class declares the HTTP status).
        """
        started = time.perf_counter()
        node, served_version = "", version or ""
        try:
            if self.routes.get(module) is None:
                route = await self._route_restored(module, version)
            else:
                route = self.route(module, version)
            route = await self._wait_for_endpoints(route)
            served_version = route.version
            answer, node, served_version = await self._dispatch(route, body, headers)
        except Exception as exc:
            node = getattr(exc, "node", None) or node
            self.count_error(module, served_version, node, exc)
            # Only served modules: the names of others come from clients.
            if error_status(exc) >= 500 and self.routes.get(module) is not None:
                self._count_lost(module, served_version, node, error_status(exc))
                if self.observer is not None:
                    self.observer.observe(module, node, time.perf_counter() - started, False)
            raise
        elapsed = time.perf_counter() - started
        status = answer[0]
        # A refused request (4xx: bad input, say) says nothing of the node's speed:
        # no latency sample for the placement trigger. A failure is one, not ok. Nor
        # does a candidate's on canary beside production (the canary judges it).
        if (
            self.observer is not None
            and not 400 <= status < 500
            and served_version == route.version
        ):
            self.observer.observe(module, node, elapsed, status < 400)
        key = (module, served_version, node, status)
        children = self._children.get(key) or self._children_for(key)
        children[0].observe(elapsed)
        children[1].inc()
        if status >= 400:
            self._errors.labels(module, served_version, node, _reason_for(status)).inc()
            if status >= 500:
                self._count_lost(module, served_version, node, status)
        elif route.slo_ms is not None and elapsed * 1000.0 > route.slo_ms:
            self._slow.labels(module, served_version, node).inc()
        return answer

    def _count_lost(self, module: str, version: str, node: str, status: int) -> None:
        """A served module's request the mesh failed (5xx) or let time out (504): lost.

        A lost request misses the module's SLO too.
        """
        self._lost.labels(module, "timeout" if status == 504 else "failed").inc()
        self._slow.labels(module, version, node).inc()

    def _children_for(self, key: tuple[str, str, str, int]) -> tuple[Any, Any]:
        """The latency and request-count series of one (module, version, node, status).

        Looked up once and kept: ``labels()`` costs more than the observation itself
        (a lock and a dict lookup per metric, measured ~3 us a request). The keys are
        served modules only, so the cache is as small as the routes.
        """
        module, version, node, status = key
        if len(self._children) >= _MAX_CHILDREN:
            self._children.clear()
        children = (
            self._latency.labels(module, version, node),
            self._requests.labels(module, version, node, str(status)),
        )
        self._children[key] = children
        return children

    def count_error(self, module: str, version: str, node: str, exc: BaseException) -> None:
        """Count a failed request (by status reason) in the metrics.

        Modules and versions that are not served are counted as ``<unknown>``: their
        names come from clients (before auth, too) and must not grow the metrics
        without bound.
        """
        route = self.routes.get(module)
        if route is None:
            module, version = _UNKNOWN, ""
        elif (
            version and version != route.version and all(e.version != version for e in route.canary)
        ):
            version = _UNKNOWN
        status = error_status(exc)
        self._requests.labels(module, version, node, str(status)).inc()
        self._errors.labels(module, version, node, _reason_for(status)).inc()

    async def _dispatch(
        self, route: ModuleRoute, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[Answer, str, str]:
        tried: list[ReplicaEndpoint] = []
        failure: Exception | None = None
        refused: tuple[Answer, ReplicaEndpoint] | None = None  # the last 502/503 answer
        deadline = time.monotonic() + self._upstream_timeout_s
        for attempt in range(self._retries + 1):
            endpoint = self.routes.pick(route, tried)
            if endpoint is None and failure is not None:  # every one refused: one is starting
                until = min(deadline, time.monotonic() + route_waits.REPLACEMENT_WAIT_S)
                route, endpoint = await route_waits.new_endpoint(self.routes, route, tried, until)
            if endpoint is None:
                break
            if isinstance(endpoint, AgentEndpoint):
                answer = await self._infer_agent(route, endpoint, body, headers)
                return answer, endpoint.node, endpoint.version
            left = deadline - time.monotonic()
            if left <= 0:
                break  # the request's deadline passed while failing over
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
                    authorization=endpoint.authorization,
                    timeout_s=left,
                )
            except UpstreamConnectionError as exc:
                # Refused, reset or closed before the answer: the replica (or its node)
                # is gone. Inference is idempotent, so the request goes to another one.
                self._fail_over(route, endpoint, exc, attempt)
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
            out = [(k, v) for k, v in response.headers.items() if k in FORWARDED_HEADERS]
            answer = (response.status, out, response.body)
            if response.status in (502, 503) and attempt < self._retries:
                # 503: overloaded or draining, another replica may answer (a full
                # queue is not a dead replica: not marked down). 502: the replica
                # failed to answer: marked down.
                if response.status == 502:
                    self._fail_over(route, endpoint, None, attempt)
                refused = (answer, endpoint)
                tried.append(endpoint)
                route = self.routes.get(route.module) or route
                continue
            return answer, endpoint.node, endpoint.version
        if refused is not None:  # no other endpoint to try: the client gets the 502/503
            answer, endpoint = refused
            return answer, endpoint.node, endpoint.version
        if tried and time.monotonic() >= deadline:
            raise UpstreamTimeoutError(
                f"no replica of {route.module!r} answered within "
                f"{self._upstream_timeout_s:g} s ({len(tried)} tried)",
                model=route.module,
            )
        detail = f" ({failure})" if failure is not None else ""
        raise UpstreamError(
            f"no replica of {route.module!r} could be reached{detail}", model=route.module
        )

    def _fail_over(
        self,
        route: ModuleRoute,
        endpoint: ReplicaEndpoint,
        exc: Exception | None,
        attempt: int,
    ) -> None:
        """Route around ``endpoint`` at once: mark it down, drop its idle connections."""
        if self.routes.mark_down(route.module, endpoint):
            self._failovers.labels(route.module).inc()
            logger.warning(
                "%s %s: replica %s on node %s failed (%s); marked down, %s",
                route.module,
                endpoint.version,
                endpoint.replica_id,
                endpoint.node_id[:8],
                exc or "502",
                "retrying" if attempt < self._retries else "giving up",
            )
        self._pool().forget(endpoint.host, endpoint.port)

    async def _infer_agent(
        self,
        route: ModuleRoute,
        endpoint: AgentEndpoint,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Answer:
        module = route.module
        if self.edge is None:
            raise ModelNotReadyError(
                f"model {module!r} is on agent {endpoint.agent_id} but "
                "the gateway has no edge connection",
                model=module,
                node=endpoint.agent_id,
            )
        raw = next((v for k, v in headers if k == FORWARDED_HEADERS[1]), None)
        request = await self._decoder.decode(module, body, _header_length(module, raw))
        if route.signature is not None:
            check_inputs(module, request.inputs, route.signature.inputs)
        self.routes.acquire(endpoint)
        try:
            result = await self.edge.infer(
                module, endpoint.agent_id, request.inputs, timeout_s=self._edge_timeout_s
            )
        except TimeoutError as exc:  # no reply in time
            raise UpstreamTimeoutError(str(exc), model=module, node=endpoint.agent_id) from exc
        except ConnectionError as exc:  # the edge connection is down
            raise UpstreamError(str(exc), model=module, node=endpoint.agent_id) from exc
        except MeshError as exc:
            if not isinstance(exc, AgentErrorReply):
                raise
            raise agent_error(exc, module, endpoint.agent_id) from exc
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
                (FORWARDED_HEADERS[1], str(json_length).encode()),
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
            raise ModelNotReadyError(f"model {module!r} has no known signature yet", model=module)
        doc = model_metadata(module, [route.version], route.signature)
        doc["parameters"] = {"tier": route.tier, "epoch": route.epoch}
        return doc

    def ready(self, module: str, version: str | None = None) -> bool:
        """Whether the module has an endpoint (or can wake one)."""
        route = self.route(module, version)
        return bool(route.endpoints) or route.scale_from_zero


# ---------------------------------------------------------------- agent errors


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
        raise InferenceInputError(
            module, f"{HEADER_LENGTH} is not a number: {raw[:32]!r}"
        ) from None
