"""Waiting, within a request's time, for a route to have somewhere to send it.

The gateway waits instead of failing at once in four cases, each bounded:

- :func:`restored`: the module was recorded before a restart and is still being
  restored (a 503 "being restored" at the end, never a 404 "not served");
- :func:`cold_start`: the module is scaled to zero and a replica starts on demand;
- :func:`replacement`: every replica of the module was lost at once (its standby
  too) and the serving manager is starting a replacement;
- :func:`new_endpoint`: every endpoint tried refused the connection, and one not
  tried yet (a promoted standby, a replacement) is awaited.

All poll the in-memory :class:`~mesh.serving._routes.RouteTable` every 20-50 ms
on the event loop: no thread is held.

Example:
    >>> route = await replacement(routes, route, REPLACEMENT_WAIT_S)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from mesh.serving._oip import ModelNotReadyError, ModelNotServedError
from mesh.serving._routes import Endpoint, ModuleRoute, ReplicaEndpoint, RouteTable

__all__ = ["REPLACEMENT_WAIT_S", "cold_start", "new_endpoint", "replacement", "restored"]

#: How long a request waits for a module whose replicas were all lost to get one back
#: (the supervisor starts a replacement at once; issue 15's target is 5 s).
REPLACEMENT_WAIT_S = 5.0
_TICK_S = 0.02


async def restored(
    routes: RouteTable, module: str, restoring: Callable[[str], bool], timeout_s: float
) -> None:
    """Return once ``module`` has a route or is no longer restoring (503 at ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if routes.get(module) is not None or not restoring(module):
            return
        await asyncio.sleep(0.05)
    if routes.get(module) is None and restoring(module):
        raise ModelNotReadyError(
            f"model {module!r} is being restored after a restart; try again shortly",
            model=module,
        )


async def cold_start(routes: RouteTable, route: ModuleRoute, timeout_s: float) -> ModuleRoute:
    """A scaled-to-zero module's route once a replica serves it (demand noted meanwhile)."""
    routes.note_demand(route.module)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(_TICK_S)
        current = routes.get(route.module)
        if current is None:
            raise ModelNotServedError(route.module)
        if current.endpoints:
            return current
        routes.note_demand(route.module)
    raise ModelNotReadyError(
        f"model {route.module!r} scaled to zero did not start a replica within {timeout_s:g} s",
        model=route.module,
    )


async def replacement(routes: RouteTable, route: ModuleRoute, timeout_s: float) -> ModuleRoute:
    """The route once it has an endpoint or a standby again (503 after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(_TICK_S)
        current = routes.get(route.module)
        if current is None:
            raise ModelNotServedError(route.module)
        if current.endpoints or current.standby:
            return current
    raise ModelNotReadyError(
        f"model {route.module!r} has no ready replica or agent", model=route.module
    )


async def new_endpoint(
    routes: RouteTable, route: ModuleRoute, tried: Sequence[ReplicaEndpoint], until: float
) -> tuple[ModuleRoute, Endpoint | None]:
    """An endpoint of the module's current route not in ``tried``, awaited until ``until``."""
    while time.monotonic() < until:
        await asyncio.sleep(_TICK_S)
        current = routes.get(route.module)
        if current is None:
            return route, None
        endpoint = routes.pick(current, tried)
        if endpoint is not None and endpoint not in tried:
            return current, endpoint
    return route, None
