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

Both lean on amqtt internals, as does the embedded broker itself (it overrides
``Broker.stream_connected`` and reads ``Broker._servers``), so they were written for
one release series, :data:`AMQTT_SERIES` (pyproject pins the same).
:func:`check_amqtt` runs before the broker starts and refuses an amqtt that lacks any
attribute they use, naming the version and the attribute, rather than patching
nothing and losing messages quietly.

Only :func:`mesh.edge.broker._broker.start_embedded_broker` uses this module; it imports
amqtt, so nothing else imports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.authentication import AnonymousAuthPlugin
from amqtt.session import OUTGOING, OutgoingApplicationMessage, Session

from mesh.edge.broker._handle import BrokerStartError

__all__ = [
    "AMQTT_SERIES",
    "OpenSessionsAuth",
    "bound_port",
    "check_amqtt",
    "keep_unacknowledged",
    "require_attributes",
]

logger = logging.getLogger(__name__)

#: The amqtt release series the patches were written and tested for.
AMQTT_SERIES = "0.12"


def require_attributes(version: str, needed: Iterable[tuple[object, str]]) -> None:
    """Raise unless every ``(owner, attribute)`` in ``needed`` exists.

    Args:
        version: the amqtt version, for the message.
        needed: objects (classes, or instances for attributes set in ``__init__``)
            and the attribute of each that the patches use.

    Raises:
        BrokerStartError: naming the amqtt version and every missing attribute.
    """
    missing = [f"{_name(owner)}.{attr}" for owner, attr in needed if not hasattr(owner, attr)]
    if missing:
        raise BrokerStartError(
            f"amqtt {version} has no {', '.join(missing)}, which the embedded broker's "
            f"patches use; they were written for amqtt {AMQTT_SERIES}.x: "
            f"pip install 'amqtt=={AMQTT_SERIES}.*'"
        )


def _name(owner: object) -> str:
    kind = owner if isinstance(owner, type) else type(owner)
    return kind.__qualname__


def check_amqtt() -> None:
    """Check that the installed amqtt has every attribute the patches and the broker use.

    Raises:
        BrokerStartError: an attribute is missing (the message names it and the version).
    """
    version = metadata.version("amqtt")
    # Instance attributes exist only on instances; both are cheap, inert objects.
    session = Session()
    message = OutgoingApplicationMessage(1, "t", QOS_1, b"", False)
    require_attributes(
        version,
        [
            (BrokerProtocolHandler, "_handle_qos1_message_flow"),  # wrapped
            (BrokerProtocolHandler, "_retry_deliveries"),  # re-sends what the wrap keeps
            (AnonymousAuthPlugin, "authenticate"),  # overridden
            (Broker, "stream_connected"),  # overridden
            (session, "is_anonymous"),
            (session, "clean_session"),
            (session, "inflight_out"),
            (message, "direction"),
            (message, "qos"),
            (message, "packet_id"),
            (message, "puback_packet"),
        ],
    )
    if not version.startswith(f"{AMQTT_SERIES}."):
        logger.warning(
            "amqtt %s is not the %s.x the embedded broker's patches were tested with; "
            "every attribute they use is there, so they are applied",
            version,
            AMQTT_SERIES,
        )


def bound_port(broker: Broker, listener: str) -> int:
    """The TCP port a started broker's ``listener`` is bound to (amqtt keeps it private).

    Raises:
        BrokerStartError: this amqtt keeps its servers elsewhere.
    """
    require_attributes(metadata.version("amqtt"), [(broker, "_servers")])
    server = broker._servers[listener].instance
    return int(server.sockets[0].getsockname()[1])


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
