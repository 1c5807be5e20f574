"""Where each module's requests go now: the route table shared by gateway and manager.

A :class:`ModuleRoute` names a module's serving version, its endpoints (replica
sockets on cloud/fog nodes, or edge agents reached over MQTT), its warm standby
replicas (on other nodes, for failover) and an epoch that grows by one at every
switch. The serving manager replaces a route in one assignment
(make-before-break: the new endpoints are ready before the switch); the gateway
reads it once per request, picks the endpoint with the fewest requests in
flight, and counts its request in and out, so the manager can wait until an old
endpoint has drained before stopping it.

Failover: the gateway :meth:`RouteTable.mark_down` s an endpoint that refused or
reset its connection; :meth:`RouteTable.pick` then skips it, and takes a standby
when no endpoint of the route is left. The serving manager, told at once
(:meth:`RouteTable.on_down`), checks the replica and either clears the mark or
replaces the replica (promoting the standby); a route switch forgets the marks of
endpoints it drops.

Thread-safe: the gateway's event loop and the manager's thread share it.

Example:
    >>> table = RouteTable()
    >>> route = table.set("counter", "v1", [ReplicaEndpoint("r1", "node1", "10.0.0.5", 8000, "v1")])
    >>> table.pick(route).url, route.epoch
    ('http://10.0.0.5:8000', 1)
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.models._export import ModelSignature
from mesh.serving._replica_keys import authorization as bearer

__all__ = [
    "AgentEndpoint",
    "Endpoint",
    "ModuleRoute",
    "ReplicaEndpoint",
    "RouteTable",
]


@dataclass(frozen=True, slots=True)
class ReplicaEndpoint:
    """A replica's own socket on a cloud or fog node, and the key it answers to.

    Attributes:
        key: the replica key the control plane issued to this start of the replica
            (:mod:`mesh.serving._replica_keys`); never shown (not in ``repr`` nor
            :meth:`describe`). Empty: a replica that takes no key (tests).
        authorization: the ``Authorization`` value that carries it (made once, so
            the gateway's hot path adds no work); empty without a key.
    """

    replica_id: str
    node_id: str
    host: str
    port: int
    version: str
    key: str = field(default="", repr=False)
    authorization: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Make the ``Authorization`` value once."""
        object.__setattr__(self, "authorization", bearer(self.key) if self.key else b"")

    @property
    def node(self) -> str:
        """The node id (the ``node`` label of metrics)."""
        return self.node_id

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": "replica",
            "replica_id": self.replica_id,
            "node": self.node_id,
            "url": self.url,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """An edge agent serving the module, reached over MQTT through the edge bus."""

    agent_id: str
    version: str

    @property
    def node(self) -> str:
        """The agent id (the ``node`` label of metrics)."""
        return self.agent_id

    def describe(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": "agent",
            "agent_id": self.agent_id,
            "node": self.agent_id,
            "version": self.version,
        }


Endpoint = ReplicaEndpoint | AgentEndpoint


@dataclass(frozen=True, slots=True)
class ModuleRoute:
    """A module's current serving version and endpoints.

    Attributes:
        module: the name clients use (``/v2/models/{module}/infer``).
        version: the version served.
        epoch: grows by one at each switch.
        endpoints: where requests go; empty while scaled to zero.
        signature: the model's inputs and outputs (for metadata and edge checks).
        tier: ``cloud``, ``fog`` or ``edge``.
        scale_from_zero: whether a request may wake a module scaled to zero.
        slo_ms: the module's p95 latency target (requests over it are counted).
        switched_at: Unix time of the switch.
        standby: warm replicas on other nodes, tried when no endpoint answers.
        canary: a candidate version's endpoints, beside production's
            (:meth:`RouteTable.set_canary`).
        canary_share: the share of requests the canary endpoints take (0 to 1).
    """

    module: str
    version: str
    epoch: int
    endpoints: tuple[Endpoint, ...]
    signature: ModelSignature | None = None
    tier: str = "fog"
    scale_from_zero: bool = False
    slo_ms: float | None = None
    switched_at: float = field(default_factory=time.time)
    standby: tuple[Endpoint, ...] = ()
    canary: tuple[Endpoint, ...] = ()
    canary_share: float = 0.0

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (``GET /v1/routes``)."""
        return {
            "module": self.module,
            "version": self.version,
            "epoch": self.epoch,
            "tier": self.tier,
            "endpoints": [e.describe() for e in self.endpoints],
            "scale_from_zero": self.scale_from_zero,
            "slo_ms": self.slo_ms,
            "switched_at": self.switched_at,
            "standby": [e.describe() for e in self.standby],
            "agent": self.agent,
            "canary": [e.describe() for e in self.canary],
            "canary_share": self.canary_share,
        }

    @property
    def agent(self) -> str | None:
        """The agent that serves the module, when one agent alone does (else None)."""
        if len(self.endpoints) == 1 and isinstance(self.endpoints[0], AgentEndpoint):
            return self.endpoints[0].agent_id
        return None


class RouteTable:
    """Routes by module, requests in flight by endpoint, and demand for idle modules."""

    def __init__(self) -> None:
        """An empty table."""
        self._routes: dict[str, ModuleRoute] = {}
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._in_flight: dict[Endpoint, int] = {}
        self._turn = itertools.count()
        self._canary_turns: dict[str, int] = {}  # module -> picks since its canary was set
        self._demand: set[str] = set()
        self._listeners: list[Callable[[ModuleRoute | None, ModuleRoute | None], None]] = []
        self._demand_listeners: list[Callable[[str], None]] = []
        self._down: dict[Endpoint, float] = {}  # endpoint -> monotonic time marked
        self._down_listeners: list[Callable[[str, Endpoint], None]] = []

    # -- routes

    def get(self, module: str) -> ModuleRoute | None:
        """The module's route, or None (one dict lookup: the gateway's hot path)."""
        return self._routes.get(module)

    def routes(self) -> list[ModuleRoute]:
        """Every route, by module."""
        return [self._routes[m] for m in sorted(self._routes)]

    def set(
        self,
        module: str,
        version: str,
        endpoints: Iterable[Endpoint],
        *,
        signature: ModelSignature | None = None,
        tier: str | None = None,
        scale_from_zero: bool | None = None,
        slo_ms: float | None = None,
        standby: Iterable[Endpoint] = (),
    ) -> ModuleRoute:
        """Switch ``module`` to ``endpoints`` at once (epoch + 1); returns the new route.

        ``signature``, ``tier``, ``scale_from_zero`` and ``slo_ms`` default to the
        previous route's; ``standby`` does not (a new version has its own). A canary
        is kept (:meth:`set_canary` clears it). The down marks of endpoints the
        route drops are forgotten.
        """
        with self._lock:
            old = self._routes.get(module)
            route = ModuleRoute(
                module=module,
                version=version,
                epoch=(old.epoch if old else 0) + 1,
                endpoints=tuple(endpoints),
                signature=signature if signature is not None else (old.signature if old else None),
                tier=tier if tier is not None else (old.tier if old else "fog"),
                scale_from_zero=scale_from_zero
                if scale_from_zero is not None
                else (old.scale_from_zero if old else False),
                slo_ms=slo_ms if slo_ms is not None else (old.slo_ms if old else None),
                standby=tuple(standby),
                canary=old.canary if old else (),
                canary_share=old.canary_share if old else 0.0,
            )
            self._routes[module] = route
            if old is not None and self._down:
                self._forget_down(old, route)
            if route.endpoints:
                self._demand.discard(module)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(old, route)
        return route

    def set_canary(
        self, module: str, endpoints: Iterable[Endpoint], share: float
    ) -> ModuleRoute | None:
        """Send ``share`` of ``module``'s requests to ``endpoints`` (a switch: epoch + 1).

        No endpoints (or a share of 0) clears the canary. Returns the route, or
        None when ``module`` has none (nothing changes).

        Raises:
            ValueError: ``share`` is not in [0, 1] (nothing changes).
        """
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"canary share of {module!r} must be in [0, 1], got {share}")
        canary = tuple(endpoints) if share > 0 else ()
        with self._lock:
            old = self._routes.get(module)
            if old is None:
                return None
            route = dataclasses.replace(
                old,
                epoch=old.epoch + 1,
                canary=canary,
                canary_share=share if canary else 0.0,
                switched_at=time.time(),
            )
            self._routes[module] = route
            self._canary_turns.pop(module, None)
            if self._down:
                self._forget_down(old, route)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(old, route)
        return route

    def set_standby(self, module: str, standby: Iterable[Endpoint]) -> ModuleRoute | None:
        """Replace ``module``'s standby endpoints only: no switch (same epoch, no listeners).

        Returns the route, or None when ``module`` has none.
        """
        with self._lock:
            old = self._routes.get(module)
            if old is None:
                return None
            route = dataclasses.replace(old, standby=tuple(standby))
            self._routes[module] = route
            if self._down:
                self._forget_down(old, route)
        return route

    def remove(self, module: str) -> ModuleRoute | None:
        """Stop routing ``module`` (its canary too); returns the route it had."""
        with self._lock:
            old = self._routes.pop(module, None)
            self._canary_turns.pop(module, None)
            self._demand.discard(module)
            if old is not None and self._down:
                self._forget_down(old, None)
            listeners = list(self._listeners)
        if old is not None:
            for listener in listeners:
                listener(old, None)
        return old

    def on_change(self, listener: Callable[[ModuleRoute | None, ModuleRoute | None], None]) -> None:
        """Call ``listener(old, new)`` after each switch (new is None on removal)."""
        with self._lock:
            self._listeners.append(listener)

    def _forget_down(self, old: ModuleRoute, new: ModuleRoute | None) -> None:
        kept = {*new.endpoints, *new.standby, *new.canary} if new is not None else set()
        for endpoint in (*old.endpoints, *old.standby, *old.canary):
            if endpoint not in kept:
                self._down.pop(endpoint, None)

    # -- failover

    def mark_down(self, module: str, endpoint: Endpoint) -> bool:
        """The gateway saw ``endpoint`` refuse or reset a connection: route around it.

        Returns whether it was newly marked; listeners (:meth:`on_down`) are told then.
        An endpoint no longer in the module's route is not marked (a switch dropped it).
        """
        with self._lock:
            route = self._routes.get(module)
            if (
                endpoint in self._down
                or route is None
                or (
                    endpoint not in route.endpoints
                    and endpoint not in route.standby
                    and endpoint not in route.canary
                )
            ):
                return False
            self._down[endpoint] = time.monotonic()
            listeners = list(self._down_listeners)
        for listener in listeners:
            listener(module, endpoint)
        return True

    def clear_down(self, endpoint: Endpoint) -> None:
        """``endpoint`` answers again (the serving manager checked it)."""
        with self._lock:
            self._down.pop(endpoint, None)

    def is_down(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is marked down."""
        return endpoint in self._down

    def down(self) -> frozenset[Endpoint]:
        """The endpoints marked down now."""
        with self._lock:
            return frozenset(self._down)

    def on_down(self, listener: Callable[[str, Endpoint], None]) -> None:
        """Call ``listener(module, endpoint)`` when an endpoint is newly marked down."""
        with self._lock:
            self._down_listeners.append(listener)

    # -- requests in flight

    def pick(self, route: ModuleRoute, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """The endpoint with the fewest requests in flight (round robin among equals).

        With a canary, its share of the first picks go to its endpoints (see the
        module docstring); one marked down sends the request on to production's, and
        so does a retry (``exclude`` not empty).
        Endpoints marked down are skipped; with none of the route's endpoints left,
        a standby is picked, then a canary endpoint, and with none of those either,
        an endpoint marked down (it may answer again) that ``exclude`` does not name.
        """
        if route.canary and not exclude:  # a retry goes on to production
            chosen = self._pick_canary(route)
            if chosen is not None:
                return chosen
        if not exclude and not self._down:
            candidates: Sequence[Endpoint] = route.endpoints or route.standby
        else:
            down = self._down
            usable = [e for e in route.endpoints if e not in exclude]
            candidates = [e for e in usable if e not in down]
            if not candidates:
                candidates = [e for e in route.standby if e not in exclude and e not in down]
            if not candidates:
                candidates = [e for e in route.canary if e not in exclude and e not in down]
            if not candidates:
                candidates = usable
        if not candidates and not exclude:
            candidates = route.canary  # production has none left: better than no answer
        return self._least_loaded(candidates)

    def _pick_canary(self, route: ModuleRoute) -> Endpoint | None:
        """A canary endpoint on its turn (``share`` of the picks), else None: production's."""
        n = self._canary_turns.get(route.module, 0) + 1
        self._canary_turns[route.module] = n
        share = route.canary_share
        if int(n * share) == int((n - 1) * share):
            return None
        down = self._down
        return self._least_loaded(
            [e for e in route.canary if e not in down] if down else route.canary
        )

    def _least_loaded(self, candidates: Sequence[Endpoint]) -> Endpoint | None:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        counts = self._in_flight
        start = next(self._turn) % len(candidates)
        best = candidates[start]
        best_load = counts.get(best, 0)
        for i in range(1, len(candidates)):
            endpoint = candidates[(start + i) % len(candidates)]
            load = counts.get(endpoint, 0)
            if load < best_load:
                best, best_load = endpoint, load
        return best

    def acquire(self, endpoint: Endpoint) -> None:
        """Count a request in."""
        with self._lock:
            self._in_flight[endpoint] = self._in_flight.get(endpoint, 0) + 1

    def release(self, endpoint: Endpoint) -> None:
        """Count a request out."""
        with self._lock:
            left = self._in_flight.get(endpoint, 0) - 1
            if left <= 0:
                self._in_flight.pop(endpoint, None)
                self._drained.notify_all()
            else:
                self._in_flight[endpoint] = left

    def in_flight(self, endpoint: Endpoint) -> int:
        """Requests the gateway has in flight at ``endpoint``."""
        return self._in_flight.get(endpoint, 0)

    def module_in_flight(self, module: str) -> int:
        """Requests in flight at the module's current endpoints."""
        route = self._routes.get(module)
        if route is None:
            return 0
        with self._lock:
            return sum(self._in_flight.get(e, 0) for e in route.endpoints)

    def wait_drained(self, endpoints: Iterable[Endpoint], timeout_s: float) -> bool:
        """Block until none of ``endpoints`` has a request in flight; False on timeout."""
        targets = list(endpoints)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while any(self._in_flight.get(e, 0) for e in targets):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)
        return True

    # -- demand for modules scaled to zero

    def note_demand(self, module: str) -> None:
        """A request came for ``module`` while it had no endpoint: ask the manager for one."""
        with self._lock:
            if module in self._demand:
                return
            self._demand.add(module)
            listeners = list(self._demand_listeners)
        for listener in listeners:
            listener(module)

    def take_demand(self) -> frozenset[str]:
        """The modules asked for since the last call."""
        with self._lock:
            demand = frozenset(self._demand)
            self._demand.clear()
        return demand

    def has_demand(self, module: str) -> bool:
        """Whether a request waits for ``module`` to get an endpoint."""
        return module in self._demand

    def on_demand(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(module)`` when a request waits for a module scaled to zero."""
        with self._lock:
            self._demand_listeners.append(listener)
