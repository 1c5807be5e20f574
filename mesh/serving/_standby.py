"""The warm standby: one more replica of an always-on module, on another node.

:class:`StandbyKeeper`, mixed into the serving manager through
:class:`~mesh.serving._supervisor.ReplicaSupervisor`, starts it and keeps it
off the primaries' nodes and, while another node can hold it, off nodes that
lost a replica lately (its tier and site first, then any node of its tier, then
the module's other compute tiers).

A deploy (a restore after a restart too) requests it together with its
primaries (:meth:`StandbyKeeper._launch_spare`) and switches with it serving
(:meth:`StandbyKeeper._await_spare`): a module is never without one right after
it starts, when a kill would otherwise meet no standby and wait for a cold
start. The primaries' nodes are not known then, so a spare that landed on a
primary's node stands by until one started elsewhere serves, and then drains
away (:meth:`StandbyKeeper._keep_standby`). A deploy to the node the standby
serves on (a migration there) promotes it (:mod:`mesh.serving._promotion`),
and this loop starts its successor off the new primary's node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from mesh.core._errors import MeshError
from mesh.sdk._specs import COMPUTE_TIERS, ModuleSpec
from mesh.serving._contract import (
    ModelArtifact,
    ReplicaFailedError,
    ReplicaLauncher,
    ReplicaRequest,
)
from mesh.serving._deployment import Deployment, Replica, replica_id, wants_standby

__all__ = ["SPARE_WAIT_S", "STANDBY_RETRY_S", "StandbyKeeper"]

logger = logging.getLogger(__name__)

#: How long to wait before trying again to start a standby no node could hold.
STANDBY_RETRY_S = 10.0
#: The least a deploy waits, once its primaries serve, for the standby started with them.
SPARE_WAIT_S = 5.0


def _standby_places(spec: ModuleSpec, tier: str, site: str | None) -> list[tuple[str, str | None]]:
    """Where a standby may go, best first: the tier and site, the tier, the other compute tiers."""
    others = [(t, None) for t in spec.tiers if t in COMPUTE_TIERS and t != tier]
    return list(dict.fromkeys([(tier, site), (tier, None), *others]))


class StandbyKeeper:
    """Starting, placing and retiring standbys; a mixin of ``ServingManager``."""

    # The manager's state, set in ServingManager.__init__.
    _launcher: ReplicaLauncher
    _drain_timeout_s: float
    _standby: bool

    def lost_nodes(self) -> frozenset[str]:
        """Nodes that lost a replica lately (:meth:`ReplicaSupervisor.lost_nodes`)."""
        raise NotImplementedError

    def _start_replicas(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        tier: str,
        site: str | None,
        count: int,
        batching: str,
        node: str | None = None,
        avoid: frozenset[str] = frozenset(),
        then: Callable[[], object] = lambda: None,
    ) -> dict[str, Replica]:
        """``count`` replicas, serving (:meth:`ServingManager._start_replicas`)."""
        raise NotImplementedError

    def _keep_standby(self, d: Deployment, now: float) -> None:
        """Keep a standby off the primaries' nodes: start one, or retire one sharing a node.

        A standby that shares a primary's node (a deploy's spare may) stands by
        until one started elsewhere serves, then drains away.
        """
        spares = [
            r for r in d.replicas.values() if r.standby and r.state in ("starting", "serving")
        ]
        primaries = {r.endpoint.node_id for r in d.serving() if r.endpoint is not None}
        if not primaries or any(r.state == "starting" for r in spares):
            return  # a standby stands by a serving primary; one is on its way
        shared = [r for r in spares if r.endpoint is not None and r.endpoint.node_id in primaries]
        if len(shared) < len(spares):  # one stands apart: the others go
            for r in shared:
                r.state, r.drain_deadline = "draining", now + self._drain_timeout_s
                logger.info(
                    "%s: standby %s shares a primary's node; retired",
                    d.spec.name,
                    r.handle.replica_id,
                )
            return
        if now < d.standby_retry_at:
            return
        # Off the nodes that lost a replica lately if any place allows, else on one
        # of them (a killed replica process leaves its node alive: see _launch_off).
        strict = tuple(sorted(self.lost_nodes() | primaries))
        places = _standby_places(d.spec, d.tier, d.site)
        spare, reasons = self._launch_standby(
            d.spec, d.artifact, d.batching, places, (strict, tuple(sorted(primaries)))
        )
        if spare is not None:
            d.replicas[spare.handle.replica_id] = spare
            return
        if d.standby_retry_at == 0.0:  # said once per deployment; retried quietly
            logger.warning(
                "%s: no node for a standby off %s (%s); retrying every %g s%s",
                d.spec.name,
                ", ".join(n[:8] for n in strict),
                "; ".join(reasons),
                STANDBY_RETRY_S,
                " (the one beside a primary stands by meanwhile)" if spares else "",
            )
        d.standby_retry_at = now + STANDBY_RETRY_S

    def _launch_standby(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        batching: str,
        places: list[tuple[str, str | None]],
        avoids: tuple[tuple[str, ...], ...],
    ) -> tuple[Replica | None, list[str]]:
        """A standby requested at the first place that can hold it off ``avoids``' nodes, in turn.

        Returns:
            The standby (starting), or None and why no place could hold it.
        """
        reasons = []
        for avoid in dict.fromkeys(avoids):
            for tier, site in places:
                request = ReplicaRequest(
                    spec.name,
                    artifact,
                    tier,
                    site,
                    spec.resources,
                    replica_id(spec.name, artifact.version),
                    batching,
                    avoid_nodes=avoid,
                )
                try:
                    handle = self._launcher.launch(request)
                except MeshError as exc:
                    reasons.append(f"{tier}{'/' + site if site else ''}: {exc}")
                    continue
                logger.info(
                    "%s: standby %s requested on %s%s, off node(s) %s",
                    spec.name,
                    handle.replica_id,
                    tier,
                    f" site {site}" if site else "",
                    ", ".join(n[:8] for n in avoid) or "none",
                )
                return Replica(handle, artifact.version, standby=True, tier=tier, site=site), []
        return None, reasons

    def _start_with_spare(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        tier: str,
        site: str | None,
        count: int,
        batching: str,
        node: str | None,
        lost: frozenset[str],
        started: float,
    ) -> dict[str, Replica]:
        """``count`` new replicas serving, and the standby asked for with them (if wanted).

        A deploy's cold path (:mod:`mesh.serving._promotion` is its warm one):
        :meth:`_start_replicas` asks for the replicas, then :meth:`_launch_spare`
        for the standby, and :meth:`_await_spare` gives the standby its time.
        """
        spare: list[Replica] = []  # its standby, asked for with the replicas
        ask = partial(self._launch_spare, spare, spec, artifact, tier, site, batching, node)
        try:
            fresh = self._start_replicas(
                spec, artifact, tier, site, count, batching, node, avoid=lost, then=ask
            )
        except BaseException:
            for replica in spare:
                replica.handle.stop()
            raise
        fresh.update(self._await_spare(spare, started))  # switched with its standby
        return fresh

    def _launch_spare(
        self,
        into: list[Replica],
        spec: ModuleSpec,
        artifact: ModelArtifact,
        tier: str,
        site: str | None,
        batching: str,
        node: str | None,
    ) -> None:
        """Ask for a deploy's standby along with its primaries, into ``into`` (if one is wanted).

        The primaries' nodes are not known yet: it avoids the node they are
        pinned to, if any, and nodes that lost a replica lately while another
        can hold it. Should it share a primary's node (Ray packs replicas), it
        still stands by for a replica process's death, and
        :meth:`_keep_standby` starts one on another node for a node's.
        """
        if not (self._standby and wants_standby(spec)):
            return
        pinned = {node} if node is not None else set()
        avoids = (tuple(sorted(self.lost_nodes() | pinned)), tuple(sorted(pinned)))
        spare, _ = self._launch_standby(
            spec, artifact, batching, _standby_places(spec, tier, site), avoids
        )
        if spare is not None:
            into.append(spare)

    def _await_spare(self, spares: list[Replica], started: float) -> dict[str, Replica]:
        """A deploy's standby once it serves, or as long again as its primaries took (5 s at least).

        Returns:
            The standby by id, serving or still starting (the loop takes it from
            there), or nothing if it failed or none was asked for.
        """
        if not spares:
            return {}
        (spare,) = spares
        until = time.monotonic() + max(SPARE_WAIT_S, time.monotonic() - started)
        rid = spare.handle.replica_id
        while True:
            try:
                endpoint = spare.handle.poll()
            except ReplicaFailedError as exc:
                logger.warning("standby %s failed to start: %s", rid, exc)
                spare.handle.stop()
                return {}
            if endpoint is not None:
                spare.endpoint, spare.state = endpoint, "serving"
                return {rid: spare}
            if time.monotonic() >= until:
                return {rid: spare}
            time.sleep(0.02)
