"""REST API of the placement controller: ``/v1/placements``.

=======  ==================================  ==============================================
GET      /v1/placements                      current placement, plan and decisions (read)
GET      /v1/placements/history              migrations, newest first (read)
POST     /v1/placements/{module}/pin         fix a module to ``{"node": ..}`` or ``{"tier": ..}``
DELETE   /v1/placements/{module}/pin         let the engine place it again (admin)
=======  ==================================  ==============================================

Routes raise errors of the tree (:mod:`mesh.core._errors`), answered by the
app's handlers (:func:`mesh.core._http_errors.install_error_handlers`) with the
one JSON error body: an unknown module 404, a module that is not pinned 404, a
bad pin 422 (neither or both of node and tier, a tier the module may not use,
an unknown node).
Auth is injected as in :mod:`mesh.serving._api`: ``auth`` maps a scope to a
FastAPI dependency.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures.

import logging
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from mesh.control._store import MigrationRecord, Pin
from mesh.core._errors import InvalidRequestError, NotFoundError
from mesh.serving._oip import ModelNotServedError

__all__ = ["PinRequest", "PlacementService", "create_placements_router"]

logger = logging.getLogger(__name__)

AuthFactory = Callable[[str], Callable[..., Any]]


class PlacementService(Protocol):
    """What the router needs of :class:`mesh.control._controller.PlacementController`."""

    def describe(self) -> dict[str, Any]:
        """The current placement."""
        ...

    def history(self, module: str | None, limit: int) -> list[MigrationRecord]:
        """Migrations, newest first."""
        ...

    def pin(self, module: str, *, node: str | None = None, tier: str | None = None) -> Pin:
        """Fix a module to a node or a tier."""
        ...

    def unpin(self, module: str) -> bool:
        """Let the engine place it again."""
        ...


class PinRequest(BaseModel):
    """``POST /v1/placements/{module}/pin``: a node or a tier."""

    model_config = ConfigDict(extra="forbid")

    node: str | None = Field(None, min_length=1, description="Ray node id or agent id.")
    tier: str | None = Field(None, description="edge, fog or cloud.")


def create_placements_router(
    service: PlacementService, *, auth: AuthFactory | None = None
) -> APIRouter:
    """The ``/v1/placements`` routes over a placement controller."""
    router = APIRouter(prefix="/v1/placements", tags=["placements"])

    def scope(name: str) -> list[Any]:
        return [Depends(auth(name))] if auth is not None else []

    def known(module: str) -> None:
        modules = [m["module"] for m in service.describe()["modules"]]
        if module not in modules:
            raise ModelNotServedError(module, None, modules)

    @router.get("", dependencies=scope("read"))
    def current() -> dict[str, Any]:
        """Each module's node, tier, observed latency, pin and the engine's explanation."""
        return service.describe()

    @router.get("/history", dependencies=scope("read"))
    def history(
        module: str | None = None, limit: int = Query(50, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        """Migrations with their reason and timings, newest first."""
        return [r.to_dict() for r in service.history(module, limit)]

    @router.post("/{module}/pin", dependencies=scope("admin"))
    def pin(module: str, request: PinRequest) -> dict[str, Any]:
        """Fix the module to a node or a tier; the controller moves it if needed."""
        known(module)
        if (request.node is None) == (request.tier is None):
            raise InvalidRequestError("pin to a node or to a tier: give exactly one of them")
        try:
            return service.pin(module, node=request.node, tier=request.tier).to_dict()
        except ValueError as exc:  # the controller's word for a bad tier or node
            raise InvalidRequestError(str(exc)) from exc

    @router.delete("/{module}/pin", status_code=204, dependencies=scope("admin"))
    def unpin(module: str) -> Response:
        """Let the engine place the module again."""
        if not service.unpin(module):
            raise NotFoundError(f"module {module!r} is not pinned")
        return Response(status_code=204)

    return router
