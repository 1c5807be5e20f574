"""The edge bus: the control plane's one MQTT client (the only cloud module using paho).

It feeds an agent registry (:class:`~mesh.edge._registry.AgentRegistry`: online/offline
from the retained ``status`` topic and the agents' last wills, last heartbeat, a
bounded ring of heartbeat metrics, the retained ``observed`` states), publishes
desired states (retained, QoS 1; again after a reconnect to agents not on them:
:mod:`mesh.edge._desired_resend`), sends inference requests and awaits their replies
(correlation ids, timeouts; sent again when their agent comes online after they
were sent: :meth:`~mesh.edge._requests.PendingRequests.again`), receives application
events (deduplicated by id; acknowledged end to end: :mod:`mesh.edge._event_acks`),
and is a :class:`~mesh.compute._streams.MessageBus` for stream functions.

Threads: paho's network thread only parses inference replies and hands every
other message to one dispatcher thread, so neither a slow handler nor the
registry ever blocks the network thread. Handlers run on the dispatcher thread,
in arrival order; an exception in one is logged and the gateway goes on.

Parts: this module is the public API; the paho client and its connection are
:class:`~mesh.edge._link.BrokerLink`; what needs no MQTT lives apart, tested without
a broker: the registry and event dedupe (:mod:`mesh.edge._registry`), the dispatcher
(:mod:`mesh.edge._dispatch`), subscriptions (:mod:`mesh.edge._subscriptions`),
requests in flight (:mod:`mesh.edge._requests`), topic filters
(:mod:`mesh.core._topics`), and the errors and records (:mod:`mesh.edge._records`).

Connection (:mod:`mesh.edge._link`, set up by :mod:`edge_agent._mqtt` as the
agent's and replicas' are): MQTT 5 when the broker speaks it
(ResponseTopic/CorrelationData, and a session with an expiry, so subscriptions
and QoS 1 messages survive a broker restart), else 3.1.1 (e.g. the embedded
amqtt broker); ``TCP_NODELAY`` on the socket; automatic reconnects; a refusal
says what its reason code means. Broker subscriptions are kept free of overlaps
(overlapping patterns are merged into a wider filter and matched locally), since a
broker sends one copy per matching subscription (:mod:`mesh.core._topics`).

Example:
    >>> gw = EdgeBus("mqtt://127.0.0.1:1883").start()          # doctest: +SKIP
    >>> gw.wait_for_agent("cam-07", state="online", timeout_s=5)    # doctest: +SKIP
    >>> result = await gw.infer("counter", "cam-07", {"x": frame})  # doctest: +SKIP
    >>> gw.stop()                                                    # doctest: +SKIP

Errors (:class:`~mesh.core._errors.MeshError`, in :mod:`mesh.edge._records`): EdgeBusError
(not done), and its EdgeConnectionError (the broker refused or was unreachable),
EdgeRequestTimeoutError (no reply within timeout_s; also a TimeoutError) and
EdgeInferenceError (the node answered with an error: code, message).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from edge_agent._mqtt import broker_tls
from edge_agent.protocol import (
    DEFAULT_PREFIX,
    DesiredState,
    Event,
    ObservedState,
    Tensor,
    Topics,
    new_id,
)
from mesh.core._topics import cover_filters, topic_covers
from mesh.edge._desired_resend import DesiredResend
from mesh.edge._dispatch import Dispatcher
from mesh.edge._event_acks import EventAckBatcher, qos0_sender
from mesh.edge._flood import FloodGuard, FloodLimits
from mesh.edge._link import BrokerLink
from mesh.edge._records import (
    AgentView,
    EdgeBusError,
    EdgeBusStats,
    EdgeConnectionError,
    EdgeInferenceError,
    EdgeRequestTimeoutError,
    HealthSink,
    HeartbeatSample,
    InferResult,
)
from mesh.edge._registry import AGENT_LEAVES, AgentRegistry
from mesh.edge._requests import PendingRequests, ReplyFuture, infer_result
from mesh.edge._subscriptions import Handler, Subscriptions

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "AgentView",
    "EdgeBus",
    "EdgeBusError",
    "EdgeBusStats",
    "EdgeConnectionError",
    "EdgeInferenceError",
    "EdgeRequestTimeoutError",
    "HealthSink",
    "HeartbeatSample",
    "InferResult",
    "cover_filters",
    "topic_covers",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ gateway


class EdgeBus:
    """The control plane's MQTT client: registry, desired states, inference, events, bus.

    Args:
        broker_url: ``mqtt://[user:pass@]host[:port]``, or ``mqtts://`` for TLS.
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
        ca_file: CA the ``mqtts://`` broker's certificate must chain to (None: system CAs).
        cert_file: client certificate for mutual TLS (with ``key_file``).
        key_file: the client certificate's key.
        flood: per-agent rates of heartbeats and events (:mod:`mesh.edge._flood`);
            an agent over them is limited, and flagged in :meth:`agents`.
        acknowledge_events: acknowledge handled events to their agents (the control
            plane's bus only: an agent deletes an event another bus acknowledged).

    Example:
        >>> with EdgeBus(broker.url) as gw:               # doctest: +SKIP
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
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        flood: FloodLimits | None = None,
        acknowledge_events: bool = False,
    ) -> None:
        """Configure the gateway; :meth:`start` connects."""
        parts = urlsplit(broker_url)
        try:
            tls = broker_tls(broker_url, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        except ValueError as exc:
            raise EdgeBusError(str(exc)) from exc
        if not parts.hostname:
            raise EdgeBusError(f"broker {broker_url!r}: expected mqtt://host[:port] or mqtts://")
        self.broker_url = broker_url
        self.host = parts.hostname
        self.port = parts.port or (8883 if tls else 1883)
        self.topics = Topics(prefix)
        self.prefix = prefix
        self.client_id = client_id or f"mesh-gw-{uuid.uuid4().hex[:12]}"
        self.reply_topic = self.topics.reply(Topics.check_segment(self.client_id))

        # The paho-free parts, each with its own lock (never held over a paho call).
        self._registry = AgentRegistry(
            metrics_ring=metrics_ring,
            dedupe_window=dedupe_window,
            health_sink=health_sink,
            name=self.client_id,
        )
        self._pending = PendingRequests(name=self.client_id, reply_topic=self.reply_topic)
        internal = [self.topics.all_agents(leaf) for leaf in AGENT_LEAVES]
        internal += [f"{prefix}/events/#", self.reply_topic]
        self._subscriptions = Subscriptions(
            internal, client=lambda: self._link.live_client(), name=self.client_id
        )
        #: Per-agent flood limits, and the agents that went over them.
        self.flood = FloodGuard(flood, name=self.client_id)
        #: End-to-end acknowledgements of the events this control plane handled.
        send = qos0_sender(lambda: self._link.live_client())
        acks = EventAckBatcher(self.topics, send, self._registry.site_of)
        self.event_acks = acks if acknowledge_events else None
        #: Desired states published again after a reconnect, for agents not on them yet.
        self.desired_resend = DesiredResend(
            self._registry.observed_version,
            lambda agent, payload: self.publish(self.topics.desired(agent), payload, retain=True),
        )
        self._dispatcher = Dispatcher(
            prefix=prefix,
            registry=self._registry,
            subscriptions=self._subscriptions,
            name=self.client_id,
            flood=self.flood,
            acks=self.event_acks,
        )
        self._link = BrokerLink(
            self.host,
            self.port,
            client_id=self.client_id,
            username=username or (unquote(parts.username) if parts.username else None),
            password=password
            if password is not None
            else (unquote(parts.password) if parts.password else None),
            protocol=protocol,
            keepalive_s=keepalive_s,
            session_expiry_s=session_expiry_s,
            filters=self._subscriptions.filters,
            on_message=self._on_message,
            on_suback=self._subscriptions.acknowledged,
            on_ready=self._on_ready,
            tls=tls,
        )
        # An agent's online status is published after it subscribed: requests sent
        # before it came (back) online may have found no subscriber, so they go again.
        self._subscriptions.add(self.topics.all_agents("status"), self._on_agent_status)

    def __repr__(self) -> str:
        return (
            f"EdgeBus(broker={self.host}:{self.port}, client_id={self.client_id!r}, "
            f"protocol={self.protocol!r}, ready={self._link.ready})"
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 10.0) -> EdgeBus:
        """Connect, subscribe and wait for the subscriptions to be acknowledged.

        Raises:
            EdgeConnectionError: the broker was unreachable, refused the
                credentials, or did not acknowledge within ``timeout_s``.
        """
        if self._link.client is not None:
            return self
        self._dispatcher.start()
        try:
            self._link.start(timeout_s)
        except BaseException:
            self.stop()
            raise
        logger.info("edge bus connected: %r", self)  # broker, client id, MQTT version
        return self

    def stop(self) -> None:
        """Disconnect, fail pending requests and stop the dispatcher; idempotent."""
        self._link.stop()
        self._pending.fail_all()
        self._dispatcher.stop()
        logger.info("edge bus %s stopped", self.client_id)

    def __enter__(self) -> EdgeBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the gateway is connected with its subscriptions in place."""
        return self._link.ready

    @property
    def protocol(self) -> str | None:
        """The MQTT version in use (``"5"`` or ``"3.1.1"``), None before :meth:`start`."""
        return self._link.protocol

    # On paho's network thread: replies are parsed there, the rest is handed over.
    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic: str = message.topic
        if topic == self.reply_topic:
            self._pending.handle_reply(bytes(message.payload), message.properties)
        else:
            self._dispatcher.put(topic, bytes(message.payload))

    # ------------------------------------------------------------------ registry

    def agents(self) -> list[AgentView]:
        """Every agent the gateway has heard of, by id (``flood`` set on those limited)."""
        views = self._registry.agents()
        limited = {r.agent_id: r for r in self.flood.reports()}
        if not limited:
            return views
        return [
            replace(v, flood=limited[v.agent_id]) if v.agent_id in limited else v for v in views
        ]

    def agent(self, agent_id: str) -> AgentView | None:
        """One agent's snapshot, or None if never heard of."""
        view = self._registry.agent(agent_id)
        report = self.flood.report(agent_id) if view is not None else None
        return replace(view, flood=report) if view is not None and report else view

    def metrics(self, agent_id: str) -> list[HeartbeatSample]:
        """An agent's heartbeat ring, oldest first."""
        return self._registry.metrics(agent_id)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds or ``timeout_s`` passes; returns whether it held.

        Re-checked on every registry change or event, and every 50 ms; ``predicate``
        runs without the gateway's lock (it may call the registry).
        """
        return self._registry.wait_until(predicate, timeout_s)

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

    def wait_for_agent(
        self, agent_id: str, *, state: str = "online", timeout_s: float = 10.0
    ) -> AgentView:
        """Wait until an agent's status is ``state``; returns its snapshot.

        Raises:
            EdgeRequestTimeoutError: not in that state within ``timeout_s``.
        """
        return self._registry.wait_for_agent(agent_id, state=state, timeout_s=timeout_s)

    def wait_for_observed(
        self, agent_id: str, version: int, *, timeout_s: float = 30.0
    ) -> ObservedState:
        """Wait until an agent reports an observed ``version`` at least this one.

        Raises:
            EdgeRequestTimeoutError: not reported within ``timeout_s``.
        """
        return self._registry.wait_for_observed(agent_id, version, timeout_s=timeout_s)

    def stats(self) -> EdgeBusStats:
        """Counters since start."""
        return self._dispatcher.counters().stats(
            self._registry.counters(), self._pending.counters()
        )

    # ------------------------------------------------------------------- desired

    def publish_desired(
        self, agent_id: str, desired: DesiredState, *, timeout_s: float | None = 5.0
    ) -> None:
        """Publish an agent's desired state (retained, QoS 1).

        Args:
            agent_id: the agent.
            desired: the state; its ``agent`` field is filled in when empty.
            timeout_s: wait this long for the broker's PUBACK; None = do not wait.

        Raises:
            EdgeBusError: not acknowledged in time (paho keeps it queued and
                sends it after reconnecting).
        """
        Topics.check_segment(agent_id)
        if desired.agent is None:
            desired = desired.model_copy(update={"agent": agent_id})
        elif desired.agent != agent_id:
            raise EdgeBusError(f"desired state for {desired.agent!r} published to {agent_id!r}")
        payload = desired.model_dump_json(exclude_none=True).encode()
        self.publish(
            self.topics.desired(agent_id), payload, qos=1, retain=True, timeout_s=timeout_s
        )
        self._registry.set_desired_version(agent_id, desired.version)
        self.desired_resend.record(agent_id, desired.version, payload)
        logger.info(
            "published desired version %d to agent %s (%d modules)",
            desired.version,
            agent_id,
            len(desired.modules),
        )

    def clear_desired(self, agent_id: str) -> None:
        """Remove an agent's retained desired state."""
        self.desired_resend.forget(agent_id)
        self.publish(self.topics.desired(agent_id), b"", qos=1, retain=True)

    def _on_ready(self) -> None:  # paho's network thread: connected and subscribed
        self._registry.notify()
        self.desired_resend.connection_ready()

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
    ) -> tuple[str, ReplyFuture]:
        """Send an inference request; returns its correlation id and a future of the reply.

        Most callers want :meth:`infer` (async) or :meth:`infer_sync`.

        Raises:
            EdgeConnectionError: not connected (the request is not sent).
        """
        client = self._link.client
        if not self._link.ready or client is None:
            raise EdgeConnectionError(
                f"gateway {self.client_id} is not connected to {self.host}:{self.port}; "
                f"{module} on {node} not requested"
            )
        corr, frame, future = self._pending.open(
            module, node, inputs, timeout_s=timeout_s, version=version
        )
        self._publish_request(client, module, node, corr, frame, timeout_s, qos)
        return corr, future

    def _publish_request(
        self, client: Any, module: str, node: str, corr: str, frame: bytes, left_s: float, qos: int
    ) -> None:
        properties = None
        if self.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = corr.encode()
            properties.MessageExpiryInterval = max(1, math.ceil(min(left_s, 2**31)))
        client.publish(self.topics.infer(module, node), frame, qos=qos, properties=properties)

    # On the dispatcher thread, after the registry took the status in.
    def _on_agent_status(self, topic: str, payload: bytes) -> None:
        agent_id = topic.split("/")[-2]
        view = self._registry.agent(agent_id)
        client = self._link.live_client()
        if view is None or view.state != "online" or client is None:
            return
        again = self._pending.again(agent_id)
        for r in again:
            self._publish_request(
                client, r.module, agent_id, r.correlation_id, r.frame, r.left_s, 1
            )
        if again:
            logger.info(
                "edge bus %s: %d request(s) to %s sent again: it came online after they were sent",
                self.client_id,
                len(again),
                agent_id,
            )

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
            EdgeConnectionError: the gateway was not connected again within ``timeout_s``.

        Example:
            >>> out = await gw.infer("counter", "cam-07", {"x": arr}, timeout_s=2)  # doctest: +SKIP
        """
        started = time.perf_counter()
        # The broker restarting (or the link reconnecting): hold the request until the
        # bus is back, within its timeout, rather than refuse it at once. A request
        # the broker dropped meanwhile (the agent had not subscribed again yet) is
        # sent again when the agent's online status arrives (_on_agent_status).
        if not self._link.ready:
            deadline = time.monotonic() + timeout_s
            while not self._link.ready and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            timeout_s = max(0.05, deadline - time.monotonic())
        corr, future = self.request(module, node, inputs, timeout_s=timeout_s, version=version)
        try:
            reply, tensors = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            self._pending.timed_out(corr, module, node, timeout_s)
        return infer_result(module, node, reply, tensors, started)

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
            self._pending.timed_out(corr, module, node, timeout_s)
        return infer_result(module, node, reply, tensors, started)

    # ------------------------------------------------------------------- events

    def on_event(self, handler: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``handler(event)`` once per distinct event id; returns the unsubscribe."""
        return self._dispatcher.on_event(handler)

    def publish_event(
        self, site: str, stream: str, data: Mapping[str, Any], *, event_id: str | None = None
    ) -> Event:
        """Publish an application event (QoS 1) on ``{p}/events/{site}/{stream}``."""
        event = Event(site=site, stream=stream, data=dict(data), id=event_id or new_id())
        self.publish(
            self.topics.events(site, stream),
            event.model_dump_json(exclude_none=True).encode(),
            qos=1,
        )
        return event

    # ------------------------------------------------------------- message bus

    def subscribe(
        self, pattern: str, handler: Handler, *, timeout_s: float = 5.0
    ) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for each message matching ``pattern``.

        Waits (up to ``timeout_s``) for the broker to acknowledge a new subscription
        when connected. Events under the prefix arrive deduplicated and malformed
        agent/event messages are dropped. Returns the unsubscribe function.
        """
        return self._subscriptions.add(pattern, handler, timeout_s=timeout_s)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish ``payload`` on ``topic``.

        Args:
            topic: full topic (no wildcards).
            payload: bytes.
            qos: 0, 1 or 2.
            retain: keep as the topic's retained message.
            timeout_s: wait for the broker's acknowledgement; None = fire and forget.

        Raises:
            EdgeBusError: not started, or not acknowledged within ``timeout_s``.
        """
        client = self._link.client
        if client is None:
            raise EdgeBusError(
                f"gateway {self.client_id} is not started; cannot publish to {topic}"
            )
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if timeout_s is None or qos == 0:
            return
        deadline = time.monotonic() + timeout_s
        # Not wait_for_publish(): it raises at once while disconnected even though
        # paho keeps the QoS 1 message queued and sends it after reconnecting.
        while not getattr(info, "_published", False):
            if time.monotonic() >= deadline:
                raise EdgeBusError(
                    f"broker {self.host}:{self.port} did not acknowledge the publish to "
                    f"{topic} within {timeout_s:g} s (still queued for after reconnect)"
                )
            time.sleep(0.005)
