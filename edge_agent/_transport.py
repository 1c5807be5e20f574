"""MQTT transport: the only module of the agent that touches paho.

:class:`MqttTransport` wraps a paho client (callback API VERSION2) with what the
agent needs: TLS and credentials, TCP_NODELAY on the socket, keepalive, a
retained last will, persistent sessions, reconnect with doubling backoff, MQTT 5
with a fallback to 3.1.1 when the broker refuses 5 (amqtt does), and
resubscription on every connect. Handlers run on paho's network thread and must
not block: they decode and hand work to queues.

The :class:`Transport` protocol is the seam the agent depends on; unit tests use
:class:`edge_agent.MemoryTransport` instead.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "ConnectionConfig",
    "Message",
    "MessageHandler",
    "MqttTransport",
    "PublishHandle",
    "Transport",
    "probe_mqtt5",
]

logger = logging.getLogger(__name__)

# CONNACK codes meaning "I do not speak this protocol version" (v5 0x84, v3 1).
_UNSUPPORTED_PROTOCOL = {0x84, 1}


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
    ever_connected: bool = False
    subs: dict[str, _Subscription] = field(default_factory=dict)


_V5_PROBE = bytes.fromhex("100d00044d5154540502000a000000")  # CONNECT v5, clean, no id


def probe_mqtt5(config: ConnectionConfig, timeout_s: float = 3.0) -> bool:
    """Whether the broker accepts MQTT 5, from a bare CONNECT (no will, no credentials).

    Any v5 CONNACK (even "not authorized") means yes; a 3.1.1 refusal
    ("unacceptable protocol version"), a close or a silence means no.

    Raises:
        OSError: the broker is not reachable.
    """
    sock: socket.socket = socket.create_connection((config.host, config.port), timeout=timeout_s)
    try:
        if config.tls:
            ctx = ssl.create_default_context(cafile=config.ca_file)
            if config.cert_file:
                ctx.load_cert_chain(config.cert_file, config.key_file)
            if config.tls_insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=config.host)
        sock.sendall(_V5_PROBE)
        try:
            head = sock.recv(5)
        except TimeoutError:
            return False
        if len(head) < 4 or head[0] != 0x20:
            return False
        if head[1] == 2 and head[3] == 1:  # a 3.1.1 CONNACK: unacceptable protocol version
            return False
        if head[3] == 0:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so no session lingers
        return head[3] != 0x84
    finally:
        sock.close()


class _Client(mqtt.Client):
    """paho's client, run by :meth:`start_loop` instead of ``loop_start()``.

    Under ``loop_start()`` a publish from another thread (the module worker
    sending a reply) only queues the packet and wakes the network thread through
    a socketpair, which then writes it: two thread hand-offs per reply. Without
    paho's own thread, ``publish()`` writes the packet from the calling thread
    (unless the network thread is inside a callback, which then writes it on
    its way out), so a reply leaves as soon as it is made. Writes can now come
    from two threads, so they are serialised here; none blocks (the socket is
    non-blocking: what a full send buffer leaves queued goes out with the
    network thread's next pass, at the latest after its 1 s select timeout).
    TLS keeps ``loop_start()``: an SSL object must not be read and written from
    two threads at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_lock = threading.Lock()
        self._loop_thread: threading.Thread | None = None
        self._filtered = False  # whether message_callback_add was ever called
        # What paho builds for every PUBACK it receives, built once (see below).
        self._puback_reason = ReasonCode(PacketTypes.PUBACK)
        self._puback_props = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
        # Acks made on the network thread while it hands out a message: sent
        # once the callback is over, written at once (as paho's own PUBACK is).
        self._dispatching: int | None = None
        self._acks_after: list[tuple[int, int]] = []

    # paho decodes every packet it receives into a new MQTT 5 Properties (even
    # over 3.1.1, for PUBACKs), and Properties() rebuilds its name tables each
    # time: ~0.1 ms of a request's trip on this machine, on the network thread,
    # holding the GIL. The two packets of every request (its PUBLISH and the
    # PUBACK of the reply) mostly carry no properties; those are read here
    # without one (a message's ``properties`` is then None, which
    # MqttTransport._on_message reads as "none"). Anything else (properties,
    # QoS 2, paho's logging on) goes to paho's own code. With manual acks (the
    # agent's client) neither path sends the PUBACK: MqttTransport does.

    def message_callback_add(self, sub: str, callback: Any) -> None:
        """Add a per-topic callback (messages are then matched against them, as paho does)."""
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _plain_packets(self) -> bool:
        return self._logger is None and self._on_log is None

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """Acknowledge message ``mid`` (after the callback, if made from inside it)."""
        if self._dispatching == threading.get_ident():
            self._acks_after.append((mid, qos))
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super().ack(mid, qos)

    def _handle_publish(self) -> MQTTErrorCode:
        self._dispatching = threading.get_ident()
        try:
            rc = self._dispatch_publish()
        finally:
            self._dispatching = None
        acks, self._acks_after = self._acks_after, []
        for mid, qos in acks:
            super().ack(mid, qos)
        return rc

    def _dispatch_publish(self) -> MQTTErrorCode:
        command = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        size = len(packet)
        if qos > 1 or size < 2 or not self._plain_packets():
            return super()._handle_publish()
        end = 2 + ((packet[0] << 8) | packet[1])  # the topic is packet[2:end]
        at = end + 2 if qos else end  # after the message id
        v5 = self._protocol == mqtt.MQTTv5
        if end == 2 or at + v5 > size or (v5 and packet[at] != 0):
            # No topic (an MQTT 5 alias, or malformed), too short, or properties.
            return super()._handle_publish()
        topic = bytes(packet[2:end])
        try:
            topic.decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        mid = (packet[end] << 8) | packet[end + 1] if qos else 0
        message = mqtt.MQTTMessage(mid, topic)
        message.dup = bool(command & 0x08)
        message.qos = qos
        message.retain = bool(command & 0x01)
        message.payload = bytes(packet[at + v5 :])  # properties stay None: there are none
        message.timestamp = time.monotonic()  # paho's clock
        on_message = self.on_message
        if self._filtered or on_message is None:
            self._handle_on_message(message)
        else:  # paho's _handle_on_message, less the per-topic callbacks we never add
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._send_puback(mid)

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if len(packet) != 2 or self.on_publish is not None or not self._plain_packets():
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, self._puback_reason, self._puback_props)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        with self._write_lock:
            return super()._packet_write()

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: mqtt.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        # paho's own (2.1, 2.2) pokes the network thread through its socketpair
        # on every packet, before writing it. With our loop the caller writes
        # the packet itself, so the poke only woke the network thread to fight
        # the worker for the GIL in the middle of a reply (~0.1 ms a round
        # trip here). Poke only when something is left for that thread to do.
        if self._loop_thread is None:  # loop_start() (TLS) or no loop: paho's way
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        # Inside a callback the network thread writes it on its way out.
        written = self._in_callback_mutex.acquire(False)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if written:
            self._in_callback_mutex.release()
            rc = self.loop_write()  # as paho: a failed write (connection lost) is returned
        if not written or self.want_write():
            pair = self._sockpairW
            if pair is not None:
                with contextlib.suppress(BlockingIOError, OSError):
                    pair.send(b"0")
        return rc

    def start_loop(self) -> None:
        """Run the network loop (connect, read, reconnect) on a daemon thread."""
        self._thread_terminate = False
        self._loop_thread = threading.Thread(
            target=self._run_loop, name=f"mqtt-{self._client_id.decode()}", daemon=True
        )
        self._loop_thread.start()

    def _run_loop(self) -> None:
        try:
            self.loop_forever(retry_first_connection=True)
        except Exception:  # never seen; without it the thread would die silently
            logger.exception("mqtt network loop of %s failed", self._client_id.decode())

    def stop_loop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop started by :meth:`start_loop` (after :meth:`disconnect`)."""
        self._thread_terminate = True
        thread = self._loop_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)


class _Ack:
    """Sends one message's PUBACK, once, from whichever thread is done with it."""

    __slots__ = ("_client", "_mid", "_qos", "_sent")

    def __init__(self, client: mqtt.Client, mid: int, qos: int) -> None:
        self._client, self._mid, self._qos = client, mid, qos
        self._sent = False

    def __call__(self) -> None:
        if self._sent:
            return
        self._sent = True
        # Lost with the connection it came on: the broker sends the message again.
        self._client.ack(self._mid, self._qos)


def _set_nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Without it, small request/reply messages wait for Nagle: 88 ms instead of 1 ms.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (unix, websockets)
        logger.debug("TCP_NODELAY not set on %r", sock)


class MqttTransport:
    """A paho client with the agent's connection policy.

    Example:
        >>> t = MqttTransport(ConnectionConfig("127.0.0.1", 1883, "cam-07"))
        >>> t.connected
        False
    """

    def __init__(self, config: ConnectionConfig) -> None:
        """Build the client; nothing connects until :meth:`start`."""
        self._config = config
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

    def _make_client(self) -> _Client:
        cfg = self._config
        v5 = self._state.protocol == "5"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else cfg.clean_start,
            reconnect_on_failure=True,
            # Acks are sent by _on_message: at once, or by a deferred_ack handler.
            manual_ack=True,
        )
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        # No on_publish: paho would call it under its callback mutex from inside a
        # socket write, which can now happen on a publishing thread that holds
        # paho's message mutex, waiting on a network thread that wants it (a
        # deadlock). Handles ask paho's MQTTMessageInfo instead.
        client.on_message = self._on_message
        client.max_inflight_messages_set(cfg.max_inflight)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file,
                certfile=cfg.cert_file,
                keyfile=cfg.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg.tls_insecure)
        if cfg.will is not None:
            client.will_set(cfg.will[0], cfg.will[1], qos=1, retain=True)
        return client

    def _connect_properties(self) -> Properties | None:
        if self._state.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._config.session_expiry_s
        return props

    def start(self) -> None:
        """Start connecting in the background (returns at once).

        With ``protocol="auto"`` a probe first asks the broker whether it speaks
        MQTT 5 (some 3.1.1-only brokers, amqtt among them, hang on a v5 CONNECT
        that carries a will instead of refusing it).
        """
        with self._lock:
            self._stopping = False
            self._stop_event.clear()
        if self._config.protocol == "auto" and not self._probed:
            threading.Thread(
                target=self._probe_then_connect, name="mqtt-probe", daemon=True
            ).start()
        else:
            self._connect()

    def _probe_then_connect(self) -> None:
        cfg = self._config
        delay = float(cfg.reconnect_min_s)
        while not self._stop_event.is_set():
            try:
                v5 = probe_mqtt5(cfg)
            except OSError as exc:
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
                proto = "5" if v5 else "3.1.1"
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
                properties=self._connect_properties(),
            )
            if cfg.tls:
                self._client.loop_start()
            else:
                self._client.start_loop()
            self._loop_started = True
        logger.info(
            "agent %s connecting to mqtt://%s:%d (MQTT %s)",
            cfg.client_id,
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

    def _stop_loop(self, client: _Client) -> None:
        if self._config.tls:
            client.loop_stop()
        else:
            client.stop_loop()

    def _fallback_to_311(self) -> None:
        # Runs on the network thread; swap the client from a helper thread since
        # loop_stop() cannot be called from the loop's own thread.
        def swap() -> None:
            with self._lock:
                old = self._client
                self._stop_loop(old)
                self._client = self._make_client()
                self._loop_started = False
            self._connect()

        if self._state.protocol != "5":
            return
        self._state.protocol = "3.1.1"
        logger.info(
            "agent %s: broker refused MQTT 5, falling back to 3.1.1", self._config.client_id
        )
        self._client.disconnect()
        threading.Thread(target=swap, name="mqtt-fallback", daemon=True).start()

    # -------------------------------------------------------------- callbacks

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            if (
                self._config.protocol == "auto"
                and self._state.protocol == "5"
                and not self._state.ever_connected
                and reason.value in _UNSUPPORTED_PROTOCOL
            ):
                self._fallback_to_311()
                return
            logger.warning("agent %s: connection refused: %s", self._config.client_id, reason)
            return
        self._state.connected = True
        self._state.ever_connected = True
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
        ack = _Ack(client, msg.mid, qos) if qos and len(deferred) == 1 else None
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
