"""Agents' pipelines run by a replica while their source is handed over (route ``remote``).

The replica side of :mod:`mesh.edge._handover` (records: :mod:`mesh.serving._leases`). A replica's
:class:`~mesh.serving.replica._mqtt.MqttResponder` holds one :class:`ReplicaPipelines`:
it follows the replica's retained lease list, subscribes to each lease's MQTT
source, runs the frames the lease covers (by capture time: the frame header's
``ts``, else the arrival) on the replica's model, on the responder's worker,
and publishes each answer as the agent's pipeline would:
an :class:`~edge_agent.protocol.Event` on ``{p}/events/{site}/{stream}`` naming
the lease's agent and site, route ``remote:<replica>``, the latency from the
frame's arrival here, and a sequence number of this replica's for the site.

Once every source of a list version is subscribed (the broker acknowledged
it), the replica publishes that version on the list's ``/observed`` topic, so
the control plane switches the agent only when no frame can fall between.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from edge_agent.protocol import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Event,
    ProtocolError,
    Tensor,
    Topics,
    decode_frame,
    json_tensor,
)
from mesh.serving._leases import Lease, LeaseList, lease_topic, observed_topic

__all__ = ["PipelineHost", "ReplicaPipelines"]

logger = logging.getLogger(__name__)

#: ``done(outputs, error)``: a frame's answer (name -> array) or why it failed.
Done = Callable[[dict[str, Any] | None, str | None], None]


class PipelineHost(Protocol):
    """What the pipelines need of the replica's MQTT responder."""

    replica_id: str

    def mqtt_subscribe(self, topic: str) -> int | None:
        """Subscribe (QoS 1); the message id the SUBACK will carry (None: not connected)."""
        ...

    def mqtt_unsubscribe(self, topic: str) -> None:
        """Unsubscribe."""
        ...

    def mqtt_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish (QoS 1)."""
        ...

    def submit_frame(self, tensors: Sequence[Tensor], done: Done) -> None:
        """Run the model on a frame, on the worker; ``done`` gets the outputs."""
        ...


class ReplicaPipelines:
    """Follows a replica's lease list; runs the covered frames.

    Args:
        host: the replica's responder.
        prefix: topic prefix.
        model: the module the replica serves.
        version: its version (named in the events).
        clock: Unix seconds.
    """

    def __init__(
        self,
        host: PipelineHost,
        *,
        prefix: str,
        model: str,
        version: str,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Nothing is subscribed until :meth:`on_connected`."""
        self._host = host
        self._prefix = prefix
        self._names = Topics(prefix)
        self._model = model
        self._version = version
        self._max = max_payload_bytes
        self._clock = clock
        self.control_topic = lease_topic(prefix, model, host.replica_id)
        self._lock = threading.Lock()
        self._list = LeaseList(host.replica_id, 0)
        self._topics: set[str] = set()  # sources subscribed (or being subscribed)
        self._pending: dict[int, int] = {}  # SUBACK mid -> list version waiting for it
        self._seqs: dict[tuple[str, str], itertools.count[int]] = {}
        self.frames = 0
        self.events = 0
        self.refused = 0

    def on_connected(self) -> None:
        """(Re)subscribe the lease list and every source (on paho's thread, after CONNACK)."""
        with self._lock:
            self._pending.clear()
            topics = sorted(self._topics)
        self._host.mqtt_subscribe(self.control_topic)
        for topic in topics:
            self._subscribe(topic, self._list.version)

    def _subscribe(self, topic: str, version: int) -> None:
        mid = self._host.mqtt_subscribe(topic)
        with self._lock:
            self._topics.add(topic)
            if mid is not None:
                self._pending[mid] = version

    def on_subscribed(self, mid: int) -> None:
        """A SUBACK: publish the version once nothing it needs is pending."""
        with self._lock:
            version = self._pending.pop(mid, None)
            if version is None:
                return
            done = version == self._list.version and version not in self._pending.values()
        if done:
            self._acknowledge(version)

    def _acknowledge(self, version: int) -> None:
        payload = json.dumps({"replica": self._host.replica_id, "version": version}).encode()
        self._host.mqtt_publish(
            observed_topic(self._prefix, self._model, self._host.replica_id), payload, retain=True
        )

    def on_message(self, topic: str, payload: bytes) -> None:
        """A lease list or a frame (on paho's thread: decode and queue only)."""
        if topic == self.control_topic:
            self._on_leases(payload)
        else:
            self._on_frame(topic, payload)

    def _on_leases(self, payload: bytes) -> None:
        if not payload:
            doc = LeaseList(self._host.replica_id, self._list.version)
        else:
            try:
                doc = LeaseList.from_json(payload)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "replica %s: lease list refused, keeping version %d: %s",
                    self._host.replica_id,
                    self._list.version,
                    exc,
                )
                return
            if doc.version <= self._list.version:
                return
        wanted = {lease.topic for lease in doc.leases}
        with self._lock:
            self._list = doc
            new = sorted(wanted - self._topics)
            gone = sorted(self._topics - wanted)
            self._topics -= set(gone)
        for topic in gone:
            self._host.mqtt_unsubscribe(topic)
        for topic in new:
            self._subscribe(topic, doc.version)
        logger.info(
            "replica %s: lease list %d: %s",
            self._host.replica_id,
            doc.version,
            ", ".join(lease.site for lease in doc.leases if lease.until_ts is None) or "none open",
        )
        with self._lock:
            waiting = doc.version in self._pending.values()
        if not waiting:
            self._acknowledge(doc.version)

    def _on_frame(self, topic: str, payload: bytes) -> None:
        arrived = self._clock()
        leases = [lease for lease in self._list.leases if lease.topic == topic]
        if not leases:
            return
        try:
            header, tensors = decode_frame(payload, max_bytes=self._max)
        except ProtocolError as exc:
            self.refused += 1
            logger.warning("replica %s: bad frame on %s: %s", self._host.replica_id, topic, exc)
            return
        captured = header.get("ts")
        at = float(captured) if isinstance(captured, (int, float)) else arrived
        for lease in leases:
            if lease.covers(at):
                self.frames += 1
                self._host.submit_frame(tensors, self._answer(lease, arrived, at))

    def _answer(self, lease: Lease, arrived: float, captured: float) -> Done:
        def done(outputs: dict[str, Any] | None, error: str | None) -> None:
            if outputs is None:
                self.refused += 1
                logger.warning(
                    "replica %s: frame of %s failed: %s", self._host.replica_id, lease.site, error
                )
                return
            seqs = self._seqs.setdefault((lease.site, lease.stream), itertools.count(1))
            event = Event(
                agent=lease.agent,
                site=lease.site,
                stream=lease.stream,
                pipeline=lease.stream,
                module=self._model,
                version=self._version,
                route=f"remote:{self._host.replica_id}",
                seq=next(seqs),
                source_ts=captured,
                latency_ms=round((self._clock() - arrived) * 1e3, 3),
                outputs={
                    name: json_tensor(Tensor.from_numpy(name, array))
                    for name, array in outputs.items()
                },
            )
            topic = self._names.events(lease.site, lease.stream)
            self._host.mqtt_publish(topic, event.model_dump_json(exclude_none=True).encode())
            self.events += 1

        return done

    def describe(self) -> dict[str, Any]:
        """For the replica's ``/stats``."""
        return {
            "lease_version": self._list.version,
            "sites": sorted(lease.site for lease in self._list.leases if lease.until_ts is None),
            "frames": self.frames,
            "events": self.events,
            "refused": self.refused,
        }
