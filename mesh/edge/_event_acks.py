"""Acknowledging agents' events end to end, batched per agent.

The broker's PUBACK tells an agent only that Mosquitto took its event: a broker
killed before it saved loses what it had not yet delivered here. So an event
that asks for it (``Event.ack``) is acknowledged once this control plane has
handled it, by its agent's ``seq``, on :meth:`Topics.event_acks`; the agent
keeps it until then and sends it again after a reconnect or a timeout.

Acknowledgements go at QoS 0 and are batched: the dispatcher adds each event's
seq as it handles it, and flushes between messages (never in the middle of
one's handlers) once the oldest has waited ``max_delay_s``, or when it has
nothing else to do; a batch over :data:`MAX_ACKED_SEQS` goes in several messages. A lost
acknowledgement costs a resend, which the registry drops by id and this
acknowledges again; so duplicates are acknowledged too.

An event is acknowledged only to the agent that can have sent it: one this
control plane knows at the site in the event's topic (an agent's ACL lets it
publish only to its own site's events). Another agent's id in an event would
otherwise make its real owner forget events never handled.

No MQTT here: ``send(topic, payload)`` publishes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from edge_agent.protocol import MAX_ACKED_SEQS, Event, EventAcks, Topics

__all__ = ["EventAckBatcher", "qos0_sender"]

logger = logging.getLogger(__name__)


class EventAckBatcher:
    """Seqs of handled events to acknowledge, per agent, sent in batches.

    Only the dispatcher thread calls it.

    Args:
        topics: the contract's topics (the acknowledgement topic per agent).
        send: publishes ``payload`` on ``topic`` (QoS 0; never blocks).
        site_of: the site an agent is known at (None: not known).
        max_delay_s: an acknowledgement waits at most this long for others.
        clock: monotonic seconds (tests pass a fake).

    Example:
        >>> sent = []
        >>> acks = EventAckBatcher(Topics(), lambda t, p: sent.append(t), lambda a: "j1")
        >>> event = Event(stream="counts", agent="cam-1", seq=4, ack=True)
        >>> acks.add("mesh/v1/events/j1/counts", event)
        True
        >>> acks.flush()
        >>> sent
        ['mesh/v1/replies/cam-1/event-acks']
    """

    def __init__(
        self,
        topics: Topics,
        send: Callable[[str, bytes], None],
        site_of: Callable[[str], str | None],
        *,
        max_delay_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty batcher."""
        self._topics = topics
        self._send = send
        self._site_of = site_of
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._events_base = f"{topics.prefix}/events/"
        self._pending: dict[str, list[int]] = {}
        self._oldest: float | None = None
        #: Acknowledgements sent (seqs), and events that asked but were not acknowledged.
        self.acked = 0
        self.refused = 0

    @property
    def pending(self) -> bool:
        """Whether some acknowledgement waits to be sent."""
        return bool(self._pending)

    def add(self, topic: str, event: Event) -> bool:
        """Queue ``event``'s acknowledgement if it asked for one and may have it.

        Returns:
            True when queued; False when the event did not ask, names no agent,
            or its agent is not known at the topic's site (counted in ``refused``).
        """
        if not event.ack:
            return False
        agent = event.agent
        site = topic[len(self._events_base) :].split("/", 1)[0]
        if agent is None or not topic.startswith(self._events_base) or self._site_of(agent) != site:
            self.refused += 1
            logger.debug("event %s on %s not acknowledged: agent %r", event.id, topic, agent)
            return False
        seqs = self._pending.setdefault(agent, [])
        seqs.append(event.seq)
        if self._oldest is None:
            self._oldest = self._clock()
        return True

    def due(self) -> bool:
        """Whether the oldest waiting acknowledgement has waited ``max_delay_s``."""
        return self._oldest is not None and self._clock() - self._oldest >= self.max_delay_s

    def flush(self) -> None:
        """Send every agent's batch (several messages for one over MAX_ACKED_SEQS)."""
        pending, self._pending, self._oldest = self._pending, {}, None
        for agent, seqs in pending.items():
            topic = self._topics.event_acks(agent)
            for start in range(0, len(seqs), MAX_ACKED_SEQS):
                chunk = seqs[start : start + MAX_ACKED_SEQS]
                payload = EventAcks(seqs=chunk).model_dump_json(exclude_none=True).encode()
                try:
                    self._send(topic, payload)
                except Exception:  # not connected: the agent sends the events again
                    logger.debug("acknowledgement of %d event(s) of %s not sent", len(chunk), agent)
                    continue
                self.acked += len(chunk)


def qos0_sender(live_client: Callable[[], Any]) -> Callable[[str, bytes], None]:
    """A ``send`` for :class:`EventAckBatcher`: QoS 0 on the paho client while connected.

    Raises ConnectionError (the batcher counts the batch as not sent) while not.
    """

    def send(topic: str, payload: bytes) -> None:
        client = live_client()
        if client is None:
            raise ConnectionError("not connected to the broker")
        client.publish(topic, payload, qos=0)

    return send
