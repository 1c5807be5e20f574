"""An in-memory broker and transport: the agent's :class:`Transport` without a network.

For unit tests (a fake, not a mock): retained messages, wildcard matching, a
last will on :meth:`MemoryTransport.kill`, and an ``online`` switch on the broker
to simulate outages. Each transport delivers on its own thread, as paho does.

Example:
    >>> broker = MemoryBroker()
    >>> t = MemoryTransport(broker, "a"); t.start()
    >>> got = []
    >>> t.subscribe("x/#", lambda m: got.append(m.payload))
    >>> _ = t.publish("x/1", b"hi"); t.flush(); got
    [b'hi']
    >>> t.stop()
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub

from ._transport import Message, MessageHandler, PublishHandle

__all__ = ["MemoryBroker", "MemoryTransport"]


@dataclass(frozen=True, slots=True)
class _Published:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None


class MemoryBroker:
    """Routes messages between :class:`MemoryTransport` clients in one process."""

    def __init__(self) -> None:
        """An empty broker, online."""
        self._lock = threading.RLock()
        self._clients: list[MemoryTransport] = []
        self.retained: dict[str, bytes] = {}
        self.log: list[tuple[str, bytes]] = []
        self._online = True

    @property
    def online(self) -> bool:
        """Whether clients can reach the broker."""
        return self._online

    def set_online(self, online: bool) -> None:
        """Simulate an outage (False) or its end (True): clients are told either way."""
        with self._lock:
            self._online = online
            clients = list(self._clients)
        for c in clients:
            c._set_connected(online)

    def attach(self, client: MemoryTransport) -> None:
        """Register a client (it connects if the broker is online)."""
        with self._lock:
            self._clients.append(client)
        if self._online:
            client._set_connected(True)

    def detach(self, client: MemoryTransport, will: tuple[str, bytes] | None) -> None:
        """Remove a client; publish its will if given."""
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        if will is not None and self._online:
            self.route(_Published(will[0], will[1], True, None, None))

    def route(self, msg: _Published) -> None:
        """Deliver to matching subscribers; keep it if retained."""
        with self._lock:
            self.log.append((msg.topic, msg.payload))
            if msg.retain:
                if msg.payload:
                    self.retained[msg.topic] = msg.payload
                else:
                    self.retained.pop(msg.topic, None)
            clients = list(self._clients)
        for c in clients:
            c._deliver(msg)


class MemoryTransport:
    """A :class:`Transport` connected to a :class:`MemoryBroker`."""

    _mids = itertools.count(1)

    def __init__(self, broker: MemoryBroker, client_id: str, will: tuple[str, bytes] | None = None):
        """Nothing happens until :meth:`start`."""
        self._broker = broker
        self.client_id = client_id
        self._will = will
        self._subs: dict[str, tuple[MessageHandler, int]] = {}
        self._connected = False
        self._inbox: queue.Queue[_Published | Callable[[], None] | None] = queue.Queue()
        self._conn_listeners: list[Callable[[bool], None]] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether the broker is reachable."""
        return self._connected

    @property
    def protocol(self) -> str:
        """Always '5'."""
        return "5"

    def start(self) -> None:
        """Start the delivery thread and attach to the broker."""
        self._thread = threading.Thread(target=self._run, name=f"mem-{self.client_id}", daemon=True)
        self._thread.start()
        self._broker.attach(self)

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 2.0) -> None:
        """Publish ``final`` retained, detach (no will), stop the thread."""
        if final is not None and self._connected:
            self.publish(final[0], final[1], retain=True)
        self._broker.detach(self, None)
        self._connected = False
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def kill(self) -> None:
        """Vanish without a clean disconnect: the broker publishes the will."""
        self._broker.detach(self, self._will)
        self._connected = False
        self._inbox.put(None)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until everything delivered so far has been handled."""
        done = threading.Event()
        self._inbox.put(done.set)
        done.wait(timeout_s)

    def _set_connected(self, up: bool) -> None:
        if up == self._connected:
            return
        self._connected = up

        def notify() -> None:
            if up:
                with self._lock:
                    filters = list(self._subs)
                for f in filters:
                    self._replay_retained(f)
            for listener in list(self._conn_listeners):
                listener(up)

        self._inbox.put(notify)

    def _replay_retained(self, topic_filter: str) -> None:
        for topic, payload in list(self._broker.retained.items()):
            if topic_matches_sub(topic_filter, topic):
                self._dispatch(_Published(topic, payload, True, None, None), only=topic_filter)

    def _deliver(self, msg: _Published) -> None:
        if self._connected:
            self._inbox.put(msg)

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            if callable(item):
                item()
            else:
                self._dispatch(item)

    def _dispatch(self, msg: _Published, only: str | None = None) -> None:
        with self._lock:
            subs = [(f, h) for f, (h, _) in self._subs.items() if only is None or f == only]
        for f, handler in subs:
            if topic_matches_sub(f, msg.topic):
                handler(
                    Message(
                        msg.topic, msg.payload, msg.retain, msg.response_topic, msg.correlation_data
                    )
                )

    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        qos: int = 1,
        *,
        deferred_ack: bool = False,
    ) -> None:
        """Route ``topic_filter`` to ``handler``; retained matches are delivered.

        In memory nothing is acknowledged (``deferred_ack`` is accepted and moot).
        """
        with self._lock:
            self._subs[topic_filter] = (handler, qos)
        if self._connected:
            self._inbox.put(lambda: self._replay_retained(topic_filter))

    def unsubscribe(self, topic_filter: str) -> None:
        """Forget ``topic_filter``."""
        with self._lock:
            self._subs.pop(topic_filter, None)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
    ) -> PublishHandle | None:
        """Deliver through the broker; None when offline."""
        if not self._connected or not self._broker.online:
            return None
        handle = PublishHandle(next(self._mids))
        self._broker.route(_Published(topic, payload, retain, response_topic, correlation_data))
        handle.published = True
        return handle

    def add_connection_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(up)`` on each connection change."""
        self._conn_listeners.append(listener)
