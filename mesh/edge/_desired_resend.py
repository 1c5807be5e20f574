"""Desired states published again after the broker came back, for agents not on them yet.

A desired state is a retained QoS 1 message. Mosquitto acknowledges it before it
saves it, so a broker killed (``kill -9``, a power cut) within its save interval
comes back with the agent's older desired state retained, or none: the agent
never hears of the new one, and an install waiting for its observed state times
out. So the edge bus remembers the last desired state it published per agent and,
each time its connection is ready again after the first, publishes again those
whose agent does not report that version yet (its observed state, as the registry
holds it). An agent acts only on a version newer than its own, so one that got
it after all ignores the copy; agents that report it cost nothing.

Sent from a short-lived thread, never paho's network thread (which calls
:meth:`DesiredResend.connection_ready`): a fleet's worth of publishes must not
hold it up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["DesiredResend"]

logger = logging.getLogger(__name__)

# publish(agent_id, payload): the retained desired state, QoS 1, without waiting.
Publish = Callable[[str, bytes], None]


class DesiredResend:
    """The last desired state published per agent, sent again after a reconnect.

    Args:
        observed_version: the version an agent last reported (None: none yet).
        publish: publishes an agent's desired state (retained, QoS 1, no wait).

    Example:
        >>> sent = []
        >>> resend = DesiredResend(lambda agent: 1, lambda agent, p: sent.append((agent, p)))
        >>> resend.record("cam-1", 2, b"{v2}"); resend.record("cam-2", 1, b"{v1}")
        >>> resend.pending()
        [('cam-1', b'{v2}')]
    """

    def __init__(self, observed_version: Callable[[str], int | None], publish: Publish) -> None:
        """Remember nothing yet; the first :meth:`connection_ready` sends nothing."""
        self._observed_version = observed_version
        self._publish = publish
        self._lock = threading.Lock()
        self._last: dict[str, tuple[int, bytes]] = {}
        self._connected_before = False
        #: Desired states published again, since the start.
        self.resent = 0

    def record(self, agent_id: str, version: int, payload: bytes) -> None:
        """Remember ``payload`` as ``agent_id``'s desired state at ``version``."""
        with self._lock:
            self._last[agent_id] = (version, payload)

    def forget(self, agent_id: str) -> None:
        """The agent's desired state was cleared: nothing to send it again."""
        with self._lock:
            self._last.pop(agent_id, None)

    def pending(self) -> list[tuple[str, bytes]]:
        """Agents whose reported version is below the one last published, and its payload."""
        with self._lock:
            last = list(self._last.items())
        behind = []
        for agent_id, (version, payload) in last:
            observed = self._observed_version(agent_id)
            if observed is None or observed < version:
                behind.append((agent_id, payload))
        return behind

    def connection_ready(self) -> None:
        """The bus's connection is up and subscribed: after a reconnect, send again."""
        if not self._connected_before:
            self._connected_before = True
            return
        threading.Thread(target=self._resend, name="mesh-desired-resend", daemon=True).start()

    def _resend(self) -> None:
        behind = self.pending()
        for agent_id, payload in behind:
            try:
                self._publish(agent_id, payload)
            except Exception:  # not connected again: the next reconnect sends it
                logger.warning("desired state of %s not sent again", agent_id, exc_info=True)
                return
            self.resent += 1
        if behind:
            logger.info(
                "broker connection back: published %d desired state(s) again, for agents "
                "not reporting them yet",
                len(behind),
            )
