"""The embedded broker's authentication: anyone connects, and their sessions persist.

amqtt marks every client it lets in anonymously as *anonymous* and then keeps
nothing for its persistent sessions: QoS 1 messages published while an agent
is away are dropped, where the MQTT 3.1.1 spec (3.1.2.4) and Mosquitto keep
them for a client that connected with ``clean_session`` false. Loaded by
amqtt from its plugin list (:func:`mesh._broker.start_embedded_broker`); it
imports amqtt, so nothing else imports it.
"""

from __future__ import annotations

from typing import Any

from amqtt.plugins.authentication import AnonymousAuthPlugin

__all__ = ["OpenSessionsAuth"]


class OpenSessionsAuth(AnonymousAuthPlugin):  # type: ignore[misc]
    """amqtt's anonymous authentication, without its "anonymous sessions keep nothing"."""

    async def authenticate(self, *, session: Any) -> bool:
        """Let the client in; its persistent session queues QoS 1/2 messages while away."""
        ok = bool(await super().authenticate(session=session))
        if ok:
            session.is_anonymous = False
        return ok
