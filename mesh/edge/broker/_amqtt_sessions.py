"""Persistent sessions in the embedded broker, as MQTT 3.1.1 and Mosquitto keep them.

Stock amqtt falls short of the spec in two ways that lose a device's messages:

- It marks every client it lets in anonymously as *anonymous* and then keeps
  nothing for its persistent sessions: QoS 1 messages published while an agent
  is away are dropped, where the spec (3.1.2.4) and Mosquitto keep them for a
  client that connected with ``clean_session`` false. :class:`OpenSessionsAuth`
  lets everyone in without that mark (amqtt loads it from its plugin list).
- It forgets a QoS 1 message sent on a connection that closed before the
  PUBACK came. An agent killed just as a camera frame went out never sees the
  frame again, where the spec ([MQTT-4.4.0-1]) and Mosquitto send it again,
  flagged DUP, when the session reconnects. :func:`keep_unacknowledged` keeps
  such a message in its session, and amqtt's own retry on reconnect sends it.

Only :func:`mesh.edge.broker._broker.start_embedded_broker` uses this module; it imports
amqtt, so nothing else imports it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.authentication import AnonymousAuthPlugin
from amqtt.session import OUTGOING

__all__ = ["OpenSessionsAuth", "keep_unacknowledged"]


class OpenSessionsAuth(AnonymousAuthPlugin):  # type: ignore[misc]
    """amqtt's anonymous authentication, without its "anonymous sessions keep nothing"."""

    async def authenticate(self, *, session: Any) -> bool:
        """Let the client in; its persistent session queues QoS 1/2 messages while away."""
        ok = bool(await super().authenticate(session=session))
        if ok:
            session.is_anonymous = False
        return ok


def keep_unacknowledged() -> None:
    """Make the broker keep unacknowledged outgoing QoS 1 messages in their session.

    amqtt sends a QoS 1 message, waits up to 5 s for its PUBACK and then, acked
    or not, drops it from the session's in-flight list. Wrapped here: a message
    whose PUBACK never came (the connection closed, or the wait timed out) goes
    back into the list, where the session's next connection re-sends it
    (amqtt's ``_retry_deliveries``, before anything queued meanwhile). Clean
    sessions are discarded on disconnect, so this keeps nothing for them.
    Idempotent.
    """
    flow = BrokerProtocolHandler._handle_qos1_message_flow
    if getattr(flow, "_mesh_keeps_unacked", False):
        return

    async def qos1_flow(self: BrokerProtocolHandler, app_message: Any) -> None:
        try:
            await flow(self, app_message)
        except (asyncio.CancelledError, TimeoutError):
            session = self.session
            if (
                app_message.direction == OUTGOING
                and app_message.qos == QOS_1
                and app_message.puback_packet is None
                and app_message.packet_id is not None
                and session is not None
                and not session.clean_session
            ):
                session.inflight_out[app_message.packet_id] = app_message
            raise

    qos1_flow._mesh_keeps_unacked = True  # type: ignore[attr-defined]
    BrokerProtocolHandler._handle_qos1_message_flow = qos1_flow
