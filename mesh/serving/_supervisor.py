"""Deployments and their replicas, kept healthy and scaled by the serving manager's loop.

A :class:`~mesh.serving._deployment.Deployment` is one module's version in
service: its replicas (or the edge agent serving it) and its autoscaler.
:class:`ReplicaSupervisor`, mixed into
:class:`mesh.serving._manager.ServingManager`, is the background loop's step
(:meth:`ReplicaSupervisor.tick`): it health-checks replicas apart from
requests (a failed one leaves the route; a restarted one comes back with its
new port; a dead one is replaced) and follows the module's autoscaling
settings, draining replicas it scales down.

Warm standby (a deployment with ``wants_standby``, started and placed by
:class:`~mesh.serving._standby.StandbyKeeper`): one more replica on another
node, in the route's ``standby``, not its endpoints: the gateway sends it
requests only when no primary answers. When the gateway marks a primary down
(:meth:`~mesh.serving._routes.RouteTable.mark_down`, which wakes the loop) and
one probe confirms it, or it fails its health checks, the primary is *lost*:
it leaves the route, its actor is killed in the background (never waiting for
Ray to notice its node died), the standby is promoted in the same route switch
(one still starting takes the primary's place when it serves), and a new
standby starts. A replica count is restored by that promotion, not by a cold
start. A node that lost a replica is avoided by new ones for
:data:`LOST_NODE_S` while another node can hold them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from mesh.core._errors import MeshError, UnsatisfiableError
from mesh.serving._contract import (
    ReplicaFailedError,
    ReplicaHandle,
    ReplicaLauncher,
    ReplicaProbe,
    ReplicaRequest,
)
from mesh.serving._deployment import (
    Deployment,
    PlacementRecorder,
    Replica,
    replica_id,
    wants_standby,
)
from mesh.serving._routes import RouteTable
from mesh.serving._standby import STANDBY_RETRY_S, StandbyKeeper

__all__ = [
    "LOST_NODE_S",
    "STANDBY_RETRY_S",
    "Deployment",
    "KillableHandle",
    "Replica",
    "ReplicaSupervisor",
    "replica_id",
    "wants_standby",
]

logger = logging.getLogger(__name__)

#: How long a node where a replica was lost is avoided by new replicas: Ray may
#: count it alive for ~15 s more, and would place work there.
LOST_NODE_S = 30.0


class ReplicaSupervisor(StandbyKeeper):
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
    _lost: Any  # the mesh_replicas_lost_total counter
    _lost_nodes: dict[str, float]  # node id -> when a replica there was lost
    _recorder: PlacementRecorder | None

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
        down = self.routes.down()  # the gateway's marks: checked first, at once
        for rid, replica in list(d.replicas.items()):
            if replica.state == "starting":
                changed |= self._check_starting(d, rid, replica)
            elif replica.state in ("serving", "unhealthy"):
                if replica.endpoint is not None and replica.endpoint in down:
                    changed |= self._check_down(d, rid, replica, now)
                else:
                    changed |= self._check_health(d, rid, replica, now)
            elif replica.state == "draining":
                self._check_draining(d, rid, replica, now)
        live = [
            r
            for r in d.replicas.values()
            if r.state in ("starting", "serving", "unhealthy") and not r.standby
        ]
        # Replicas report a time average (every client); the gateway knows its own now.
        load = max(sum(r.in_flight for r in d.serving()), self.routes.module_in_flight(module))
        if demanded and not live:
            load = max(load, 1.0)
        assert d.autoscaler is not None
        target = d.autoscaler.decide(len(live), load, now)
        if target > len(live):
            launched = sum(self._launch_one(d) for _ in range(target - len(live)))
            if launched:
                logger.info(
                    "%s: scaling up %d -> %d replicas (in flight %.1f)",
                    module,
                    len(live),
                    len(live) + launched,
                    load,
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
        if d.wants_standby:
            self._keep_standby(d, now)
        standby = d.standby_endpoints()
        if changed:
            self._record(d)  # before the route: a promotion or replacement may move it
            self.routes.set(module, d.artifact.version, d.endpoints(), tier=d.tier, standby=standby)
        else:
            route = self.routes.get(module)
            if route is not None and route.standby != tuple(standby):
                self.routes.set_standby(module, standby)  # not a switch: same epoch

    def _record(self, d: Deployment) -> None:
        """Tell the recorder where ``d`` serves, before its route switches."""
        if self._recorder is None:
            return
        try:
            self._recorder.record_placement(d.view())
        except Exception:  # the switch goes on: serving beats recording
            logger.exception("%s: could not record its placement", d.spec.name)

    def lost_nodes(self) -> frozenset[str]:
        """Nodes where a replica of any module was lost in the last :data:`LOST_NODE_S`.

        Ray may count such a node alive for ~15 s more and would place work there
        (a replica pinned to it waits until Ray declares it dead): new replicas
        avoid them, and :meth:`~mesh.serving.ServingManager.deploy` refuses them.
        """
        now = self._clock()
        with self._lock:
            for node, when in list(self._lost_nodes.items()):
                if now - when > LOST_NODE_S:
                    del self._lost_nodes[node]
            return frozenset(self._lost_nodes)

    def _refuse_lost(self, module: str, tier: str, node: str | None) -> frozenset[str]:
        """The lost nodes; raises if ``node`` (a deploy's pin) is one of them."""
        lost = self.lost_nodes()
        if node is not None and node in lost:
            # Ray may count it alive a while yet: a replica pinned there would wait
            # for Ray's node-death detection (~15 s) before failing.
            raise UnsatisfiableError(
                module,
                {"tier": tier, "node": node},
                [],
                f"node {node[:8]} lost a replica in the last {LOST_NODE_S:g} s",
            )
        return lost

    def _launch_one(self, d: Deployment) -> bool:
        """Ask for one more primary; False when no node can hold it (said once until one can)."""
        avoid = self.lost_nodes()
        request = ReplicaRequest(
            d.spec.name,
            d.artifact,
            d.tier,
            d.site,
            d.spec.resources,
            replica_id(d.spec.name, d.artifact.version),
            d.batching,
            node=d.node if d.node not in avoid else None,
            avoid_nodes=tuple(sorted(avoid)),
        )
        try:
            handle = self._launch_off(request, avoid)
        except MeshError as exc:
            (logger.debug if d.launch_failing else logger.warning)(
                "%s: cannot start a replica: %s", d.spec.name, exc
            )
            d.launch_failing = True
            return False
        d.launch_failing = False
        d.replicas[handle.replica_id] = Replica(
            handle, d.artifact.version, tier=d.tier, site=d.site
        )
        return True

    def _launch_off(self, request: ReplicaRequest, suspect: frozenset[str]) -> ReplicaHandle:
        """Launch ``request``; if only a node that lost a replica lately can hold it, there.

        A lost replica marks its node suspect (the node may be gone, and Ray may
        not know yet), not dead: a replica process that died or was killed
        leaves its node alive. So a suspect node is avoided while another can
        hold the replica, and used when none can (two fog nodes, a replica lost
        on each: waiting :data:`LOST_NODE_S` would leave the module with none).
        """
        try:
            return self._launcher.launch(request)
        except MeshError:
            if not suspect or not set(request.avoid_nodes) & suspect:
                raise
        fallback = replace(
            request,
            avoid_nodes=tuple(n for n in request.avoid_nodes if n not in suspect),
        )
        logger.info(
            "%s: only a node that lost a replica lately can hold it; trying there",
            request.module,
        )
        return self._launcher.launch(fallback)

    # -- the warm standby

    def _check_down(self, d: Deployment, rid: str, replica: Replica, now: float) -> bool:
        """The gateway marked the replica down: one probe says lost, or clears the mark."""
        assert replica.endpoint is not None
        stats = self._probe.stats(replica.endpoint, 0.5)
        if stats is not None and stats.get("ready", True):
            self.routes.clear_down(replica.endpoint)
            return False
        return self._lose(d, rid, replica, now, "refused or reset connections")

    def _lose(self, d: Deployment, rid: str, replica: Replica, now: float, why: str) -> bool:
        """Take a replica that is gone out of service; a standby takes its place."""
        module = d.spec.name
        node = replica.endpoint.node_id if replica.endpoint is not None else ""
        if node:
            with self._lock:
                self._lost_nodes[node] = now
        del d.replicas[rid]
        _stop_in_background(replica)
        self._lost.labels(module, "standby" if replica.standby else "primary").inc()
        if replica.standby:
            logger.warning("%s: standby %s on node %s lost (%s)", module, rid, node[:8], why)
            return False  # not a switch: the route's standby follows without one
        promoted = next(iter(d.standbys()), None)
        starting = [r for r in d.replicas.values() if r.standby and r.state == "starting"]
        if promoted is None and starting:
            # Started before the loss, it serves sooner than a replacement would.
            starting[0].standby = False
            d.tier, d.site = starting[0].tier or d.tier, starting[0].site
            d.node = None  # where it lands is not known yet
            logger.warning(
                "%s: replica %s on node %s lost (%s); standby %s, still starting, replaces it",
                module,
                rid,
                node[:8],
                why,
                starting[0].handle.replica_id,
            )
            return True
        if promoted is None:
            logger.warning(
                "%s: replica %s on node %s lost (%s); no standby, replacing it",
                module,
                rid,
                node[:8],
                why,
            )
            self._launch_one(d)  # the autoscaler would wait its upscale delay
            return True
        promoted.standby = False
        d.tier, d.site = promoted.tier or d.tier, promoted.site
        if d.node is not None and promoted.endpoint is not None:
            d.node = promoted.endpoint.node_id
        logger.warning(
            "%s: replica %s on node %s lost (%s); standby %s on node %s promoted",
            module,
            rid,
            node[:8],
            why,
            promoted.handle.replica_id,
            promoted.endpoint.node_id[:8] if promoted.endpoint else "?",
        )
        return True

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
            "%s: %s %s serves at %s on node %s",
            d.spec.name,
            "standby" if replica.standby else "replica",
            rid,
            endpoint.url,
            endpoint.node_id[:8],
        )
        return not replica.standby  # a standby joins the route without a switch

    def _check_health(self, d: Deployment, rid: str, replica: Replica, now: float) -> bool:
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
        if d.standbys() or replica.standby:
            # No waiting for Ray to restart it or declare its node dead.
            return self._lose(d, rid, replica, now, f"{replica.failures} failed health checks")
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
            (r for r in d.replicas.values() if r.state != "draining" and not r.standby),
            key=lambda r: (r.state == "serving", r.in_flight),
        )
        changed = False
        for replica in order[:count]:
            changed |= replica.state == "serving"
            replica.state = "draining"
            replica.drain_deadline = now + self._drain_timeout_s
        return changed


@runtime_checkable
class KillableHandle(Protocol):
    """A replica handle that can also be killed at once (the Ray one can)."""

    def kill(self) -> None:
        """End it for good now, asking nothing of it."""
        ...


def _stop_in_background(replica: Replica) -> None:
    """End a lost replica without holding up the loop (its node may be gone)."""
    handle = replica.handle
    threading.Thread(
        target=handle.kill if isinstance(handle, KillableHandle) else handle.stop,
        name=f"mesh-stop-{handle.replica_id}",
        daemon=True,
    ).start()
