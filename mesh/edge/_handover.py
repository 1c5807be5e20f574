"""Handing an agent's pipeline source to a replica (route ``remote``), control-plane side.

An offloaded pipeline still passes every frame through its agent: the agent
takes the frame from its source, sends it to the replica, waits for the
answer and publishes the event. A starved device (a CPU hog, a throttled
board) is then still in the path of every frame, however fast the replica.
A *remote* route moves the source too: the replica subscribes to the
pipeline's MQTT source itself and publishes the events, and the agent only
holds its frames in case the route comes back.

The replica learns what to run from a *lease* list (its records and topics are
in :mod:`mesh.serving._leases`, which both sides import), retained on
``{p}/modules/{module}/pipelines/{replica}``, and says it is subscribed to
every lease's source by publishing the list's version on ``…/observed``
(retained too). A lease's ``since_ts`` and ``until_ts`` split
frames by capture time (the frame header's ``ts``) exactly as the agent's route
does, so a switch runs every frame once:

1. :meth:`SourceHandover.assign` publishes the lease (``since_ts`` a moment
   ahead) and waits until the replica is subscribed;
2. the installer publishes the agent's route ``remote`` with the same
   ``since_ts`` (the agent runs frames from before it, holds later ones);
3. going back, the agent's new route and the lease's ``until_ts``
   (:meth:`SourceHandover.release`) get the same time: the replica runs frames
   from before it, the agent the held and later ones.

Released leases stay listed until their frames are surely in
(:data:`RELEASED_KEEP_S`), then leave the list; an empty list is cleared from
the broker. A list on the broker that this handover never published is a
crashed control plane's (its replicas ended with it): it is cleared, with its
``observed``, as the broker hands it over at the subscription, and counted
(:attr:`SourceHandover.swept`), so no retained lease outlives its replica.

Example:
    >>> handover = SourceHandover(edge)                                    # doctest: +SKIP
    >>> lease = Lease(site="B1", agent="j-B1", topic="mesh/v1/sensors/B1/camera",
    ...               stream="counts", since_ts=time.time() + 0.3)         # doctest: +SKIP
    >>> handover.assign("counter", "counter-v1-3f2a1b", lease, timeout_s=5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any, Protocol

from mesh.core._errors import MeshError
from mesh.serving._leases import Lease, LeaseList, lease_topic

__all__ = ["RELEASED_KEEP_S", "SourceHandover"]

logger = logging.getLogger(__name__)

#: How long a released lease stays listed (frames captured before its end still arriving).
RELEASED_KEEP_S = 30.0

#: How far ahead of now a switch's split time is set: the frames in flight are
#: still on the old route, and the new side is listening before its first frame.
SPLIT_AHEAD_S = 0.3


class _Bus(Protocol):
    """What the handover needs of the edge bus."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish a message."""
        ...

    def subscribe(
        self, pattern: str, handler: Callable[[str, bytes], None], *, timeout_s: float = 5.0
    ) -> Callable[[], None]:
        """Subscribe; returns the unsubscribe."""
        ...


class SourceHandover:
    """Keeps each replica's lease list and waits for the replicas to follow it.

    Args:
        bus: the edge bus (publish, subscribe).
        prefix: the topic prefix.
        clock: Unix seconds.
    """

    def __init__(
        self, bus: _Bus, prefix: str = "mesh/v1", *, clock: Callable[[], float] = time.time
    ) -> None:
        """Subscribes to the replicas' observed versions."""
        self._bus = bus
        self._prefix = prefix
        self._clock = clock
        self._cond = threading.Condition()
        self._leases: dict[tuple[str, str], dict[tuple[str, str], Lease]] = {}
        self._sent: dict[tuple[str, str], int] = {}
        self._observed: dict[tuple[str, str], int] = {}
        self._version = 0
        self.swept = 0  # stale lease lists cleared (a crashed control plane's)
        self._unsubscribe = bus.subscribe(
            f"{prefix}/modules/+/pipelines/+/observed", self._on_observed
        )
        self._unsubscribe_lists = bus.subscribe(f"{prefix}/modules/+/pipelines/+", self._on_list)

    def close(self) -> None:
        """Stop listening (the leases stay with the replicas)."""
        self._unsubscribe_lists()
        self._unsubscribe()

    def _on_list(self, topic: str, payload: bytes) -> None:
        """Clear a lease list this handover did not publish (left by a crash)."""
        parts = topic.split("/")
        if not payload or len(parts) < 3:
            return
        module, replica = parts[-3], parts[-1]
        with self._cond:
            if (module, replica) in self._sent:
                return  # ours
            self.swept += 1
        self._bus.publish(topic, b"", qos=1, retain=True)
        self._bus.publish(f"{topic}/observed", b"", qos=1, retain=True)
        logger.warning(
            "%s: cleared the lease list of replica %s, left by an earlier control plane",
            module,
            replica,
        )

    def split_time(self) -> float:
        """A split time for a switch starting now."""
        return self._clock() + SPLIT_AHEAD_S

    def _on_observed(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) < 4:
            return
        module, replica = parts[-4], parts[-2]
        try:
            version = int(json.loads(payload)["version"])
        except (ValueError, KeyError, TypeError):
            if payload:
                logger.warning("bad lease acknowledgement on %s: %r", topic, payload[:200])
            return
        with self._cond:
            key = (module, replica)
            self._observed[key] = max(self._observed.get(key, 0), version)
            self._cond.notify_all()

    def leases(self, module: str, replica: str) -> list[Lease]:
        """The replica's current leases."""
        with self._cond:
            return list(self._leases.get((module, replica), {}).values())

    def _publish(self, module: str, replica: str) -> int:
        """Publish the replica's list (caller holds the lock); returns its version."""
        key = (module, replica)
        now = self._clock()
        leases = self._leases.get(key, {})
        for k, v in list(leases.items()):
            if v.until_ts is not None and v.until_ts + RELEASED_KEEP_S < now:
                del leases[k]
        # Versions from the clock: a restarted control plane still counts up.
        self._version = max(self._version + 1, int(now * 1000))
        topic = lease_topic(self._prefix, module, replica)
        if leases:
            doc = LeaseList(replica, self._version, tuple(leases.values()))
            self._bus.publish(topic, doc.to_json(), qos=1, retain=True)
        else:
            self._leases.pop(key, None)
            self._bus.publish(topic, b"", qos=1, retain=True)  # clears the retained list
        self._sent[key] = self._version
        return self._version

    def assign(self, module: str, replica: str, lease: Lease, timeout_s: float) -> float:
        """Give ``lease`` to ``replica`` and wait until it listens to the source.

        Returns the lease's split time: its ``since_ts``, or a later one when the
        replica took so long that the first frames it was given may have come
        before it listened (the frames in between then run on both sides, never
        on neither).

        Raises:
            MeshError: the replica did not follow within ``timeout_s`` (the lease
                is withdrawn again: its until time is its since time).
        """
        key = (module, replica)
        with self._cond:
            self._leases.setdefault(key, {})[(lease.site, lease.stream)] = lease
            version = self._publish(module, replica)
            deadline = time.monotonic() + timeout_s
            while self._observed.get(key, 0) < version:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            followed = self._observed.get(key, 0) >= version
            since = lease.since_ts
            if followed and self._clock() > since - SPLIT_AHEAD_S / 3:
                since = self.split_time()
                self._leases[key][(lease.site, lease.stream)] = replace(lease, since_ts=since)
                self._publish(module, replica)
        if not followed:
            self.release(module, replica, lease.site, lease.stream, lease.since_ts)
            raise MeshError(
                f"replica {replica} of {module} did not take the source of {lease.site} "
                f"within {timeout_s:g} s"
            )
        logger.info(
            "%s@%s: replica %s runs the pipeline from %s (frames from %.3f)",
            module,
            lease.site,
            replica,
            lease.topic,
            since,
        )
        return since

    def release(self, module: str, replica: str, site: str, stream: str, until_ts: float) -> None:
        """End a lease at ``until_ts`` (frames captured before it are still the replica's)."""
        key = (module, replica)
        with self._cond:
            leases = self._leases.get(key, {})
            lease = leases.get((site, stream))
            if lease is None:
                return
            leases[(site, stream)] = replace(lease, until_ts=max(lease.since_ts, until_ts))
            self._publish(module, replica)
        logger.info(
            "%s@%s: replica %s gives the source back (frames from %.3f)",
            module,
            site,
            replica,
            until_ts,
        )

    def describe(self) -> Mapping[str, Any]:
        """Leases by ``module/replica`` (for status pages)."""
        with self._cond:
            return {
                f"{m}/{r}": [asdict(lease) for lease in leases.values()]
                for (m, r), leases in self._leases.items()
            }
