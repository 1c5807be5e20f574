"""REST API of the serving manager: ``/v1/modules``.

=======  ========================  ==================================================
GET      /v1/modules               modules: version, tier, epoch, replicas, status (read)
POST     /v1/modules               deploy a model version as a module (admin)
DELETE   /v1/modules/{name}        stop serving a module (admin)
=======  ========================  ==================================================

After a restart, a recorded module not served yet is listed too, with its
``status``: ``restoring`` or ``failed: <reason>`` (served ones say ``serving``);
``DELETE`` forgets one whose restore failed.

A deploy names a registered model and a version (``production``, ``v3``...);
the module's spec is built from the request (name defaults to the model's;
its tiers are the one it is deployed on and those in ``may_move_to``, where the
placement controller may move it: an edge module with ``fog`` there moves to a
fog node when its agent misses the SLO, and back).
Routes raise errors of the tree (:mod:`mesh.core._errors`), answered by the
app's handlers (:func:`mesh.core._http_errors.install_error_handlers`) with the
status each class declares and the one JSON error body: unknown model or
version 404, a module that is not deployed 404, a spec that does not validate
422, a deploy that fails (no node can hold it, replicas did not start) 409,
with the serving manager's message. Auth is injected as in
:mod:`mesh.models._api`: ``auth`` maps a scope to a FastAPI dependency.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mesh.core._errors import InvalidRequestError, MeshError
from mesh.sdk._specs import Canary, Drift, QoS, Resources
from mesh.serving._manager import ReplicaStatus
from mesh.serving._oip import ModelNotServedError
from mesh.serving._routes import ModuleRoute, RouteTable

__all__ = ["DeployRequest", "ModuleManager", "create_modules_router", "module_spec"]

logger = logging.getLogger(__name__)

AuthFactory = Callable[[str], Callable[..., Any]]


class ModuleManager(Protocol):
    """What the router needs of :class:`mesh.serving._manager.ServingManager`."""

    routes: RouteTable

    def deploy(
        self,
        spec: Any,
        version: Any = ...,
        *,
        tier: str | None = ...,
        site: str | None = ...,
        replicas: int | None = ...,
        batching: str = ...,
    ) -> ModuleRoute: ...

    def deploy_to_agent(
        self, spec: Any, agent_id: str, version: Any = ..., *, timeout_s: float = ...
    ) -> ModuleRoute: ...

    def undeploy(self, module: str, *, drain: bool = ...) -> None: ...

    def status(self, module: str | None = ...) -> list[ReplicaStatus]: ...


class DeployRequest(BaseModel):
    """``POST /v1/modules``: which model version to serve, where and how."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Registered model name.")
    version: str = Field("production", description="v3, production, candidate or latest.")
    tier: str = Field("fog", description="cloud or fog (edge needs `agent`).")
    site: str | None = Field(None, description="Pin replicas to nodes of this mesh.site.")
    agent: str | None = Field(None, description="Serve on this edge agent instead of Ray nodes.")
    name: str | None = Field(None, description="Module name; default the model's.")
    p95_ms: float = Field(50.0, gt=0, description="The module's p95 latency target (ms).")
    cpus: float = Field(0.25, gt=0, description="CPUs per replica.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling floor (0 = scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Autoscaling ceiling.")
    replicas: int | None = Field(None, ge=1, description="Replicas to start now.")
    may_move_to: list[Literal["cloud", "fog", "edge"]] = Field(
        default_factory=list,
        description="Tiers the placement controller may move it to, besides the one it is "
        "deployed on (e.g. fog for a module on an edge agent); default none.",
    )
    drift: Drift | None = Field(
        None, description="Its drift check (score per site, drift events); default none."
    )
    canary: Canary | None = Field(
        None, description="How its candidate versions are tried before promotion; default none."
    )


def module_spec(request: DeployRequest) -> Any:
    """The :class:`~mesh.sdk._specs.ModuleSpec` a deploy request describes.

    Raises:
        pydantic.ValidationError: the request's values make no valid spec.
    """
    from mesh.sdk._specs import ModuleSpec

    tier = "edge" if request.agent else request.tier
    return ModuleSpec(
        name=request.name or request.model,
        model=request.model,
        qos=QoS(p95_latency_ms=request.p95_ms),
        tiers=tuple(dict.fromkeys((tier, *request.may_move_to))),
        resources=Resources(cpus=request.cpus),
        min_replicas=request.min_replicas,
        max_replicas=request.max_replicas,
        drift=request.drift,
        canary=request.canary,
    )


def _describe(route: ModuleRoute, replicas: list[ReplicaStatus]) -> dict[str, Any]:
    out = route.describe()
    out["replicas"] = [
        {
            "replica_id": r.replica_id,
            "version": r.version,
            "state": r.state,
            "node": r.node,
            "url": r.url,
            "requests": r.requests,
            "p50_ms": r.p50_ms,
            "p95_ms": r.p95_ms,
        }
        for r in replicas
    ]
    return out


def _status(route: ModuleRoute) -> str:
    if route.endpoints:
        return "serving"
    return "scaled to zero" if route.scale_from_zero else "no ready replica"


def create_modules_router(
    manager: ModuleManager,
    *,
    auth: AuthFactory | None = None,
    restoring: Callable[[Callable[[str], bool]], list[dict[str, Any]]] | None = None,
    forget: Callable[[str], bool] | None = None,
    on_deployed: Callable[[Any, str], object] | None = None,
) -> APIRouter:
    """The ``/v1/modules`` routes over a serving manager.

    Args:
        manager: the serving manager.
        auth: scope -> FastAPI dependency (None: no auth, for tests).
        restoring: given "is this module served?", the recorded modules not served
            yet, each a dict with its ``status`` (``restoring`` or ``failed: ...``),
            listed after the served ones (whose ``status`` is ``serving``, or
            ``scaled to zero`` / ``no ready replica`` with no endpoint).
        forget: forgets a recorded module that is not served (``DELETE`` of a
            module whose restore failed); returns whether there was one.
        on_deployed: called with the spec and the version asked for once a deploy
            switched its route (the lifecycle services track a module with a drift
            check or a canary); its errors are logged, the deploy stands.
    """
    router = APIRouter(prefix="/v1/modules", tags=["modules"])

    def scope(name: str) -> list[Any]:
        return [Depends(auth(name))] if auth is not None else []

    @router.get("", dependencies=scope("read"))
    def list_modules() -> list[dict[str, Any]]:
        """Served modules with their route (version, tier, epoch, endpoints) and replicas."""
        statuses = manager.status()
        served = [
            {
                **_describe(route, [s for s in statuses if s.module == route.module]),
                "status": _status(route),
            }
            for route in sorted(manager.routes.routes(), key=lambda r: r.module)
        ]
        if restoring is not None:
            served += restoring(lambda module: manager.routes.get(module) is not None)
        return served

    @router.post("", dependencies=scope("admin"))
    def deploy(request: DeployRequest) -> dict[str, Any]:
        """Deploy a model version as a module; answers once the route has switched."""
        if request.tier == "edge" and not request.agent:
            raise InvalidRequestError("tier edge: name the edge agent to serve on (agent, --agent)")
        try:
            spec = module_spec(request)
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid module: {exc}") from None
        try:
            if request.agent:
                route = manager.deploy_to_agent(spec, request.agent, request.version)
            else:
                route = manager.deploy(
                    spec,
                    request.version,
                    tier=request.tier,
                    site=request.site,
                    replicas=request.replicas,
                )
        except MeshError as exc:  # answered with the status its class declares
            logger.warning("deploy of %s %s failed: %s", spec.name, request.version, exc)
            raise
        if on_deployed is not None:
            try:
                on_deployed(spec, request.version)
            except Exception:  # the module serves; only its lifecycle is missing
                logger.exception("deploy of %s: its drift check or canary not tracked", spec.name)
        return _describe(route, manager.status(spec.name))

    @router.delete("/{name}", status_code=204, dependencies=scope("admin"))
    def undeploy(name: str) -> Response:
        """Stop routing the module and stop its replicas after they drain."""
        if manager.routes.get(name) is None:
            if forget is not None and forget(name):
                return Response(status_code=204)
            raise ModelNotServedError(name, None, [r.module for r in manager.routes.routes()])
        manager.undeploy(name)
        return Response(status_code=204)

    return router
