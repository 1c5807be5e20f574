"""The edge gateway: the control plane's one MQTT client (the only cloud module using paho).

It keeps an agent registry (online/offline from the retained ``status`` topic and
the agents' last wills, last heartbeat, a bounded ring of heartbeat metrics, the
retained ``observed`` states), publishes desired states (retained, QoS 1), sends
inference requests and awaits their replies (correlation ids, timeouts), receives
application events (deduplicated by event id, so replayed events count once), and
is a :class:`~mesh._streams.MessageBus` (``subscribe(pattern, handler)`` /
``publish(topic, payload)``) for stream functions.

Threads: paho's network thread only parses inference replies and hands every
other message to one dispatcher thread, so neither a slow handler nor the
registry ever blocks the network thread. Handlers run on the dispatcher thread,
in arrival order; an exception in one is logged and the gateway goes on.

Connection: MQTT 5 when the broker speaks it (ResponseTopic/CorrelationData, and a
session with an expiry, so subscriptions and QoS 1 messages survive a broker
restart), else 3.1.1 (e.g. the embedded amqtt broker); ``TCP_NODELAY`` on the
socket; automatic reconnects. Broker subscriptions are kept free of overlaps
(overlapping patterns are merged into a wider filter and matched locally), since a
broker sends one copy per matching subscription.

Example:
    >>> gw = EdgeGateway("mqtt://127.0.0.1:1883").start()          # doctest: +SKIP
    >>> gw.wait_for_agent("cam-07", state="online", timeout_s=5)    # doctest: +SKIP
    >>> result = await gw.infer("counter", "cam-07", {"x": frame})  # doctest: +SKIP
    >>> gw.stop()                                                    # doctest: +SKIP

Errors (all :class:`~mesh._errors.MeshError`)::

    EdgeGatewayError              the gateway could not do what was asked
    ├── EdgeConnectionError       the broker refused or could not be reached
    ├── EdgeRequestTimeoutError   no reply within timeout_s (also a TimeoutError)
    └── EdgeInferenceError        the node answered with an error (code, message)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

from edge_agent.protocol import (
    DEFAULT_PREFIX,
    AgentStatus,
    DesiredState,
    Event,
    Heartbeat,
    InferReply,
    InferRequest,
    ObservedState,
    ProtocolError,
    Tensor,
    Topics,
    decode_frame,
    encode_frame,
    new_id,
    parse_header,
    parse_json,
)

from ._errors import MeshError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "AgentView",
    "EdgeConnectionError",
    "EdgeGateway",
    "EdgeGatewayError",
    "EdgeInferenceError",
    "EdgeRequestTimeoutError",
    "GatewayStats",
    "HeartbeatSample",
    "InferResult",
    "cover_filters",
    "topic_covers",
]

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason: unsupported protocol version (v3 rc 1 maps here)


class EdgeGatewayError(MeshError, RuntimeError):
    """The edge gateway could not do what was asked."""


class EdgeConnectionError(EdgeGatewayError, ConnectionError):
    """The broker refused the gateway or could not be reached."""


class EdgeRequestTimeoutError(EdgeGatewayError, TimeoutError):
    """No reply to an inference request within its timeout."""

    def __init__(self, *, module: str, node: str, correlation_id: str, timeout_s: float) -> None:
        self.module = module
        self.node = node
        self.correlation_id = correlation_id
        self.timeout_s = timeout_s
        super().__init__(
            f"no reply from {module} on {node} within timeout_s={timeout_s:g} "
            f"(correlation id {correlation_id})"
        )


class EdgeInferenceError(EdgeGatewayError):
    """The node answered an inference request with an error.

    Attributes:
        code: the protocol's error code (e.g. ``bad_input``, ``unknown_module``).
        expected: for ``bad_input``, the module's input signature as text.
    """

    def __init__(self, *, module: str, node: str, code: str, message: str,
                 expected: list[str] | None = None) -> None:
        self.module = module
        self.node = node
        self.code = code
        self.expected = expected or []
        detail = f"; expected {', '.join(self.expected)}" if self.expected else ""
        super().__init__(f"{module} on {node} failed ({code}): {message}{detail}")


class HealthSink(Protocol):
    """Where the gateway records agent health (the enrolment store does)."""

    def record_health(
        self, agent_id: str, *, state: str | None = None, seen_at: float | None = None,
        heartbeat_at: float | None = None, metrics: dict[str, Any] | None = None,
    ) -> None:
        """Remember what was last seen of an agent."""
        ...


# ------------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class HeartbeatSample:
    """One heartbeat in an agent's metrics ring.

    Attributes:
        received_at: local Unix time it arrived.
        heartbeat: the message.
    """

    received_at: float
    heartbeat: Heartbeat

    @property
    def cpu_percent(self) -> float:
        """Host CPU use."""
        return self.heartbeat.host.cpu_percent

    @property
    def mem_percent(self) -> float:
        """Host memory use."""
        return self.heartbeat.host.mem_percent


@dataclass(frozen=True, slots=True)
class AgentView:
    """A snapshot of one agent in the registry.

    Attributes:
        agent_id: the agent.
        state: ``online``, ``offline`` (status or last will) or ``unknown``.
        site: from its status or heartbeat.
        status: its last status message.
        status_received_at: local Unix time that status arrived.
        last_heartbeat: its last heartbeat, if any.
        last_heartbeat_at: local Unix time that heartbeat arrived.
        observed: its last observed state.
        desired_version: the last desired version this gateway published or saw.
    """

    agent_id: str
    state: str
    site: str | None
    status: AgentStatus | None
    status_received_at: float | None
    last_heartbeat: Heartbeat | None
    last_heartbeat_at: float | None
    observed: ObservedState | None
    desired_version: int | None

    def heartbeat_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the last heartbeat arrived, or None."""
        if self.last_heartbeat_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_heartbeat_at)

    def health(self, now: float | None = None) -> str:
        """``online``, ``stale`` (online, 3 heartbeat periods silent), ``offline``, ``unknown``."""
        if self.state != "online":
            return self.state
        age = self.heartbeat_age_s(now)
        period = self.last_heartbeat.period_s if self.last_heartbeat is not None else 0.0
        if age is not None and period > 0 and age > 3 * period:
            return "stale"
        return "online"


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """Counters since the gateway started."""

    messages: int = 0
    malformed: int = 0
    events: int = 0
    duplicate_events: int = 0
    requests: int = 0
    replies: int = 0
    unmatched_replies: int = 0
    timeouts: int = 0
    handler_errors: int = 0


@dataclass(frozen=True, slots=True)
class InferResult:
    """A successful inference reply.

    Attributes:
        outputs: output tensors as (read-only) numpy arrays, by name.
        reply: the reply header (node, version, queue/compute times).
        latency_ms: round trip measured by the gateway.
    """

    outputs: dict[str, npt.NDArray[Any]]
    reply: InferReply
    latency_ms: float


class _Agent:
    __slots__ = ("desired_version", "heartbeat", "heartbeat_at", "id", "last_persist", "observed",
                 "ring", "site", "state", "status", "status_at")

    def __init__(self, agent_id: str, ring: int) -> None:
        self.id = agent_id
        self.state = "unknown"
        self.site: str | None = None
        self.status: AgentStatus | None = None
        self.status_at: float | None = None
        self.heartbeat: Heartbeat | None = None
        self.heartbeat_at: float | None = None
        self.observed: ObservedState | None = None
        self.desired_version: int | None = None
        self.ring: deque[HeartbeatSample] = deque(maxlen=ring)
        self.last_persist = 0.0

    def view(self) -> AgentView:
        return AgentView(self.id, self.state, self.site, self.status, self.status_at,
                         self.heartbeat, self.heartbeat_at, self.observed, self.desired_version)


@dataclass(slots=True)
class _Counters:
    messages: int = 0
    malformed: int = 0
    events: int = 0
    duplicate_events: int = 0
    requests: int = 0
    replies: int = 0
    unmatched_replies: int = 0
    timeouts: int = 0
    handler_errors: int = 0


@dataclass(slots=True)
class _Pending:
    future: concurrent.futures.Future[tuple[InferReply, list[Tensor]]]
    module: str
    node: str
    sent: float = field(default_factory=time.perf_counter)


def topic_covers(subscription: str, pattern: str) -> bool:
    """Whether every topic matching ``pattern`` also matches ``subscription``.

    Example:
        >>> topic_covers("mesh/v1/events/#", "mesh/v1/events/+/counts")
        True
        >>> topic_covers("a/+", "a/#")
        False
    """
    sub, pat = subscription.split("/"), pattern.split("/")
    for i, level in enumerate(sub):
        if level == "#":
            return True
        if i >= len(pat):
            return False
        if level == "+":
            if pat[i] == "#":
                return False
            continue
        if pat[i] != level:
            return False
    return len(sub) == len(pat)


def _overlaps(a: str, b: str) -> bool:
    la, lb = a.split("/"), b.split("/")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


def _join(a: str, b: str) -> str:
    la, lb = a.split("/"), b.split("/")
    out: list[str] = []
    for x, y in zip(la, lb, strict=False):
        if "#" in (x, y):
            return "/".join([*out, "#"])
        out.append(x if x == y else "+")
    if len(la) != len(lb):
        out.append("#")
    return "/".join(out)


def cover_filters(patterns: Iterable[str]) -> set[str]:
    """Broker filters covering ``patterns`` with no two overlapping.

    Brokers send one copy of a message per matching subscription, so overlapping
    filters would deliver duplicates; overlapping patterns are merged into a wider
    filter instead, and handlers are matched locally.

    Example:
        >>> sorted(cover_filters(["a/+/c", "a/b/#", "x/y"]))
        ['a/+/#', 'x/y']
    """
    filters: list[str] = []
    for pattern in sorted(set(patterns)):
        current = pattern
        while not any(topic_covers(f, current) for f in filters):
            overlapping = [f for f in filters if _overlaps(f, current)]
            if not overlapping:
                filters.append(current)
                break
            for f in overlapping:
                filters.remove(f)
                current = _join(current, f)
    return set(filters)


def _topic_matches(pattern: str, topic: str) -> bool:
    want, have = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise EdgeGatewayError(
            "the edge gateway needs paho-mqtt: pip install 'fogmesh[cloud]'"
        ) from exc
    return mqtt


# ------------------------------------------------------------------------ gateway


class EdgeGateway:
    """The control plane's MQTT client: registry, desired states, inference, events, bus.

    Args:
        broker_url: ``mqtt://[user:pass@]host[:port]``.
        username: broker user (overrides the URL's).
        password: broker password (overrides the URL's).
        prefix: topic prefix (``mesh/v1``).
        client_id: MQTT client id; also names the reply topic. Random by default.
        protocol: ``"auto"`` (5, then 3.1.1), ``"5"`` or ``"3.1.1"``.
        keepalive_s: MQTT keepalive.
        session_expiry_s: MQTT 5 session lifetime across disconnects (subscriptions
            and QoS 1 messages are kept by the broker meanwhile).
        metrics_ring: heartbeats kept per agent.
        dedupe_window: event ids remembered for deduplication.
        health_sink: where agent health is persisted (e.g. the enrolment store).

    Example:
        >>> with EdgeGateway(broker.url) as gw:               # doctest: +SKIP
        ...     gw.publish_desired("cam-07", DesiredState(version=1))
    """

    def __init__(
        self,
        broker_url: str = "mqtt://127.0.0.1:1883",
        *,
        username: str | None = None,
        password: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        protocol: Literal["auto", "5", "3.1.1"] = "auto",
        keepalive_s: int = 30,
        session_expiry_s: int = 300,
        metrics_ring: int = 360,
        dedupe_window: int = 100_000,
        health_sink: HealthSink | None = None,
    ) -> None:
        """Configure the gateway; :meth:`start` connects."""
        parts = urlsplit(broker_url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise EdgeGatewayError(f"broker {broker_url!r}: expected mqtt://host[:port]")
        self.broker_url = broker_url
        self.host = parts.hostname
        self.port = parts.port or 1883
        self._username = username or (unquote(parts.username) if parts.username else None)
        self._password = password if password is not None else (
            unquote(parts.password) if parts.password else None)
        self.topics = Topics(prefix)
        self.prefix = prefix
        self.client_id = client_id or f"mesh-gw-{uuid.uuid4().hex[:12]}"
        self.reply_topic = self.topics.reply(Topics.check_segment(self.client_id))
        self._protocol_choice = protocol
        self.protocol: str | None = None
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._ring = metrics_ring
        self._dedupe_window = dedupe_window
        self._health = health_sink

        self._client: Any = None
        self._lock = threading.Lock()  # registry, subscriptions, pending; never held over paho
        self._changed = threading.Condition(self._lock)
        self._agents: dict[str, _Agent] = {}
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._counters = _Counters()
        self._pending: dict[str, _Pending] = {}
        internal = [self.topics.all_agents(leaf) for leaf in
                    ("status", "heartbeat", "observed", "desired")]
        internal += [f"{prefix}/events/#", self.reply_topic]
        self._wanted: dict[str, int] = dict.fromkeys(internal, 1)  # pattern -> references
        self._filters = cover_filters(self._wanted)  # what is subscribed at the broker
        self._sub_lock = threading.Lock()  # serialises filter changes (never in callbacks)
        self._handlers: list[tuple[str, Handler]] = []
        self._event_handlers: list[Callable[[Event], None]] = []
        self._suback_waiters: dict[int, threading.Event] = {}
        self._early_subacks: set[int] = set()
        self._generation = 0  # bumped on every registry change, for wait_until
        self._ready_mid: int | None = None
        self._connected = threading.Event()
        self._ready = threading.Event()  # connected and internal subscriptions acknowledged
        self._connack: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._stopping = False
        self._starting = False
        self._probing = False

    def __repr__(self) -> str:
        return (f"EdgeGateway(broker={self.host}:{self.port}, client_id={self.client_id!r}, "
                f"protocol={self.protocol!r}, ready={self._ready.is_set()})")

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 10.0) -> EdgeGateway:
        """Connect, subscribe and wait for the subscriptions to be acknowledged.

        Raises:
            EdgeConnectionError: the broker was unreachable, refused the
                credentials, or did not acknowledge within ``timeout_s``.
        """
        if self._client is not None:
            return self
        self._stopping = False
        self._starting = True
        self._dispatcher = threading.Thread(target=self._dispatch_loop,
                                            name=f"mesh-gw-dispatch-{self.client_id}", daemon=True)
        self._dispatcher.start()
        deadline = time.monotonic() + timeout_s
        proto = "3.1.1" if self._protocol_choice == "3.1.1" else "5"
        try:
            # A 3.1.1-only broker (amqtt) misreads a v5 CONNECT with properties or
            # credentials and never answers, so "auto" first probes with a bare v5
            # CONNECT: "unsupported protocol version" means 3.1.1, any other answer
            # (accepted, not authorised, ...) means v5.
            if self._protocol_choice == "auto":
                code = self._connect(proto, deadline, mode="probe")
                if code == _UNSUPPORTED_PROTOCOL:
                    logger.info("broker %s:%d refused MQTT 5; falling back to 3.1.1",
                                self.host, self.port)
                    proto = "3.1.1"
            if proto == "5" and self._session_expiry_s > 0:
                # Mosquitto (2.0.11) does not keep a session across its own restart when
                # the session began with clean start, so: wipe any old session with a
                # clean connect, then open the real one with clean start off.
                code = self._connect(proto, deadline, mode="wipe")
                if code != 0:
                    raise EdgeConnectionError(
                        f"broker {self.host}:{self.port} refused gateway {self.client_id} "
                        f"(MQTT {proto}): {_reason_text(code)}"
                    )
            code = self._connect(proto, deadline)
            if code != 0:
                raise EdgeConnectionError(
                    f"broker {self.host}:{self.port} refused gateway {self.client_id} "
                    f"(MQTT {proto}): {_reason_text(code)}"
                )
            if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                raise EdgeConnectionError(
                    f"broker {self.host}:{self.port} did not acknowledge the gateway's "
                    f"subscriptions within {timeout_s:g} s"
                )
        except BaseException:
            self.stop()
            raise
        finally:
            self._starting = False
        logger.info("edge gateway %s connected to %s:%d over MQTT %s", self.client_id,
                    self.host, self.port, self.protocol)
        return self

    def _connect(self, proto: str, deadline: float, *,
                 mode: Literal["probe", "wipe", "session"] = "session") -> int:
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        v5 = proto == "5"
        bare = mode == "probe"
        persistent = v5 and mode == "session" and self._session_expiry_s > 0
        if self._client is not None:
            self._teardown_client()
        # The probe has its own id so it never wipes the gateway's persistent session.
        kwargs: dict[str, Any] = {"client_id": f"{self.client_id}-probe" if bare else
                                  self.client_id,
                                  "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311}
        if not v5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        if self._username is not None and not bare:
            client.username_pw_set(self._username, self._password)
        self._client = client
        self._probing = mode != "session"
        self.protocol = proto
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._session_expiry_s
        try:
            client.connect(self.host, self.port, keepalive=self._keepalive_s, properties=props,
                           clean_start=False if persistent else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        except OSError as exc:
            raise EdgeConnectionError(
                f"cannot reach broker {self.host}:{self.port}: {exc}") from exc
        client.loop_start()
        try:
            return self._connack.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise EdgeConnectionError(
                f"no CONNACK from broker {self.host}:{self.port} (MQTT {proto})") from None

    def _teardown_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # already gone; nothing more to do
            logger.debug("gateway %s: disconnect failed", self.client_id, exc_info=True)
        client.loop_stop()
        while True:  # drop stale CONNACK codes of this client
            try:
                self._connack.get_nowait()
            except queue.Empty:
                break

    def stop(self) -> None:
        """Disconnect, fail pending requests and stop the dispatcher; idempotent."""
        self._stopping = True
        self._ready.clear()
        self._connected.clear()
        self._teardown_client()
        with self._lock:
            pending, self._pending = self._pending, {}
        for corr, p in pending.items():
            if not p.future.done():
                p.future.set_exception(EdgeGatewayError(
                    f"gateway {self.client_id} stopped before {p.module} on {p.node} "
                    f"answered (correlation id {corr})"))
        if self._dispatcher is not None:
            self._inbox.put(None)
            self._dispatcher.join(5.0)
            self._dispatcher = None
        logger.info("edge gateway %s stopped", self.client_id)

    def __enter__(self) -> EdgeGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the gateway is connected with its subscriptions in place."""
        return self._ready.is_set()

    # ------------------------------------------------------------ paho callbacks
    # These run on paho's network thread: no blocking, no waiting, no user code.

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        code = int(getattr(reason_code, "value", reason_code))
        if client is not self._client:
            return
        self._connack.put(code)
        if self._probing:
            return  # the protocol probe or the session wipe: start() disconnects it
        if code != 0:
            logger.warning("gateway %s: broker %s:%d refused the connection: %s",
                           self.client_id, self.host, self.port, reason_code)
            if self._starting:
                client.disconnect()  # start() reports it; later, paho keeps retrying
            return
        self._connected.set()
        with self._lock:
            topics = sorted(self._filters)
        # The SUBACK is read on this same thread after we return, so no race here.
        _, self._ready_mid = client.subscribe([(t, 1) for t in topics])
        logger.info("gateway %s connected to %s:%d (session present: %s); subscribing %d topics",
                    self.client_id, self.host, self.port,
                    getattr(flags, "session_present", None), len(topics))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        if client is not self._client:
            return  # a replaced client (the MQTT 5 probe) going away
        self._connected.clear()
        self._ready.clear()
        if not self._stopping:
            logger.warning("gateway %s lost broker %s:%d (%s); reconnecting", self.client_id,
                           self.host, self.port, reason_code)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        failed = [str(rc) for rc in reason_codes if int(getattr(rc, "value", rc)) >= 0x80]
        if failed:
            logger.error("gateway %s: broker refused subscriptions (mid %d): %s",
                         self.client_id, mid, ", ".join(failed))
        if mid == self._ready_mid:
            self._ready_mid = None
            if self._connected.is_set():
                self._ready.set()
                self._notify()
            return
        with self._lock:
            waiter = self._suback_waiters.pop(mid, None)
            if waiter is None:
                if len(self._early_subacks) > 1024:
                    self._early_subacks.clear()
                self._early_subacks.add(mid)
        if waiter is not None:
            waiter.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic: str = message.topic
        if topic == self.reply_topic:
            self._handle_reply(bytes(message.payload), message.properties)
        else:
            self._inbox.put((topic, bytes(message.payload)))

    # ------------------------------------------------------------------ replies

    def _handle_reply(self, payload: bytes, properties: Any) -> None:
        try:
            header, tensors = decode_frame(payload)
            reply = parse_header(header, InferReply)
        except ProtocolError as exc:
            with self._lock:
                self._counters.malformed += 1
            logger.warning("gateway %s: dropped a malformed reply on %s: %s", self.client_id,
                           self.reply_topic, exc)
            return
        corr = reply.correlation_id
        if corr is None and properties is not None:
            raw = getattr(properties, "CorrelationData", None)
            corr = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else None
        with self._lock:
            pending = self._pending.pop(corr, None) if corr else None
            if pending is None:
                self._counters.unmatched_replies += 1
            else:
                self._counters.replies += 1
        if pending is None:
            # A QoS 1 duplicate, or the answer to a request that already timed out.
            logger.debug("gateway %s: reply %s matches no pending request", self.client_id, corr)
            return
        if not pending.future.done():
            pending.future.set_result((reply, tensors))

    # --------------------------------------------------------------- dispatching

    def _dispatch_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            topic, payload = item
            try:
                self._dispatch(topic, payload)
            except Exception:  # the dispatcher must outlive any bad message
                logger.exception("gateway %s: failed to handle a message on %s",
                                 self.client_id, topic)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._counters.messages += 1
        levels = topic.split("/")
        plen = len(self.prefix.split("/"))
        rest = levels[plen:] if topic.startswith(self.prefix + "/") else []
        deliver = True
        if len(rest) == 3 and rest[0] == "agents":
            deliver = self._handle_agent(rest[1], rest[2], topic, payload)
        elif len(rest) == 3 and rest[0] == "events":
            deliver = self._handle_event(topic, payload)
        if deliver:
            with self._lock:
                handlers = [h for p, h in self._handlers if _topic_matches(p, topic)]
            for handler in handlers:
                self._call(handler, topic, payload)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            with self._lock:
                self._counters.handler_errors += 1
            logger.exception("gateway %s: handler %r failed", self.client_id, fn)

    def _malformed(self, topic: str, exc: Exception) -> bool:
        with self._lock:
            self._counters.malformed += 1
        logger.warning("gateway %s: dropped a malformed message on %s: %s", self.client_id,
                       topic, exc)
        return False

    def _handle_agent(self, agent_id: str, leaf: str, topic: str, payload: bytes) -> bool:
        if leaf not in ("status", "heartbeat", "observed", "desired"):
            return True
        if not payload:  # a retained message was cleared
            return True
        now = time.time()
        persist: dict[str, Any] | None = None
        try:
            if leaf == "status":
                status = parse_json(payload, AgentStatus)
                with self._changed:
                    agent = self._agent(agent_id)
                    changed = agent.state != status.state
                    agent.state, agent.status, agent.status_at = status.state, status, now
                    agent.site = status.site or agent.site
                    self._generation += 1
                    self._changed.notify_all()
                persist = {"state": status.state, "seen_at": now}
                log = logger.info if changed else logger.debug
                log("agent %s is %s (site %s%s)", agent_id, status.state, status.site,
                    f", {status.reason}" if status.reason else "")
            elif leaf == "heartbeat":
                hb = parse_json(payload, Heartbeat)
                with self._changed:
                    agent = self._agent(agent_id)
                    agent.heartbeat, agent.heartbeat_at = hb, now
                    agent.site = hb.site or agent.site
                    agent.ring.append(HeartbeatSample(now, hb))
                    due = now - agent.last_persist >= 10.0
                    if due:
                        agent.last_persist = now
                    self._generation += 1
                    self._changed.notify_all()
                if due:
                    persist = {"seen_at": now, "heartbeat_at": now,
                               "metrics": hb.host.model_dump(mode="json")}
            elif leaf == "observed":
                observed = parse_json(payload, ObservedState)
                with self._changed:
                    self._agent(agent_id).observed = observed
                    self._generation += 1
                    self._changed.notify_all()
                logger.info("agent %s observed version %d: %d installed, %d errors", agent_id,
                            observed.version, len(observed.installed), len(observed.errors))
            else:
                desired = parse_json(payload, DesiredState)
                with self._changed:
                    self._agent(agent_id).desired_version = desired.version
                    self._generation += 1
                    self._changed.notify_all()
        except ProtocolError as exc:
            return self._malformed(topic, exc)
        if persist is not None and self._health is not None:
            try:
                self._health.record_health(agent_id, **persist)
            except Exception:
                logger.warning("gateway %s: could not persist health of agent %s",
                               self.client_id, agent_id, exc_info=True)
        return True

    def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(agent_id, self._ring)
        return agent

    def _handle_event(self, topic: str, payload: bytes) -> bool:
        try:
            event = parse_json(payload, Event)
        except ProtocolError as exc:
            return self._malformed(topic, exc)
        with self._lock:
            if event.id in self._seen_events:
                self._counters.duplicate_events += 1
                self._seen_events.move_to_end(event.id)
                duplicate = True
            else:
                self._counters.events += 1
                self._seen_events[event.id] = None
                if len(self._seen_events) > self._dedupe_window:
                    self._seen_events.popitem(last=False)
                duplicate = False
            handlers = list(self._event_handlers)
        if duplicate:
            logger.debug("gateway %s: duplicate event %s on %s dropped", self.client_id,
                         event.id, topic)
            return False
        for handler in handlers:
            self._call(handler, event)
        self._notify()
        return True

    # ------------------------------------------------------------------ registry

    def agents(self) -> list[AgentView]:
        """Every agent the gateway has heard of, by id."""
        with self._lock:
            return [self._agents[k].view() for k in sorted(self._agents)]

    def agent(self, agent_id: str) -> AgentView | None:
        """One agent's snapshot, or None if never heard of."""
        with self._lock:
            agent = self._agents.get(agent_id)
            return agent.view() if agent is not None else None

    def metrics(self, agent_id: str) -> list[HeartbeatSample]:
        """An agent's heartbeat ring, oldest first."""
        with self._lock:
            agent = self._agents.get(agent_id)
            return list(agent.ring) if agent is not None else []

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds or ``timeout_s`` passes; returns whether it held.

        Re-checked on every registry change or event (and every 50 ms, for predicates
        on anything else). ``predicate`` runs without the gateway's lock, so it may
        call the registry.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                generation = self._generation
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(min(left, 0.05))

    def barrier(self, timeout_s: float = 5.0) -> bool:
        """Wait until every message the broker queued for the gateway so far is handled.

        A marker is published to a topic of the gateway's own and awaited: a broker
        delivers a client's messages in order, so e.g. all retained statuses sent
        on subscribing are in the registry when this returns True.
        """
        topic = f"{self.reply_topic}/barrier/{uuid.uuid4().hex[:12]}"
        seen = threading.Event()
        unsubscribe = self.subscribe(topic, lambda t, p: seen.set(), timeout_s=timeout_s)
        try:
            self.publish(topic, b"", qos=1)
            return seen.wait(timeout_s)
        finally:
            unsubscribe()

    def wait_for_agent(self, agent_id: str, *, state: str = "online",
                       timeout_s: float = 10.0) -> AgentView:
        """Wait until an agent's status is ``state``; returns its snapshot.

        Raises:
            EdgeRequestTimeoutError: not in that state within ``timeout_s``.
        """
        def ok() -> bool:
            view = self.agent(agent_id)
            return view is not None and view.state == state

        if not self.wait_until(ok, timeout_s):
            raise EdgeRequestTimeoutError(module=f"status={state}", node=agent_id,
                                          correlation_id="-", timeout_s=timeout_s)
        view = self.agent(agent_id)
        assert view is not None
        return view

    def wait_for_observed(self, agent_id: str, version: int, *,
                          timeout_s: float = 30.0) -> ObservedState:
        """Wait until an agent reports an observed ``version`` at least this one.

        Raises:
            EdgeRequestTimeoutError: not reported within ``timeout_s``.
        """
        def ok() -> bool:
            view = self.agent(agent_id)
            return view is not None and view.observed is not None and \
                view.observed.version >= version

        if not self.wait_until(ok, timeout_s):
            raise EdgeRequestTimeoutError(module=f"observed>={version}", node=agent_id,
                                          correlation_id="-", timeout_s=timeout_s)
        view = self.agent(agent_id)
        assert view is not None and view.observed is not None
        return view.observed

    def stats(self) -> GatewayStats:
        """Counters since start."""
        with self._lock:
            c = self._counters
            return GatewayStats(c.messages, c.malformed, c.events, c.duplicate_events,
                                c.requests, c.replies, c.unmatched_replies, c.timeouts,
                                c.handler_errors)

    # ------------------------------------------------------------------- desired

    def publish_desired(self, agent_id: str, desired: DesiredState, *,
                        timeout_s: float | None = 5.0) -> None:
        """Publish an agent's desired state (retained, QoS 1).

        Args:
            agent_id: the agent.
            desired: the state; its ``agent`` field is filled in when empty.
            timeout_s: wait this long for the broker's PUBACK; None = do not wait.

        Raises:
            EdgeGatewayError: not acknowledged in time (paho keeps it queued and
                sends it after reconnecting).
        """
        Topics.check_segment(agent_id)
        if desired.agent is None:
            desired = desired.model_copy(update={"agent": agent_id})
        elif desired.agent != agent_id:
            raise EdgeGatewayError(f"desired state for {desired.agent!r} published to {agent_id!r}")
        payload = desired.model_dump_json(exclude_none=True).encode()
        self.publish(self.topics.desired(agent_id), payload, qos=1, retain=True,
                     timeout_s=timeout_s)
        with self._changed:
            self._agent(agent_id).desired_version = desired.version
            self._generation += 1
            self._changed.notify_all()
        logger.info("published desired version %d to agent %s (%d modules)", desired.version,
                    agent_id, len(desired.modules))

    def clear_desired(self, agent_id: str) -> None:
        """Remove an agent's retained desired state."""
        self.publish(self.topics.desired(agent_id), b"", qos=1, retain=True)

    # ------------------------------------------------------------------ inference

    def request(
        self,
        module: str,
        node: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[Tensor],
        *,
        timeout_s: float = 5.0,
        version: str | None = None,
        qos: int = 1,
    ) -> tuple[str, concurrent.futures.Future[tuple[InferReply, list[Tensor]]]]:
        """Send an inference request; returns its correlation id and a future of the reply.

        Most callers want :meth:`infer` (async) or :meth:`infer_sync`.

        Raises:
            EdgeConnectionError: not connected (the request is not sent).
        """
        client = self._client
        if not self._ready.is_set() or client is None:
            raise EdgeConnectionError(
                f"gateway {self.client_id} is not connected to {self.host}:{self.port}; "
                f"{module} on {node} not requested")
        tensors = list(inputs) if not isinstance(inputs, Mapping) else [
            Tensor.from_numpy(name, array) for name, array in inputs.items()]
        corr = new_id()
        header = InferRequest(module=module, version=version, reply_to=self.reply_topic,
                              correlation_id=corr, deadline_ts=time.time() + timeout_s)
        frame = encode_frame(header, tensors)
        future: concurrent.futures.Future[tuple[InferReply, list[Tensor]]] = \
            concurrent.futures.Future()
        with self._lock:
            self._pending[corr] = _Pending(future, module, node)
            self._counters.requests += 1
        properties = None
        if self.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = corr.encode()
            properties.MessageExpiryInterval = max(1, math.ceil(timeout_s))
        client.publish(self.topics.infer(module, node), frame, qos=qos, properties=properties)
        return corr, future

    def _result(self, module: str, node: str, reply: InferReply, tensors: list[Tensor],
                started: float) -> InferResult:
        if reply.error is not None:
            expected = [s.describe() for s in reply.error.expected or []]
            raise EdgeInferenceError(module=module, node=node, code=str(reply.error.code),
                                     message=reply.error.message, expected=expected)
        outputs = {t.name: t.to_numpy() for t in tensors}
        return InferResult(outputs, reply, (time.perf_counter() - started) * 1000.0)

    def _timed_out(self, corr: str, module: str, node: str, timeout_s: float) -> None:
        with self._lock:
            self._pending.pop(corr, None)
            self._counters.timeouts += 1
        raise EdgeRequestTimeoutError(module=module, node=node, correlation_id=corr,
                                      timeout_s=timeout_s)

    async def infer(
        self,
        module: str,
        node: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[Tensor],
        *,
        timeout_s: float = 5.0,
        version: str | None = None,
    ) -> InferResult:
        """Run ``module`` on ``node`` over MQTT and await the reply.

        Args:
            module: module name.
            node: agent id (or fog/cloud node id) serving it.
            inputs: input arrays by name, or protocol tensors.
            timeout_s: give up after this long (the request also carries a deadline).
            version: pin a module version.

        Raises:
            EdgeRequestTimeoutError: no reply in time.
            EdgeInferenceError: the node answered with an error.
            EdgeConnectionError: the gateway is not connected.

        Example:
            >>> out = await gw.infer("counter", "cam-07", {"x": arr}, timeout_s=2)  # doctest: +SKIP
        """
        started = time.perf_counter()
        corr, future = self.request(module, node, inputs, timeout_s=timeout_s, version=version)
        try:
            reply, tensors = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            self._timed_out(corr, module, node, timeout_s)
            raise  # unreachable: _timed_out raises
        return self._result(module, node, reply, tensors, started)

    def infer_sync(
        self,
        module: str,
        node: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[Tensor],
        *,
        timeout_s: float = 5.0,
        version: str | None = None,
    ) -> InferResult:
        """Blocking twin of :meth:`infer`, for threads without an event loop."""
        started = time.perf_counter()
        corr, future = self.request(module, node, inputs, timeout_s=timeout_s, version=version)
        try:
            reply, tensors = future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            self._timed_out(corr, module, node, timeout_s)
            raise  # unreachable: _timed_out raises
        return self._result(module, node, reply, tensors, started)

    # ------------------------------------------------------------------- events

    def on_event(self, handler: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``handler(event)`` once per distinct event id; returns the unsubscribe."""
        with self._lock:
            self._event_handlers.append(handler)

        def unsubscribe() -> None:
            with self._lock:
                if handler in self._event_handlers:
                    self._event_handlers.remove(handler)

        return unsubscribe

    def publish_event(self, site: str, stream: str, data: Mapping[str, Any], *,
                      event_id: str | None = None) -> Event:
        """Publish an application event (QoS 1) on ``{p}/events/{site}/{stream}``."""
        event = Event(site=site, stream=stream, data=dict(data), id=event_id or new_id())
        self.publish(self.topics.events(site, stream),
                     event.model_dump_json(exclude_none=True).encode(), qos=1)
        return event

    # ------------------------------------------------------------- message bus

    def subscribe(self, pattern: str, handler: Handler, *,
                  timeout_s: float = 5.0) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for each message matching ``pattern``.

        Waits (up to ``timeout_s``) for the broker to acknowledge a new subscription
        when connected. Events under the prefix arrive deduplicated and malformed
        agent/event messages are dropped. Returns the unsubscribe function.
        """
        entry = (pattern, handler)
        with self._lock:
            self._handlers.append(entry)
        self._want(pattern, +1, timeout_s)

        def unsubscribe() -> None:
            with self._lock:
                if entry not in self._handlers:
                    return
                self._handlers.remove(entry)
            self._want(pattern, -1, timeout_s)

        return unsubscribe

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
            client = self._client
            if client is None or not self._connected.is_set():
                return  # (re)connecting subscribes self._filters
            # Widen first, then narrow: a message may come twice meanwhile, never not at all.
            if added:
                self._subscribe_and_wait(client, sorted(added), timeout_s)
            if removed:
                client.unsubscribe(sorted(removed))

    def _subscribe_and_wait(self, client: Any, filters: list[str], timeout_s: float) -> None:
        _, mid = client.subscribe([(f, 1) for f in filters])
        with self._lock:
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
                return
            done = threading.Event()
            self._suback_waiters[mid] = done
        if not done.wait(timeout_s):
            logger.warning("gateway %s: subscription to %s not acknowledged in %g s",
                           self.client_id, ", ".join(filters), timeout_s)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                timeout_s: float | None = None) -> None:
        """Publish ``payload`` on ``topic``.

        Args:
            topic: full topic (no wildcards).
            payload: bytes.
            qos: 0, 1 or 2.
            retain: keep as the topic's retained message.
            timeout_s: wait for the broker's acknowledgement; None = fire and forget.

        Raises:
            EdgeGatewayError: not started, or not acknowledged within ``timeout_s``.
        """
        client = self._client
        if client is None:
            raise EdgeGatewayError(f"gateway {self.client_id} is not started; cannot publish "
                                   f"to {topic}")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if timeout_s is None or qos == 0:
            return
        deadline = time.monotonic() + timeout_s
        # Not wait_for_publish(): it raises at once while disconnected even though
        # paho keeps the QoS 1 message queued and sends it after reconnecting.
        while not getattr(info, "_published", False):
            if time.monotonic() >= deadline:
                raise EdgeGatewayError(
                    f"broker {self.host}:{self.port} did not acknowledge the publish to "
                    f"{topic} within {timeout_s:g} s (still queued for after reconnect)")
            time.sleep(0.005)


def _set_nodelay(client: Any, userdata: Any, sock: Any) -> None:
    # Nagle + delayed ACKs add ~40-88 ms to every small request/response.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        logger.debug("TCP_NODELAY not set on %r", sock)


def _reason_text(code: int) -> str:
    return {
        4: "bad user name or password", 5: "not authorised",
        132: "unsupported protocol version", 134: "bad user name or password",
        135: "not authorised", 136: "server unavailable",
    }.get(code, f"reason code {code}")
