"""Deployments and their replicas, kept healthy and scaled by the serving manager's loop.

A :class:`Deployment` is one module's version in service: its :class:`Replica` s
(or the edge agent serving it) and its autoscaler. :class:`ReplicaSupervisor`,
mixed into :class:`mesh.serving._manager.ServingManager`, is the background
loop's step (:meth:`ReplicaSupervisor.tick`): it health-checks replicas apart
from requests (a failed one leaves the route; a restarted one comes back with
its new port; a dead one is replaced) and follows the module's autoscaling
settings, draining replicas it scales down.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.core._errors import MeshError
from mesh.sdk._specs import ModuleSpec
from mesh.serving._autoscale import Autoscaler
from mesh.serving._contract import (
    ModelArtifact,
    ReplicaFailedError,
    ReplicaHandle,
    ReplicaLauncher,
    ReplicaProbe,
    ReplicaRequest,
)
from mesh.serving._routes import AgentEndpoint, Endpoint, ReplicaEndpoint, RouteTable

__all__ = ["Deployment", "Replica", "ReplicaSupervisor", "replica_id"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Replica:
    """One replica of a deployment: its handle, state and last stats."""

    handle: ReplicaHandle
    version: str
    state: str = "starting"  # starting | serving | unhealthy | draining
    endpoint: ReplicaEndpoint | None = None
    failures: int = 0
    in_flight: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)
    drain_deadline: float = 0.0


@dataclass(slots=True)
class Deployment:
    """One module's version in service: its replicas (or its agent) and autoscaler."""

    spec: ModuleSpec
    artifact: ModelArtifact
    tier: str
    site: str | None
    replicas: dict[str, Replica] = field(default_factory=dict)
    agent: str | None = None
    batching: str = "auto"
    autoscaler: Autoscaler | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    node: str | None = None

    def serving(self) -> list[Replica]:
        """The replicas in the route."""
        return [r for r in self.replicas.values() if r.state == "serving"]

    def endpoints(self) -> list[Endpoint]:
        """What the route lists: the serving replicas, or the agent."""
        if self.agent is not None:
            return [AgentEndpoint(self.agent, self.artifact.version)]
        return [r.endpoint for r in self.serving() if r.endpoint is not None]


def replica_id(module: str, version: str) -> str:
    """A fresh replica id: ``<module>-<version>-<6 hex>``."""
    return f"{module}-{version}-{uuid.uuid4().hex[:6]}"


class ReplicaSupervisor:
    """:meth:`tick` and its per-replica checks; a mixin of ``ServingManager``."""

    # The manager's state, set in ServingManager.__init__.
    routes: RouteTable
    _launcher: ReplicaLauncher
    _probe: ReplicaProbe
    _clock: Callable[[], float]
    _drain_timeout_s: float
    _unhealthy_after: int
    _deployments: dict[str, Deployment]
    _lock: threading.Lock

    # -- the background loop

    def tick(self) -> None:
        """One reconcile step: health, restarts, replacements and autoscaling of every module."""
        demand = self.routes.take_demand()
        with self._lock:
            deployments = list(self._deployments.values())
        for deployment in deployments:
            if deployment.agent is not None or not deployment.lock.acquire(blocking=False):
                continue  # an edge module, or a deploy is under way
            try:
                self._reconcile(deployment, deployment.spec.name in demand)
            except Exception:
                logger.exception("%s: reconcile failed", deployment.spec.name)
            finally:
                deployment.lock.release()

    def _reconcile(self, d: Deployment, demanded: bool) -> None:
        module = d.spec.name
        changed = False
        now = self._clock()
        for rid, replica in list(d.replicas.items()):
            if replica.state == "starting":
                changed |= self._check_starting(d, rid, replica)
            elif replica.state in ("serving", "unhealthy"):
                changed |= self._check_health(d, rid, replica)
            elif replica.state == "draining":
                self._check_draining(d, rid, replica, now)
        live = [r for r in d.replicas.values() if r.state in ("starting", "serving", "unhealthy")]
        # Replicas report a time average (every client); the gateway knows its own now.
        load = max(sum(r.in_flight for r in d.serving()), self.routes.module_in_flight(module))
        if demanded and not live:
            load = max(load, 1.0)
        assert d.autoscaler is not None
        target = d.autoscaler.decide(len(live), load, now)
        if target > len(live):
            for _ in range(target - len(live)):
                self._launch_one(d)
            logger.info(
                "%s: scaling up %d -> %d replicas (in flight %.1f)", module, len(live), target, load
            )
        elif target < len(live):
            changed |= self._scale_down(d, len(live) - target, now)
            logger.info(
                "%s: scaling down %d -> %d replicas (in flight %.1f)",
                module,
                len(live),
                target,
                load,
            )
        if changed:
            self.routes.set(module, d.artifact.version, d.endpoints())

    def _launch_one(self, d: Deployment) -> None:
        request = ReplicaRequest(
            d.spec.name,
            d.artifact,
            d.tier,
            d.site,
            d.spec.resources,
            replica_id(d.spec.name, d.artifact.version),
            d.batching,
            node=d.node,
        )
        try:
            handle = self._launcher.launch(request)
        except MeshError as exc:
            logger.warning("%s: cannot start a replica: %s", d.spec.name, exc)
            return
        d.replicas[handle.replica_id] = Replica(handle, d.artifact.version)

    def _check_starting(self, d: Deployment, rid: str, replica: Replica) -> bool:
        try:
            endpoint = replica.handle.poll()
        except ReplicaFailedError as exc:
            logger.warning("%s: replica %s failed to start: %s", d.spec.name, rid, exc)
            replica.handle.stop()
            del d.replicas[rid]
            return False
        if endpoint is None:
            return False
        replica.endpoint, replica.state, replica.failures = endpoint, "serving", 0
        logger.info(
            "%s: replica %s serves at %s on node %s",
            d.spec.name,
            rid,
            endpoint.url,
            endpoint.node_id[:8],
        )
        return True

    def _check_health(self, d: Deployment, rid: str, replica: Replica) -> bool:
        module = d.spec.name
        stats = self._probe.stats(replica.endpoint, 1.0) if replica.endpoint else None
        if stats is not None and stats.get("ready", True):
            replica.failures = 0
            replica.stats = stats
            replica.in_flight = float(stats.get("avg_in_flight", stats.get("in_flight", 0)))
            if replica.state == "unhealthy":
                replica.state = "serving"
                logger.info("%s: replica %s is healthy again", module, rid)
                return True
            return False
        replica.failures += 1
        if replica.failures < self._unhealthy_after:
            return False
        changed = replica.state == "serving"
        if changed:
            replica.state = "unhealthy"
            logger.warning(
                "%s: replica %s failed %d health checks; out of the route",
                module,
                rid,
                replica.failures,
            )
        try:
            endpoint = replica.handle.refresh(1.0)
        except ReplicaFailedError as exc:
            logger.warning("%s: replica %s is gone (%s); replacing it", module, rid, exc)
            replica.handle.stop()
            del d.replicas[rid]
            self._launch_one(d)
            return changed
        if endpoint is not None and endpoint != replica.endpoint:
            logger.info("%s: replica %s restarted at %s", module, rid, endpoint.url)
            replica.endpoint = endpoint
            replica.failures = self._unhealthy_after - 1  # probe the new port next tick
        return changed

    def _check_draining(self, d: Deployment, rid: str, replica: Replica, now: float) -> None:
        endpoint = replica.endpoint
        busy = endpoint is not None and self.routes.in_flight(endpoint) > 0
        if not busy and endpoint is not None:
            stats = self._probe.stats(endpoint, 1.0)
            busy = bool(stats and stats.get("in_flight"))
        if busy and now < replica.drain_deadline:
            return
        replica.handle.stop()
        del d.replicas[rid]
        logger.info("%s: replica %s drained and stopped", d.spec.name, rid)

    def _scale_down(self, d: Deployment, count: int, now: float) -> bool:
        # Starting or unhealthy replicas go first, then the least busy.
        order = sorted(
            (r for r in d.replicas.values() if r.state != "draining"),
            key=lambda r: (r.state == "serving", r.in_flight),
        )
        changed = False
        for replica in order[:count]:
            changed |= replica.state == "serving"
            replica.state = "draining"
            replica.drain_deadline = now + self._drain_timeout_s
        return changed
