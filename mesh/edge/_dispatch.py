"""The edge bus's dispatcher: one thread that hands received messages on.

Paho's network thread must never block, so every message but inference replies
is queued here and handled on one thread, in arrival order: agent messages go to
the registry, events are deduplicated by it and go to the event handlers, and
what is not dropped on the way (malformed, duplicate) goes to the bus handlers
whose pattern matches. An exception in a handler is logged and counted, and the
dispatcher goes on.

With a :class:`~mesh.edge._flood.FloodGuard`, an agent's heartbeats over its rate
are dropped in :meth:`Dispatcher.put` (on paho's network thread, from the topic,
before they are queued), and its events over their rate wait in a bounded
deferred lane, handled when the inbox is empty: a flooding agent never stands
between the others' messages and this thread.

With an :class:`~mesh.edge._event_acks.EventAckBatcher`, each event that asks is
acknowledged once handled (a duplicate too; one dropped over its agent's rate
too, since it is counted and reported, and a resend would only add to the
flood); the batches go out when old enough or when the inbox is empty.

No MQTT here, so this is tested by dispatching messages directly.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edge_agent.protocol import Event
from mesh.edge._event_acks import EventAckBatcher
from mesh.edge._flood import FloodGuard
from mesh.edge._records import _Counters
from mesh.edge._registry import AgentRegistry
from mesh.edge._subscriptions import Subscriptions

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)


class Dispatcher:
    """Routes received messages to the registry, event handlers and bus handlers.

    Args:
        prefix: the topic prefix (``mesh/v1``); agent and event topics are under it.
        registry: fed agent messages and events.
        subscriptions: the bus handlers, by pattern.
        name: who owns the dispatcher, for its thread and log messages (the
            gateway's client id).
        flood: per-agent rate limits (None: none).
        acks: acknowledges handled events to their agents (None: nobody is).

    Example:
        >>> from mesh.edge._subscriptions import Subscriptions
        >>> subs = Subscriptions([], client=lambda: None)
        >>> seen = []
        >>> _ = subs.add("traffic/#", lambda topic, payload: seen.append(topic))
        >>> dispatcher = Dispatcher(prefix="mesh/v1", registry=AgentRegistry(), subscriptions=subs)
        >>> dispatcher.dispatch("traffic/j1/counts", b"{}")
        >>> seen
        ['traffic/j1/counts']
    """

    def __init__(
        self,
        *,
        prefix: str,
        registry: AgentRegistry,
        subscriptions: Subscriptions,
        name: str = "gateway",
        flood: FloodGuard | None = None,
        acks: EventAckBatcher | None = None,
    ) -> None:
        """Create a dispatcher; :meth:`start` starts its thread."""
        self._prefix = prefix
        self._registry = registry
        self._subscriptions = subscriptions
        self._name = name
        self._lock = threading.Lock()
        self._counters = _Counters()  # messages and handler_errors only
        self._event_handlers: list[Callable[[Event], None]] = []
        self._inbox: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._flood = flood
        self._acks = acks
        self._heartbeats = f"{prefix}/agents/"
        # Events over their agent's rate, (topic, payload, event, agent), and how many
        # of each agent's wait: only the dispatcher thread touches these.
        self._deferred: deque[tuple[str, bytes, Event, str]] = deque()
        self._waiting: dict[str, int] = {}

    def start(self) -> None:
        """Start the dispatcher thread."""
        self._thread = threading.Thread(
            target=self._loop, name=f"mesh-gw-dispatch-{self._name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Handle what is queued, then end the thread (waits up to ``timeout_s``); idempotent."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def put(self, topic: str, payload: bytes) -> None:
        """Queue a message for the dispatcher thread (never blocks).

        A heartbeat over its agent's rate is dropped here, and counted.
        """
        flood = self._flood
        if (
            flood is not None
            and topic.endswith("/heartbeat")
            and topic.startswith(self._heartbeats)
        ):
            agent = topic[len(self._heartbeats) : -len("/heartbeat")]
            if "/" not in agent and not flood.admit("heartbeat", agent):
                flood.dropped("heartbeat", agent)
                return
        self._inbox.put((topic, payload))

    def on_event(self, handler: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``handler(event)`` once per distinct event id; returns the unsubscribe."""
        with self._lock:
            self._event_handlers.append(handler)

        def unsubscribe() -> None:
            with self._lock:
                if handler in self._event_handlers:
                    self._event_handlers.remove(handler)

        return unsubscribe

    def counters(self) -> _Counters:
        """A copy of the counters kept here (messages, handler_errors)."""
        with self._lock:
            return replace(self._counters)

    def _loop(self) -> None:
        acks = self._acks
        while True:
            if acks is not None and acks.due():  # between messages, the deferred ones too
                self._guarded(acks.flush)
            if self._deferred:  # deferred events run only when nothing else waits
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    self._guarded(self._run_deferred)
                    continue
            elif acks is not None and acks.pending:  # idle: acknowledge what was handled
                try:
                    item = self._inbox.get(timeout=acks.max_delay_s)
                except queue.Empty:
                    self._guarded(acks.flush)
                    continue
            else:
                item = self._inbox.get()
            if item is None:
                while self._deferred:  # bounded: deferred_max at most
                    self._guarded(self._run_deferred)
                if acks is not None:
                    self._guarded(acks.flush)
                return
            topic, payload = item
            self._guarded(self.dispatch, topic, payload)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the dispatcher must outlive any bad message
            logger.exception("gateway %s: failed to handle a message (%r)", self._name, args[:1])

    def dispatch(self, topic: str, payload: bytes) -> None:
        """Handle one message now, on the calling thread."""
        with self._lock:
            self._counters.messages += 1
        levels = topic.split("/")
        plen = len(self._prefix.split("/"))
        rest = levels[plen:] if topic.startswith(self._prefix + "/") else []
        deliver = True
        if len(rest) == 3 and rest[0] == "agents":
            deliver = self._registry.handle_agent(rest[1], rest[2], topic, payload)
        elif len(rest) == 3 and rest[0] == "events":
            deliver = self._handle_event(topic, payload)
        if deliver:
            for handler in self._subscriptions.handlers_for(topic):
                self._call(handler, topic, payload)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            with self._lock:
                self._counters.handler_errors += 1
            logger.exception("gateway %s: handler %r failed", self._name, fn)

    def _handle_event(self, topic: str, payload: bytes) -> bool:
        event = self._registry.parse_event(topic, payload)
        if event is None:  # malformed: the registry logged and counted it
            return False
        flood = self._flood
        if flood is not None:
            agent = event.agent or f"site:{event.site or topic}"
            # Once one of an agent's events waits, its later ones wait behind it.
            if self._waiting.get(agent) or not flood.admit("events", agent):
                if len(self._deferred) >= flood.limits.deferred_max:
                    flood.dropped("events", agent)
                    self._acknowledge(topic, event)  # dropped on purpose: not to come again
                else:
                    self._deferred.append((topic, payload, event, agent))
                    self._waiting[agent] = self._waiting.get(agent, 0) + 1
                    flood.deferred("events", agent)
                return False  # its subscribers get it when it runs
        return self._deliver_event(topic, event)

    def _run_deferred(self) -> None:
        topic, payload, event, agent = self._deferred.popleft()
        left = self._waiting.pop(agent, 1) - 1
        if left > 0:
            self._waiting[agent] = left
        if self._deliver_event(topic, event):
            for handler in self._subscriptions.handlers_for(topic):
                self._call(handler, topic, payload)

    def _deliver_event(self, topic: str, event: Event) -> bool:
        if not self._registry.first_time(topic, event):  # a duplicate: counted there
            self._acknowledge(topic, event)  # its first acknowledgement may have been lost
            return False
        with self._lock:
            handlers = list(self._event_handlers)
        for handler in handlers:
            self._call(handler, event)
        self._registry.notify()
        self._acknowledge(topic, event)
        return True

    def _acknowledge(self, topic: str, event: Event) -> None:
        if self._acks is not None and event.ack:
            self._acks.add(topic, event)
