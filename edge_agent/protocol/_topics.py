"""The contract's MQTT topics: one prefix, a builder per topic, the filters for ACLs.

Topics taken from messages (a reply topic, an event topic) are checked here:
:func:`check_topic_name` is what a broker accepts as a topic to publish to, and
:meth:`Topics.check_reply` / :meth:`Topics.check_event` add the prefix they
must be inside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._frames import ErrorCode, ProtocolError

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_TOPIC_BYTES",
    "PING_MODULE",
    "Topics",
    "check_topic_filter",
    "check_topic_name",
]

DEFAULT_PREFIX = "mesh/v1"
#: The module the control plane asks for to time an agent's round trip (never served).
PING_MODULE = "mesh-ping"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MAX_TOPIC_BYTES = 65535
"""Longest topic name MQTT can carry (a 16-bit length)."""
# What Mosquitto refuses in a topic besides bad UTF-8 (it disconnects the
# publisher): wildcards, NUL and the other C0/C1 control characters, and the
# Unicode non-characters.
_BAD_CHAR = re.compile("[+#\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")


def check_topic_name(topic: object, *, what: str = "topic") -> str:
    """Return ``topic`` if a broker accepts it as a topic to publish to.

    A topic name is a str of 1..65,535 UTF-8 bytes with no wildcard (``+``,
    ``#``), no NUL or other control character, no Unicode non-character, and
    no leading ``$`` (broker topics).

    Raises:
        ProtocolError: BAD_REQUEST naming ``what`` and the rule it breaks.

    Example:
        >>> check_topic_name("mesh/v1/replies/cli")
        'mesh/v1/replies/cli'
    """
    if type(topic) is not str:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{what}: expected a topic string, got {type(topic).__name__}"
        )
    if len(topic) > MAX_TOPIC_BYTES:  # before encoding: a str of it has more bytes still
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what}: over {MAX_TOPIC_BYTES} bytes")
    try:
        size = len(topic.encode())
    except UnicodeEncodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what}: not valid UTF-8") from None
    if not 1 <= size <= MAX_TOPIC_BYTES:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{what}: expected 1 to {MAX_TOPIC_BYTES} bytes, got {size}"
        )
    bad = _BAD_CHAR.search(topic) or _non_character(topic)
    if bad is not None:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"{what}: {bad.group()!r} is not allowed in a topic name "
            "(no wildcards, control characters or non-characters)",
        )
    if topic.startswith("$"):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what}: a topic starting with '$' is reserved")
    return topic


def check_topic_filter(topic_filter: object, *, what: str = "topic filter") -> str:
    """Return ``topic_filter`` if a broker accepts it in a SUBSCRIBE.

    As :func:`check_topic_name`, except that ``+`` may fill a whole level and
    ``#`` the whole last level.

    Raises:
        ProtocolError: BAD_REQUEST naming ``what`` and the rule it breaks.

    Example:
        >>> check_topic_filter("traffic/+/frames/#")
        'traffic/+/frames/#'
    """
    if type(topic_filter) is not str:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"{what}: expected a topic string, got {type(topic_filter).__name__}",
        )
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or (
            "#" in level and (level != "#" or i != len(levels) - 1)
        ):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"{what}: a wildcard must fill a level ('+'), or the last one ('#')",
            )
    # The rest of the rules are a topic name's, with wildcards as plain levels.
    check_topic_name("/".join("w" if level in ("+", "#") else level for level in levels), what=what)
    return topic_filter


def _non_character(topic: str) -> re.Match[str] | None:
    """A code point U+nFFFE / U+nFFFF above the first plane, if any (rare: checked apart)."""
    if topic.isascii():
        return None
    for m in re.finditer("[\U00010000-\U0010ffff]", topic):
        if ord(m.group()) & 0xFFFE == 0xFFFE:
            return m
    return None


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

    def check_reply(self, topic: object) -> str:
        """Return ``topic`` if it is a valid topic name under ``{p}/replies/``.

        Raises:
            ProtocolError: BAD_REQUEST saying what is wrong with it.

        Example:
            >>> Topics().check_reply("mesh/v1/replies/cli/1")
            'mesh/v1/replies/cli/1'
        """
        return self._check_within(topic, f"{self.prefix}/replies/", "reply topic")

    def check_event(self, topic: object) -> str:
        """Return ``topic`` if it is a valid topic name under ``{p}/events/``.

        Raises:
            ProtocolError: BAD_REQUEST saying what is wrong with it.
        """
        return self._check_within(topic, f"{self.prefix}/events/", "event topic")

    @staticmethod
    def _check_within(topic: object, base: str, what: str) -> str:
        name = check_topic_name(topic, what=what)
        if not name.startswith(base) or len(name) == len(base):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what}: {name[:80]!r} is not under {base}")
        return name

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

    def event_acks(self, agent: str) -> str:
        """Where the control plane acknowledges an agent's events (:class:`EventAcks`).

        Under the agent's reply topics, which its ACL already lets it read.

        Example:
            >>> Topics().event_acks("cam-07")
            'mesh/v1/replies/cam-07/event-acks'
        """
        return self.reply(agent, "event-acks")

    def samples(self, agent: str, module: str) -> str:
        """An agent's sampled pipeline inputs of ``module`` (:class:`SampleUpload` frames).

        Under the agent's own topics, so its ACL already lets it publish there.

        Example:
            >>> Topics().samples("cam-07", "counter")
            'mesh/v1/agents/cam-07/samples/counter'
        """
        return f"{self.prefix}/agents/{agent}/samples/{module}"

    def all_samples(self) -> str:
        """Filter of every agent's sampled inputs of every module."""
        return self.samples("+", "+")

    def events(self, site: str, stream: str) -> str:
        """Application events of a site."""
        return f"{self.prefix}/events/{site}/{stream}"

    # Wildcards, for the control plane and for ACLs.
    def all_agents(self, leaf: str) -> str:
        """E.g. ``all_agents("status")`` -> ``{p}/agents/+/status``."""
        return f"{self.prefix}/agents/+/{leaf}"

    def agent_subscriptions(self, agent: str, site: str | None = None) -> list[str]:
        """Topic filters an agent subscribes to (for ACLs).

        Its desired state, requests addressed to it, its own replies and, with
        ``site``, its site's sensor streams (``{p}/sensors/{site}/#``: where
        pipelines with an MQTT source read, e.g. ``sensors/{site}/camera``).
        """
        topics = [
            self.desired(agent),
            f"{self.prefix}/modules/+/infer/{agent}",
            f"{self.reply(agent)}/#",
        ]
        return topics if site is None else [*topics, f"{self.prefix}/sensors/{site}/#"]

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
