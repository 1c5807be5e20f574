"""A module's deployment: its replicas, their states and its warm standby's wish.

:class:`Deployment` is one module's version in service, :class:`Replica` one of
its replicas; the serving manager (:mod:`mesh.serving._manager`) creates them,
its loop (:mod:`mesh.serving._supervisor`, :mod:`mesh.serving._standby`) keeps
them healthy. :class:`DeploymentView` is what others see of one, and a
:class:`PlacementRecorder` is told of it before each route switch. Plain data,
no I/O.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.sdk._specs import ModuleSpec
from mesh.serving._autoscale import Autoscaler
from mesh.serving._contract import ModelArtifact, ReplicaHandle, ReplicaStatus
from mesh.serving._routes import AgentEndpoint, Endpoint, ReplicaEndpoint

__all__ = [
    "Deployment",
    "DeploymentView",
    "PlacementRecorder",
    "Replica",
    "replica_id",
    "wants_standby",
]


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """What serves a module now (for the placement controller and restarts).

    Attributes:
        spec: the module.
        artifact: the version served.
        tier: ``cloud``, ``fog`` or ``edge``.
        site: the ``mesh.site`` its replicas are pinned to, if any.
        agent: the edge agent serving it, if any.
        nodes: node ids of its serving replicas (or the agent id).
        pinned_node: the Ray node its replicas are pinned to, if any.
    """

    spec: ModuleSpec
    artifact: ModelArtifact
    tier: str
    site: str | None
    agent: str | None
    nodes: tuple[str, ...]
    pinned_node: str | None = None


class PlacementRecorder(Protocol):
    """Keeps the record of where each module runs (the placement controller does).

    The serving manager tells it before a route switches, so the record never
    lags the route: a crash between the two leaves the record ahead, and the
    restart serves what it names.
    """

    def record_placement(self, view: DeploymentView) -> None:
        """``view`` is about to serve (its route switches next)."""
        ...

    def forget_placement(self, module: str) -> None:
        """``module`` is undeployed (its route is removed next)."""
        ...


@dataclass(slots=True)
class Replica:
    """One replica of a deployment: its handle, state and last stats.

    ``standby``: a warm spare on another node, in the route's ``standby`` only;
    ``tier`` and ``site``: where it was asked for (a promoted standby's placement).
    """

    handle: ReplicaHandle
    version: str
    state: str = "starting"  # starting | serving | unhealthy | draining
    endpoint: ReplicaEndpoint | None = None
    failures: int = 0
    in_flight: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)
    drain_deadline: float = 0.0
    standby: bool = False
    tier: str = ""
    site: str | None = None

    @property
    def status_state(self) -> str:
        """``serving``, ``starting``...; a standby's: ``standby`` (warm), ``standby-starting``..."""
        if not self.standby:
            return self.state
        return "standby" if self.state == "serving" else f"standby-{self.state}"


@dataclass(slots=True)
class Deployment:
    """One module's version in service: its replicas (or its agent) and autoscaler.

    ``wants_standby``: keep a warm standby replica on another node;
    ``launch_failing``: the last replica asked for could not be placed (said once).
    """

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
    wants_standby: bool = False
    launch_failing: bool = False
    standby_retry_at: float = 0.0

    def serving(self) -> list[Replica]:
        """The replicas in the route (standbys aside)."""
        return [r for r in self.replicas.values() if r.state == "serving" and not r.standby]

    def standbys(self) -> list[Replica]:
        """The warm standbys (in the route's ``standby``)."""
        return [r for r in self.replicas.values() if r.state == "serving" and r.standby]

    def standby_endpoints(self) -> list[Endpoint]:
        """What the route lists as standby."""
        return [r.endpoint for r in self.standbys() if r.endpoint is not None]

    def endpoints(self) -> list[Endpoint]:
        """What the route lists: the serving replicas, or the agent."""
        if self.agent is not None:
            return [AgentEndpoint(self.agent, self.artifact.version)]
        return [r.endpoint for r in self.serving() if r.endpoint is not None]

    def statuses(self) -> list[ReplicaStatus]:
        """Its agent and each replica, with their last stats."""
        name, out = self.spec.name, []
        if self.agent is not None:
            out.append(
                ReplicaStatus(name, self.artifact.version, self.agent, "serving", self.agent, None)
            )
        for rid, r in sorted(self.replicas.items()):
            out.append(
                ReplicaStatus(
                    name,
                    r.version,
                    rid,
                    r.status_state,
                    r.endpoint.node_id if r.endpoint else None,
                    r.endpoint.url if r.endpoint else None,
                    r.in_flight,
                    r.stats.get("requests"),
                    r.stats.get("p50_ms"),
                    r.stats.get("p95_ms"),
                )
            )
        return out

    def view(self) -> DeploymentView:
        """What serves now: the agent, or the serving replicas' nodes."""
        nodes = (
            (self.agent,)
            if self.agent is not None
            else tuple(sorted({r.endpoint.node_id for r in self.serving() if r.endpoint}))
        )
        return DeploymentView(
            self.spec, self.artifact, self.tier, self.site, self.agent, nodes, self.node
        )


def wants_standby(spec: ModuleSpec) -> bool:
    """Whether a module keeps a warm standby replica on another node (when the manager does).

    Every module has a p95 latency target, and a replica's cold start (a Ray
    worker, ONNX Runtime, the model, its warm-up, its MQTT subscription: 1-2 s on
    a quiet host, more under load) misses any of them, while the requests that
    meet no replica fail: so every module that is always on (``min_replicas >= 1``)
    asks for one. A module allowed to scale to zero accepts cold starts already.
    """
    return spec.min_replicas >= 1


def replica_id(module: str, version: str) -> str:
    """A fresh replica id: ``<module>-<version>-<6 hex>``."""
    return f"{module}-{version}-{uuid.uuid4().hex[:6]}"
