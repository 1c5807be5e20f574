"""The contract's MQTT topics: one prefix, a builder per topic, the filters for ACLs."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "PING_MODULE", "Topics"]

DEFAULT_PREFIX = "mesh/v1"
#: The module the control plane asks for to time an agent's round trip (never served).
PING_MODULE = "mesh-ping"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder for one prefix.

    Example:
        >>> Topics().infer("counter", "cam-07")
        'mesh/v1/modules/counter/infer/cam-07'
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.endswith("/") or any(c in self.prefix for c in "+#"):
            raise ValueError(f"bad topic prefix {self.prefix!r}: no trailing '/', '+' or '#'")

    @staticmethod
    def check_segment(value: str) -> str:
        """Return ``value`` if it is a safe single topic level, else raise ValueError."""
        if not _SEGMENT.match(value):
            raise ValueError(f"{value!r} is not a topic level: use 1-128 of [A-Za-z0-9_.:@-]")
        return value

    def status(self, agent: str) -> str:
        """Retained online/offline status of an agent."""
        return f"{self.prefix}/agents/{agent}/status"

    def heartbeat(self, agent: str) -> str:
        """Periodic metrics of an agent."""
        return f"{self.prefix}/agents/{agent}/heartbeat"

    def desired(self, agent: str) -> str:
        """Retained desired state the control plane sets for an agent."""
        return f"{self.prefix}/agents/{agent}/desired"

    def observed(self, agent: str) -> str:
        """Retained observed state an agent reports."""
        return f"{self.prefix}/agents/{agent}/observed"

    def infer(self, module: str, node: str) -> str:
        """Inference requests for ``module`` on ``node`` (an agent id or a fog/cloud node)."""
        return f"{self.prefix}/modules/{module}/infer/{node}"

    def offload(self, agent: str, module: str, node: str) -> str:
        """An agent's request to run ``module`` on fog/cloud ``node`` (a replica id).

        Under the agent's own topics, so the broker's ACL lets each agent publish
        only its own offload requests, and the replica knows who asked (it answers
        on that agent's reply topic, :meth:`offload_reply`, whatever the request says).
        """
        return f"{self.prefix}/agents/{agent}/offload/{module}/{node}"

    def offloads_to(self, module: str, node: str) -> str:
        """Filter of every agent's offload requests for ``module`` on ``node``."""
        return self.offload("+", module, node)

    def offload_requester(self, topic: str, module: str, node: str) -> str | None:
        """The agent that sent an offload request on ``topic``; None: not one for this node.

        Example:
            >>> Topics().offload_requester("mesh/v1/agents/cam-07/offload/m/r1", "m", "r1")
            'cam-07'
        """
        head, tail = f"{self.prefix}/agents/", f"/offload/{module}/{node}"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        agent = topic[len(head) : len(topic) - len(tail)]
        return agent if _SEGMENT.match(agent) else None

    def offload_reply(self, agent: str) -> str:
        """Where a replica answers an agent's offload requests."""
        return self.reply(agent, "offload")

    def reply(self, client: str, suffix: str | None = None) -> str:
        """Conventional reply topic of a requester (any topic works as ``reply_to``)."""
        base = f"{self.prefix}/replies/{client}"
        return f"{base}/{suffix}" if suffix else base

    def events(self, site: str, stream: str) -> str:
        """Application events of a site."""
        return f"{self.prefix}/events/{site}/{stream}"

    # Wildcards, for the control plane and for ACLs.
    def all_agents(self, leaf: str) -> str:
        """E.g. ``all_agents("status")`` -> ``{p}/agents/+/status``."""
        return f"{self.prefix}/agents/+/{leaf}"

    def agent_subscriptions(self, agent: str) -> list[str]:
        """Topic filters an agent subscribes to (for ACLs)."""
        return [
            self.desired(agent),
            f"{self.prefix}/modules/+/infer/{agent}",
            f"{self.reply(agent)}/#",
        ]

    def agent_publications(self, agent: str, site: str) -> list[str]:
        """Topic filters an agent publishes to (for ACLs).

        Its own topics (status, heartbeat, observed state, offload requests), its
        site's events, and replies: those go to whatever ``reply_to`` a requester
        names under ``{p}/replies/``. Never another node's infer topic: only the
        control plane and replicas send inference requests there.
        """
        return [
            f"{self.prefix}/agents/{agent}/#",
            f"{self.prefix}/events/{site}/#",
            f"{self.prefix}/replies/#",
        ]
