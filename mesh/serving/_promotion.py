"""A deploy to the node its warm standby is on promotes the standby instead of starting one.

A migration to another node of the tier (the placement engine's move, or an
operator's ``mesh placements pin --node``) is a deploy of the same version
pinned to that node. When the module's warm standby
(:mod:`mesh.serving._standby`) already serves there, a fresh replica would
cold-start beside it (a Ray worker, ONNX Runtime, the model, its warm-up, its
MQTT subscription: most of a migration's switch time), and a new spare would
start with it. Instead :meth:`~mesh.serving._manager.ServingManager.deploy`
takes the standby out of the old deployment (:func:`promote`) and switches
the route to it at once; the old primaries drain as in any switch (their
requests in flight finish first), and the manager's loop starts a new standby
off the new primary's node (:meth:`~mesh.serving._standby.StandbyKeeper._keep_standby`),
so the module is without one only until that one serves.

Only a standby that is warm (serving), of the same artifact and batching, on
exactly the deploy's node and tier, and that answers a health probe now
(:func:`promotable_standby`) is promoted; otherwise the deploy starts
replicas as before.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace

from mesh.serving._contract import ModelArtifact, ReplicaProbe
from mesh.serving._deployment import Deployment, Replica
from mesh.serving._routes import Endpoint

__all__ = ["promotable_standby", "promote"]

logger = logging.getLogger(__name__)

#: How long the health probe of a standby about to be promoted may take.
PROBE_TIMEOUT_S = 1.0


def promotable_standby(
    old: Deployment | None,
    artifact: ModelArtifact,
    tier: str,
    node: str | None,
    batching: str,
    *,
    probe: ReplicaProbe,
    down: Collection[Endpoint] = (),
) -> Replica | None:
    """The warm standby of ``old`` a deploy of ``artifact`` to ``node`` can promote, if any.

    Args:
        old: what serves the module now (None: nothing does).
        artifact: the version the deploy asks for.
        tier: the deploy's tier.
        node: the Ray node the deploy pins to (None: no promotion; a deploy
            to a tier alone starts replicas where Ray puts them).
        batching: the deploy's batching.
        probe: reads the standby's ``/stats`` (ready, right now).
        down: endpoints the gateway marked down (never promoted).

    Returns:
        The standby, still in ``old``; or None when none qualifies.
    """
    if node is None or old is None or old.agent is not None:
        return None
    if (old.artifact.version, old.artifact.sha256) != (artifact.version, artifact.sha256):
        return None
    if old.batching != batching:
        return None
    for replica in old.standbys():
        endpoint = replica.endpoint
        if endpoint is None or endpoint.node_id != node or endpoint in down:
            continue
        if replica.tier and replica.tier != tier:
            continue
        stats = probe.stats(endpoint, PROBE_TIMEOUT_S)
        if stats is not None and stats.get("ready", True):  # warm, not draining
            return replica
        logger.info(
            "%s: standby %s on node %s does not answer ready; starting a replica instead",
            old.spec.name,
            replica.handle.replica_id,
            node[:8],
        )
    return None


def promote(
    old: Deployment, standby: Replica, tier: str, site: str | None
) -> tuple[dict[str, Replica], Deployment]:
    """Take ``standby`` out of ``old`` as a primary on ``tier`` and ``site``.

    ``old`` itself is left as it is (its route still lists the standby until
    the switch).

    Returns:
        The promoted replica by id (the new deployment's replicas), and a copy
        of ``old`` without it: what drains and stops after the switch.
    """
    rid = standby.handle.replica_id
    promoted = replace(standby, standby=False, state="serving", tier=tier, site=site)
    rest = {k: r for k, r in old.replicas.items() if k != rid}
    logger.info(
        "%s: warm standby %s on node %s promoted; no replica started for the move",
        old.spec.name,
        rid,
        standby.endpoint.node_id[:8] if standby.endpoint is not None else "?",
    )
    return {rid: promoted}, replace(old, replicas=rest)
