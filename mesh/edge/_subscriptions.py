"""The edge bus's subscriptions: bus handlers by pattern, and the broker filters covering them.

A broker sends one copy of a message per matching subscription, so the filters
subscribed at the broker are kept free of overlaps (:func:`~mesh.core._topics.cover_filters`
merges overlapping patterns into a wider filter) and each message is matched
against the handlers' own patterns here. Patterns are reference counted: the
broker filters change only when the first handler of a pattern arrives or the
last one leaves.

A topic's matching handlers are remembered (up to :data:`MATCHES_MAX` topics;
forgotten whenever a handler comes or goes): a fleet's heartbeats come on the
same few topics per agent, thousands a second, and matching each against every
pattern took a third of the dispatcher thread's time at 3,000 agents.

No paho here: the gateway hands in its client through :class:`SubscribeClient`
and feeds SUBACKs to :meth:`Subscriptions.acknowledged`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from mesh.core._topics import cover_filters, topic_matches

__all__ = ["MATCHES_MAX", "Handler", "SubscribeClient", "Subscriptions"]

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
_EARLY_SUBACKS_MAX = 1024  # SUBACKs nobody waited for (yet) kept before forgetting them
#: Topics whose matching handlers are remembered; past it, all are forgotten and
#: matched again (a fleet of N agents uses about 4 N topics).
MATCHES_MAX = 65_536


class SubscribeClient(Protocol):
    """The part of paho's client that subscriptions use."""

    def subscribe(self, topic: list[tuple[str, int]]) -> tuple[Any, int]:
        """Subscribe to ``(filter, qos)`` pairs; returns ``(result, message id)``."""
        ...

    def unsubscribe(self, topic: list[str]) -> Any:
        """Unsubscribe from filters."""
        ...


class Subscriptions:
    """Handlers by pattern and the overlap-free broker filters that cover them; thread-safe.

    Args:
        internal: patterns always subscribed (the gateway's own topics).
        client: returns the client while it is connected, else None; while there
            is none, filter changes wait for the next (re)connect, which
            subscribes :meth:`filters`.
        name: who owns the subscriptions, for log messages (the gateway's client id).

    Example:
        >>> subs = Subscriptions(["mesh/v1/agents/+/status"], client=lambda: None)
        >>> unsubscribe = subs.add("mesh/v1/agents/#", lambda topic, payload: None)
        >>> subs.filters()
        ['mesh/v1/agents/#']
        >>> len(subs.handlers_for("mesh/v1/agents/cam-07/status"))
        1
        >>> unsubscribe()
        >>> subs.filters()
        ['mesh/v1/agents/+/status']
    """

    def __init__(
        self,
        internal: Iterable[str],
        *,
        client: Callable[[], SubscribeClient | None],
        name: str = "gateway",
    ) -> None:
        """Start with only the ``internal`` patterns wanted and no handlers."""
        self._client = client
        self._name = name
        self._lock = threading.Lock()  # never held over a client call
        self._wanted: dict[str, int] = dict.fromkeys(internal, 1)  # pattern -> references
        self._filters = cover_filters(self._wanted)  # what is subscribed at the broker
        self._sub_lock = threading.Lock()  # serialises filter changes (never in callbacks)
        self._handlers: list[tuple[str, Handler]] = []
        self._matches: dict[str, tuple[Handler, ...]] = {}  # topic -> its handlers
        self._suback_waiters: dict[int, threading.Event] = {}
        self._early_subacks: set[int] = set()

    def filters(self) -> list[str]:
        """The broker filters, sorted: what to subscribe on (re)connecting."""
        with self._lock:
            return sorted(self._filters)

    def handlers_for(self, topic: str) -> tuple[Handler, ...]:
        """The handlers whose pattern matches ``topic``, in subscription order."""
        with self._lock:
            found = self._matches.get(topic)
            if found is None:
                found = tuple(h for p, h in self._handlers if topic_matches(p, topic))
                if len(self._matches) >= MATCHES_MAX:
                    self._matches.clear()
                self._matches[topic] = found
            return found

    def add(self, pattern: str, handler: Handler, *, timeout_s: float = 5.0) -> Callable[[], None]:
        """Add ``handler`` for ``pattern``; returns the function that removes it.

        When connected, waits (up to ``timeout_s``) for the broker to acknowledge
        a new filter.
        """
        entry = (pattern, handler)
        with self._lock:
            self._handlers.append(entry)
            self._matches.clear()
        self._want(pattern, +1, timeout_s)

        def unsubscribe() -> None:
            with self._lock:
                if entry not in self._handlers:
                    return
                self._handlers.remove(entry)
                self._matches.clear()
            self._want(pattern, -1, timeout_s)

        return unsubscribe

    def acknowledged(self, mid: int) -> None:
        """Record the SUBACK of message ``mid`` (from the network thread; never blocks)."""
        with self._lock:
            waiter = self._suback_waiters.pop(mid, None)
            if waiter is None:
                if len(self._early_subacks) > _EARLY_SUBACKS_MAX:
                    self._early_subacks.clear()
                self._early_subacks.add(mid)
        if waiter is not None:
            waiter.set()

    def _want(self, pattern: str, delta: int, timeout_s: float) -> None:
        with self._sub_lock:
            with self._lock:
                count = self._wanted.get(pattern, 0) + delta
                if count > 0:
                    self._wanted[pattern] = count
                else:
                    self._wanted.pop(pattern, None)
                old, self._filters = self._filters, cover_filters(self._wanted)
                added, removed = self._filters - old, old - self._filters
            client = self._client()
            if client is None:
                return  # (re)connecting subscribes self._filters
            # Widen first, then narrow: a message may come twice meanwhile, never not at all.
            if added:
                self._subscribe_and_wait(client, sorted(added), timeout_s)
            if removed:
                client.unsubscribe(sorted(removed))

    def _subscribe_and_wait(
        self, client: SubscribeClient, filters: list[str], timeout_s: float
    ) -> None:
        _, mid = client.subscribe([(f, 1) for f in filters])
        with self._lock:
            # The SUBACK may have come before we got here (it is read on paho's thread).
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
                return
            done = threading.Event()
            self._suback_waiters[mid] = done
        if not done.wait(timeout_s):
            logger.warning(
                "gateway %s: subscription to %s not acknowledged in %g s",
                self._name,
                ", ".join(filters),
                timeout_s,
            )
