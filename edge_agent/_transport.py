"""MQTT transport: the agent's MQTT connection, kept across broker restarts.

:class:`MqttTransport` wraps a paho client (the hot-path tuned
:class:`~edge_agent._client.FastClient`, set up by
:mod:`edge_agent._mqtt` as the edge bus and replicas are: callback API
VERSION2, TCP_NODELAY, TLS and credentials, the retained last will, MQTT 5
when the broker speaks it, else 3.1.1) with what the agent needs: keepalive,
persistent sessions, reconnect with doubling backoff, and resubscription on
every connect. Handlers run on paho's network thread and must not block: they
decode and hand work to queues.

The :class:`Transport` protocol is the seam the agent depends on; unit tests use
:class:`edge_agent.MemoryTransport` instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ._client import Ack, FastClient
from ._mqtt import (
    ClientOptions,
    TlsOptions,
    choose_protocol,
    new_client,
    probe_protocol,
    reason_value,
    refusal_text,
    session_properties,
    tls_failure_text,
)
from ._supervisor import Supervisor

__all__ = [
    "ConnectionConfig",
    "Message",
    "MessageHandler",
    "MqttTransport",
    "PublishHandle",
    "Transport",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """An incoming MQTT message, independent of paho.

    ``ack``: set only for a subscription made with ``deferred_ack`` and a QoS 1
    message; the handler calls it once it is done with the message (the broker
    sends the message again, to the session's next connection, until then).
    """

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    ack: Callable[[], None] | None = field(default=None, compare=False, repr=False)


MessageHandler = Callable[[Message], None]


class PublishHandle:
    """Tracks one publish: :meth:`is_published` turns True once the broker acknowledged it."""

    __slots__ = ("_info", "mid", "published")

    def __init__(self, mid: int, info: mqtt.MQTTMessageInfo | None = None) -> None:
        """A handle for message id ``mid`` (``info``: paho's, which learns of the ack)."""
        self.mid = mid
        self.published = False
        self._info = info

    def is_published(self) -> bool:
        """Whether the broker acknowledged it (QoS 0: whether it was written)."""
        if not self.published and self._info is not None:
            self.published = self._info.is_published()
        return self.published


class Transport(Protocol):
    """What the agent needs from an MQTT connection."""

    @property
    def connected(self) -> bool:
        """Whether a session with the broker is up now."""
        ...

    @property
    def protocol(self) -> str:
        """'5' or '3.1.1' (what the broker accepted; '5' before the first connect)."""
        ...

    def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        ...

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 2.0) -> None:
        """Publish ``final`` (topic, payload; retained) if connected, then disconnect."""
        ...

    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        qos: int = 1,
        *,
        deferred_ack: bool = False,
    ) -> None:
        """Route messages matching ``topic_filter`` to ``handler`` (kept across reconnects).

        ``deferred_ack``: the handler acknowledges each QoS 1 message itself
        (``Message.ack``), once it is safe; other messages are acknowledged on arrival.
        """
        ...

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop routing ``topic_filter``."""
        ...

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
        """Publish; returns a handle, or None when not connected (nothing is queued)."""
        ...

    def add_connection_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` after each connect, ``listener(False)`` after a loss."""
        ...


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """How to reach the broker."""

    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    protocol: str = "auto"
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    username: str | None = None
    password: str | None = None
    will: tuple[str, bytes] | None = None
    session_expiry_s: int = 86400
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    max_inflight: int = 256
    clean_start: bool = False


@dataclass(slots=True)
class _Subscription:
    handler: MessageHandler
    qos: int
    deferred_ack: bool = False


@dataclass(slots=True)
class _State:
    connected: bool = False
    protocol: str = "5"
    subs: dict[str, _Subscription] = field(default_factory=dict)


class MqttTransport:
    """A paho client with the agent's connection policy.

    Example:
        >>> t = MqttTransport(ConnectionConfig("127.0.0.1", 1883, "cam-07"))
        >>> t.connected
        False
    """

    def __init__(self, config: ConnectionConfig, *, supervisor: Supervisor | None = None) -> None:
        """Build the client; nothing connects until :meth:`start`.

        The network loop runs under ``supervisor``: restarted if it raises
        (under TLS on paho's own thread, the same way).
        """
        self._config = config
        self._supervisor = supervisor
        self._lock = threading.RLock()
        self._state = _State(protocol="3.1.1" if config.protocol == "3.1.1" else "5")
        self._conn_listeners: list[Callable[[bool], None]] = []
        self._stopping = False
        self._stop_event = threading.Event()
        self._probed = False
        self._loop_started = False
        # Topic -> the filters it matches, so a message costs one dict lookup
        # instead of a walk of paho's filter trie; rebuilt on (un)subscribe.
        self._matcher = MQTTMatcher()  # type: ignore[no-untyped-call]
        self._matches: dict[str, list[str]] = {}
        self._match_lock = threading.Lock()  # never held while waiting on anything
        self._client = self._make_client()

    @property
    def connected(self) -> bool:
        """Whether a session with the broker is up now."""
        return self._state.connected

    @property
    def protocol(self) -> str:
        """'5' or '3.1.1'."""
        return self._state.protocol

    def add_connection_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` after each connect, ``listener(False)`` after a loss."""
        self._conn_listeners.append(listener)

    # -------------------------------------------------------------- paho client

    def _tls(self) -> TlsOptions | None:
        cfg = self._config
        if not cfg.tls:
            return None
        return TlsOptions(cfg.ca_file, cfg.cert_file, cfg.key_file, cfg.tls_insecure)

    def _make_client(self) -> FastClient:
        cfg = self._config
        options = ClientOptions(
            client_id=cfg.client_id,
            protocol="5" if self._state.protocol == "5" else "3.1.1",
            clean_session=cfg.clean_start,
            username=cfg.username,
            password=cfg.password,
            tls=self._tls(),
            will=cfg.will,
            reconnect_min_s=cfg.reconnect_min_s,
            reconnect_max_s=cfg.reconnect_max_s,
            max_inflight=cfg.max_inflight,
            # Acks are sent by _on_message: at once, or by a deferred_ack handler.
            manual_ack=True,
        )
        client = new_client(options, FastClient)
        client.supervisor = self._supervisor
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        # No on_publish: paho would call it under its callback mutex from inside a
        # socket write, which can now happen on a publishing thread that holds
        # paho's message mutex, waiting on a network thread that wants it (a
        # deadlock). Handles ask paho's MQTTMessageInfo instead.
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Start connecting in the background (returns at once).

        With ``protocol="auto"`` a probe first asks the broker whether it speaks
        MQTT 5 (:func:`edge_agent._mqtt.choose_protocol`), retried with backoff
        while the broker is unreachable.
        """
        with self._lock:
            self._stopping = False
            self._stop_event.clear()
        # Under TLS the handshake is checked first, so a refused certificate is
        # logged (paho's own retries fail in silence); plain MQTT is never tried.
        if (self._config.protocol == "auto" or self._config.tls) and not self._probed:
            (self._supervisor or Supervisor()).spawn("mqtt-probe", self._probe_then_connect)
        else:
            self._connect()

    def _probe_then_connect(self) -> None:
        cfg = self._config
        delay = float(cfg.reconnect_min_s)
        tls_failures: set[str] = set()
        while not self._stop_event.is_set():
            try:
                proto = choose_protocol(cfg.protocol, cfg.host, cfg.port, tls=self._tls())
                if cfg.protocol != "auto" and cfg.tls:
                    probe_protocol(cfg.host, cfg.port, tls=self._tls())  # the handshake only
            except OSError as exc:
                failure = tls_failure_text(exc, self._tls())
                if failure is not None:  # one line per distinct failure, then quiet retries
                    if failure not in tls_failures:
                        tls_failures.add(failure)
                        logger.error(
                            "agent %s: broker mqtts://%s:%d: %s",
                            cfg.client_id,
                            cfg.host,
                            cfg.port,
                            failure,
                        )
                    self._stop_event.wait(delay)
                    delay = min(delay * 2, float(cfg.reconnect_max_s))
                    continue
                logger.info(
                    "agent %s: broker %s:%d not reachable (%s); retrying in %.0fs",
                    cfg.client_id,
                    cfg.host,
                    cfg.port,
                    exc,
                    delay,
                )
                self._stop_event.wait(delay)
                delay = min(delay * 2, float(cfg.reconnect_max_s))
                continue
            with self._lock:
                if proto != self._state.protocol:
                    self._state.protocol = proto
                    self._client = self._make_client()
                self._probed = True
            self._connect()
            return

    def _connect(self) -> None:
        cfg = self._config
        with self._lock:
            if self._stopping:
                return
            self._client.connect_async(
                cfg.host,
                cfg.port,
                keepalive=cfg.keepalive_s,
                clean_start=cfg.clean_start,
                properties=session_properties(self._state.protocol, cfg.session_expiry_s),
            )
            if cfg.tls:
                self._client.loop_start()
            else:
                self._client.start_loop()
            self._loop_started = True
        logger.info(
            "agent %s connecting to %s://%s:%d (MQTT %s)",
            cfg.client_id,
            "mqtts" if cfg.tls else "mqtt",
            cfg.host,
            cfg.port,
            self._state.protocol,
        )

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 2.0) -> None:
        """Publish ``final`` retained (when connected), disconnect, stop the thread."""
        with self._lock:
            self._stopping = True
            self._stop_event.set()
            client = self._client
            started = self._loop_started
        if not started:
            return
        if final is not None and self._state.connected:
            info = client.publish(final[0], final[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                logger.warning("agent %s: final publish failed: %s", self._config.client_id, exc)
        client.disconnect()
        self._stop_loop(client)
        self._state.connected = False

    def _stop_loop(self, client: FastClient) -> None:
        if self._config.tls:
            client.loop_stop()
        else:
            client.stop_loop()

    # -------------------------------------------------------------- callbacks

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            # paho retries with backoff; the log says what to fix meanwhile.
            logger.warning(
                "agent %s: broker %s:%d refused the connection (MQTT %s): %s",
                self._config.client_id,
                self._config.host,
                self._config.port,
                self._state.protocol,
                refusal_text(reason_value(reason)),
            )
            return
        self._state.connected = True
        logger.info(
            "agent %s connected (MQTT %s, session present: %s)",
            self._config.client_id,
            self._state.protocol,
            flags.session_present,
        )
        with self._lock:
            subs = [(f, s.qos) for f, s in self._state.subs.items()]
        if subs:
            client.subscribe(subs)
        for listener in list(self._conn_listeners):
            self._safe(listener, True)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was = self._state.connected
        self._state.connected = False
        if was:
            logger.warning(
                "agent %s disconnected (%s); reconnecting with backoff",
                self._config.client_id,
                reason,
            )
            for listener in list(self._conn_listeners):
                self._safe(listener, False)

    def _safe(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:
            logger.exception("agent %s: listener %r failed", self._config.client_id, fn)

    # -------------------------------------------------------------- pub/sub

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        filters = self._matches.get(topic)
        if filters is None:
            with self._match_lock:
                filters = list(self._matcher.iter_match(topic))  # type: ignore[no-untyped-call]
                if len(self._matches) >= 1024:  # many distinct topics: do not grow
                    self._matches.clear()
                self._matches[topic] = filters
        subs = [sub for f in filters if (sub := self._state.subs.get(f)) is not None]
        qos = msg.qos
        # One handler may take the ack; with none (or several) it goes now.
        deferred = [sub for sub in subs if sub.deferred_ack]
        ack = Ack(client, msg.mid, qos) if qos and len(deferred) == 1 else None
        try:
            if not subs:
                logger.debug("agent %s: no handler for %s", self._config.client_id, topic)
                return
            props = msg.properties
            payload = msg.payload
            fields = (
                topic,
                payload if type(payload) is bytes else bytes(payload),
                bool(msg.retain),
                getattr(props, "ResponseTopic", None),
                getattr(props, "CorrelationData", None),
            )
            message = Message(*fields)
            for sub in subs:
                try:
                    sub.handler(Message(*fields, ack) if ack and sub.deferred_ack else message)
                except Exception:
                    if ack is not None and sub.deferred_ack:
                        ack()  # its handler failed: nothing will come of holding it
                    logger.exception(
                        "agent %s: handler for %s failed", self._config.client_id, topic
                    )
        finally:
            if qos and ack is None:
                client.ack(msg.mid, qos)

    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        qos: int = 1,
        *,
        deferred_ack: bool = False,
    ) -> None:
        """Route ``topic_filter`` to ``handler``; subscribes now if connected, else on connect.

        ``deferred_ack``: ``handler`` acknowledges each QoS 1 message with
        ``Message.ack`` (exactly once, and soon: until then the broker holds
        the message in flight, and Mosquitto sends a client at most
        ``max_inflight_messages``, 20 by default, unacknowledged at a time).
        """
        with self._lock:
            self._state.subs[topic_filter] = _Subscription(handler, qos, deferred_ack)
            with self._match_lock:
                self._matcher[topic_filter] = topic_filter
                self._matches = {}
        if self._state.connected:
            self._client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        """Forget ``topic_filter``."""
        with self._lock:
            if self._state.subs.pop(topic_filter, None) is None:
                return
            with self._match_lock:
                del self._matcher[topic_filter]  # type: ignore[no-untyped-call]
                self._matches = {}
        if self._state.connected:
            self._client.unsubscribe(topic_filter)

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
        """Publish now; returns a handle, or None when not connected (nothing is queued)."""
        if not self._state.connected:
            return None
        props = None
        if self._state.protocol == "5" and (response_topic or correlation_data or expiry_s):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
            if expiry_s:
                props.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # NO_CONN: the connection dropped just now (paho resends QoS >= 1 on
            # reconnect, but the caller is told "not sent", as when offline).
            if info.rc != mqtt.MQTT_ERR_NO_CONN:
                logger.warning(
                    "agent %s: publish to %s failed: %s",
                    self._config.client_id,
                    topic,
                    mqtt.error_string(info.rc),
                )
            return None
        return PublishHandle(info.mid, info)
