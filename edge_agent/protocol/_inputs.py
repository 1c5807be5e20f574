"""What a message names, checked before anything acts on it: topics, ids, and drops logged.

A request names the topic its reply goes to (``reply_to``, or MQTT 5's
ResponseTopic). A broker disconnects a client that publishes to a topic that is
not a valid topic name (a wildcard, NUL, a control character, bad UTF-8, empty
or over 65,535 bytes), so a requester could take a responder off the broker by
naming one. Every responder (agent, replica) therefore takes its reply topic
through :func:`reply_target`: valid, and inside ``{p}/replies/``, or refused.

Example:
    >>> from edge_agent.protocol import Topics
    >>> to, err = reply_target({"reply_to": "mesh/v1/replies/cli", "correlation_id": "1"},
    ...                        None, None, Topics())
    >>> to.topic, err
    ('mesh/v1/replies/cli', None)
    >>> to, err = reply_target({"reply_to": "mesh/v1/replies/#"}, None, None, Topics())
    >>> to, err.code.value
    (None, 'bad_request')
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from ._envelope import MAX_ID_CHARS
from ._frames import ErrorCode, ProtocolError
from ._topics import Topics

__all__ = ["MAX_ID_CHARS", "DropLog", "ReplyTo", "reply_target"]


class ReplyTo(NamedTuple):  # a tuple: built for every request, on the network thread
    """Where a reply goes: a checked topic, the correlation id and MQTT 5 CorrelationData."""

    topic: str
    correlation_id: str | None
    correlation_data: bytes | None


def reply_target(
    header: Mapping[str, Any] | None,
    response_topic: str | None,
    correlation_data: bytes | None,
    topics: Topics,
) -> tuple[ReplyTo | None, ProtocolError | None]:
    """Where to answer a request, and why the request is refused if its reply fields are bad.

    The header's ``reply_to`` comes first, then the MQTT 5 ResponseTopic. A topic
    is used only when it is a valid topic name inside ``{p}/replies/``
    (:meth:`Topics.check_reply`). When ``reply_to`` is bad but the
    ResponseTopic is good, the refusal is answered there; when no good topic is
    left, the result is ``(None, error)``: drop the request (log it rate-limited).

    Returns:
        ``(target, None)`` for a good request, ``(target or None, error)`` for a bad one.
    """
    header = header or {}
    error: ProtocolError | None = None
    corr: Any = header.get("correlation_id")
    if corr is None and correlation_data:
        corr = correlation_data[: MAX_ID_CHARS * 4].decode(errors="replace")[:MAX_ID_CHARS]
    elif corr is not None and (type(corr) is not str or len(corr) > MAX_ID_CHARS):
        error = ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"correlation_id: expected a string of at most {MAX_ID_CHARS} characters",
        )
        corr = None
    topic: str | None = None
    named = header.get("reply_to")
    if named is not None and named != "":
        try:
            topic = topics.check_reply(named)
        except ProtocolError as exc:
            error = exc
    if topic is None and response_topic:
        try:
            topic = topics.check_reply(response_topic)
        except ProtocolError as exc:
            error = error or exc
    elif topic is None and named == "":
        error = ProtocolError(ErrorCode.BAD_REQUEST, "reply_to: expected a topic, got ''")
    return (ReplyTo(topic, corr, correlation_data) if topic is not None else None), error


class DropLog:
    """A log of dropped messages that writes at most one line per ``every_s``.

    A flood of bad messages must not become a flood of log lines; the line says
    how many were dropped since the last one.

    Example:
        >>> drops = DropLog(logging.getLogger("x"), every_s=60.0)
        >>> drops.drop("agent %s: dropped a request: %s", "a", "bad reply_to")
    """

    def __init__(self, log: logging.Logger, *, every_s: float = 10.0) -> None:
        """Log through ``log`` at WARNING, once per ``every_s`` at most."""
        self._log = log
        self._every_s = every_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._skipped = 0
        self.dropped = 0
        """Messages dropped so far."""

    def drop(self, msg: str, *args: object) -> None:
        """Count one drop; log it (lazy ``%`` args) unless a line was written lately."""
        now = time.monotonic()
        with self._lock:
            self.dropped += 1
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped, self._next = self._skipped, 0, now + self._every_s
        if skipped:
            self._log.warning(msg + " (and %d more dropped since the last line)", *args, skipped)
        else:
            self._log.warning(msg, *args)
