"""amqtt's broker, with its persistent sessions kept in a :class:`SessionStore`.

Stock amqtt keeps persistent sessions in memory only, so a control plane
killed and restarted comes back with none: QoS 1 frames published to a sensor
topic before the agent resubscribes reach nobody (59 in one chaos-suite kill).
:class:`PersistentSessionsBroker` overrides the broker methods where a
persistent session changes and writes each change to the store:

- ``add_subscription`` / ``_handle_unsubscription``: the session's filters;
- ``_retain_broadcast_message``: a QoS 1/2 message queued for an offline
  session (the store bounds the queue; what it drops leaves memory too);
- ``_publish_session_retained_messages``: the queue sent on reconnect; a row is
  deleted once its PUBACK came (one whose connection died first is re-sent by
  amqtt from the session's in-flight list and deleted at the next reconnect);
- ``_handle_disconnect``, ``_delete_session`` (a clean connect),
  ``_cleanup_session`` (amqtt's expiry): when the session left or ended.

``_start_listeners`` first restores the stored sessions, so they exist before
the listener accepts a connection. A clean ``shutdown`` keeps them (as
Mosquitto does). A store write that fails is logged and the broker goes on
with the session in memory.

These are amqtt internals: :func:`check_persistence_hooks` refuses an amqtt
without any of them, like :func:`~mesh.edge.broker._amqtt_sessions.check_amqtt`.
Only :mod:`mesh.edge.broker._broker` imports this module (it imports amqtt).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from importlib import metadata
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING, Session

from mesh.core._errors import StoreError
from mesh.edge.broker._amqtt_sessions import require_attributes
from mesh.edge.broker._session_store import QueuedMessage, SessionStore

__all__ = ["PersistentSessionsBroker", "ack_after_routing", "check_persistence_hooks"]

logger = logging.getLogger(__name__)

#: How long a PUBACK waits for its message to be routed before it goes anyway.
ROUTE_TIMEOUT_S = 5.0

#: The routing future of the QoS 1 message a client's message loop is delivering.
_ROUTING: ContextVar[list[asyncio.Future[None]] | None] = ContextVar("_ROUTING", default=None)

_HOOKS = (
    "_start_listeners",
    "add_subscription",
    "_handle_unsubscription",
    "_retain_broadcast_message",
    "_publish_session_retained_messages",
    "_handle_disconnect",
    "_delete_session",
    "_cleanup_session",
    "shutdown",
    "create_offline_session",
    "_get_handler",
    "_handle_message_delivery",
    "_broadcast_message",
    "_run_broadcast",
)


def check_persistence_hooks() -> None:
    """Refuse an amqtt lacking a method or attribute the persistence overrides use.

    Raises:
        BrokerStartError: naming the amqtt version and what is missing.
    """
    session = Session()
    require_attributes(
        metadata.version("amqtt"),
        [
            *((Broker, hook) for hook in _HOOKS),
            (BrokerProtocolHandler, "_handle_qos1_message_flow"),
            (BrokerProtocolHandler, "_send_packet"),
            (BrokerEvents, "RETAINED_MESSAGE"),
            (session, "retained_messages"),
            (session, "delivered_message_queue"),
            (session, "last_disconnect_time"),
            (session, "clean_session"),
            (session, "client_id"),
            (session, "transitions"),
        ],
    )


class _Queued(RetainedApplicationMessage):  # type: ignore[misc]
    """A queued message that knows its row in the store."""

    __slots__ = ("row",)

    def __init__(self, message: QueuedMessage, source: Session | None) -> None:
        super().__init__(source, message.topic, message.data, message.qos)
        self.row = message.row


class PersistentSessionsBroker(Broker):  # type: ignore[misc]
    """amqtt's broker whose persistent sessions outlive its process.

    Set :attr:`sessions_store` before ``start()``; left None, it is stock amqtt
    (sessions in memory only).
    """

    sessions_store: SessionStore | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mesh_stopping = False
        # Rows sent on a connection that died before the PUBACK, per client: amqtt
        # re-sends them when the session reconnects; deleted after that.
        self._mesh_resent: dict[str, tuple[int, ...]] = {}
        # Incoming QoS 1 messages whose PUBACK waits for their routing, by id(message),
        # and one entry (a future or None) per broadcast queued, in the queue's order.
        self._mesh_route_waits: dict[int, asyncio.Future[None]] = {}
        self._mesh_routes: deque[asyncio.Future[None] | None] = deque()

    # ------------------------------------------------------------------ start, stop

    async def _start_listeners(self) -> None:
        store = self.sessions_store
        if store is not None:
            self._restore(store)
        await super()._start_listeners()

    def _restore(self, store: SessionStore) -> None:
        stored = store.load()
        queued = 0
        for kept in stored:
            handler, session = self.create_offline_session(kept.client_id)
            session.clean_session = False
            session.last_disconnect_time = int(kept.disconnected_at)
            self._sessions[kept.client_id] = (session, handler)
            for topic_filter, qos in kept.subscriptions:
                # Checked when the client subscribed; no ACL check for an offline session.
                self._subscriptions.setdefault(topic_filter, []).append((session, qos))
            for message in kept.queued:
                session.retained_messages.put_nowait(_Queued(message, None))
            queued += len(kept.queued)
        logger.info(
            "embedded broker: restored %d persistent sessions with %d queued messages from %s",
            len(stored),
            queued,
            store.path,
        )

    async def shutdown(self) -> None:
        # amqtt's shutdown ends every session; a clean stop keeps the stored ones.
        self._mesh_stopping = True
        await super().shutdown()

    # ------------------------------------------------------------------ subscriptions

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        code = int(await super().add_subscription(subscription, session))
        if code < 0x80 and _persistent(session):
            self._write(lambda s: s.subscribe(session.client_id, subscription[0], code))
        return code

    async def _handle_unsubscription(
        self, client_session: Session, handler: Any, unsubscribe_waiter: asyncio.Future[Any]
    ) -> None:
        if _persistent(client_session):
            client_id = client_session.client_id
            topics = list(unsubscribe_waiter.result().topics)
            self._write(lambda s: s.unsubscribe(client_id, *topics))
        await super()._handle_unsubscription(client_session, handler, unsubscribe_waiter)

    # ------------------------------------------------------------------ ack after routing

    async def _handle_message_delivery(
        self, client_session: Session, handler: Any, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        waiting = self._mesh_route_waits.get(id(message)) if message is not None else None
        holder = [waiting] if waiting is not None else None
        token = _ROUTING.set(holder)
        try:
            return bool(
                await super()._handle_message_delivery(client_session, handler, wait_deliver)
            )
        finally:
            _ROUTING.reset(token)
            if holder:  # never broadcast (refused, bad topic): ack now
                _resolve(holder[0])

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        holder = _ROUTING.get()
        self._mesh_routes.append(holder.pop() if holder else None)
        # An unbounded queue: put() never waits, so the deque stays in its order.
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _run_broadcast(self, running_tasks: Any) -> None:
        try:
            await super()._run_broadcast(running_tasks)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._routed()
            raise
        self._routed()

    def _routed(self) -> None:
        if self._mesh_routes:
            waiting = self._mesh_routes.popleft()
            if waiting is not None:
                _resolve(waiting)

    # ------------------------------------------------------------------ queued messages

    async def _retain_broadcast_message(
        self, broadcast: dict[str, Any], qos: int, target_session: Session
    ) -> None:
        store = self.sessions_store
        if store is None:
            await super()._retain_broadcast_message(broadcast, qos, target_session)
            return
        client_id = target_session.client_id
        data = bytes(broadcast["data"] or b"")
        try:
            stored, dropped = store.enqueue(client_id, broadcast["topic"], data, qos)
        except StoreError:
            logger.exception("embedded broker: could not store a message for %s", client_id)
            stored, dropped = QueuedMessage(-1, broadcast["topic"], data, qos), ()
        if dropped:
            # The store drops its oldest; the in-memory queue holds the same, in order.
            _drop_oldest(target_session, len(dropped) - (stored.row in dropped))
        if stored.row in dropped:
            return
        message = _Queued(stored, broadcast["session"])
        await target_session.retained_messages.put(message)
        await self.plugins_manager.fire_event(
            BrokerEvents.RETAINED_MESSAGE, client_id=client_id, retained_message=message
        )

    async def _publish_session_retained_messages(self, session: Session) -> None:
        store = self.sessions_store
        handler = self._get_handler(session)
        if store is None or handler is None or not _persistent(session):
            await super()._publish_session_retained_messages(session)
            return
        client_id = session.client_id
        self._write(lambda s: s.connected(client_id))
        # amqtt re-sent last connection's unacknowledged messages in handler.start().
        resent = self._mesh_resent.pop(client_id, ())
        tasks: dict[asyncio.Future[Any], int] = {}
        while not session.retained_messages.empty():
            message = session.retained_messages.get_nowait()
            task = asyncio.ensure_future(
                handler.mqtt_publish(message.topic, message.data, message.qos, retain=True)
            )
            tasks[task] = getattr(message, "row", -1)
        if tasks:
            await asyncio.wait(tasks)
        acked = [row for task, row in tasks.items() if row >= 0 and _succeeded(task)]
        unacked = tuple(row for task, row in tasks.items() if row >= 0 and not _succeeded(task))
        if unacked:
            self._mesh_resent[client_id] = unacked
        done = (*resent, *acked)
        self._write(lambda s: s.delivered(client_id, done))

    # ------------------------------------------------------------------ session ends

    async def _handle_disconnect(
        self, client_session: Session, handler: Any, disconnect_waiter: asyncio.Future[Any]
    ) -> None:
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        if _persistent(client_session):
            self._write(lambda s: s.disconnected(client_session.client_id))

    async def _delete_session(self, client_id: str) -> None:
        await super()._delete_session(client_id)
        self._mesh_resent.pop(client_id, None)
        self._write(lambda s: s.forget(client_id))

    async def _cleanup_session(self, client_id: str) -> None:
        session = self._sessions.get(client_id, (None, None))[0]
        await super()._cleanup_session(client_id)
        # amqtt's expiry of a persistent session, not our shutdown.
        if session is not None and _persistent(session) and not self._mesh_stopping:
            self._mesh_resent.pop(client_id, None)
            self._write(lambda s: s.forget(client_id))

    def _write(self, change: Callable[[SessionStore], None]) -> None:
        store = self.sessions_store
        if store is None:
            return
        try:
            change(store)
        except StoreError:
            logger.exception("embedded broker: a persistent session change was not stored")


def _resolve(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


def ack_after_routing() -> None:
    """Make a persisting broker acknowledge a QoS 1 PUBLISH only once it is routed.

    amqtt sends the PUBACK as soon as the message is on the client's queue,
    before the broadcast loop has queued (and here stored) it for offline
    sessions: a broker killed in between loses a message its publisher saw
    acknowledged. Wrapped here, for brokers with a session store only: the
    PUBACK waits until the broadcast loop has handled the message (at most
    :data:`ROUTE_TIMEOUT_S`, then it goes anyway with a warning). Each PUBLISH
    is its own task in amqtt, so one wait never holds up the next. Idempotent.
    """
    flow = BrokerProtocolHandler._handle_qos1_message_flow
    if getattr(flow, "_mesh_acks_after_routing", False):
        return

    async def qos1_flow(self: BrokerProtocolHandler, app_message: Any) -> None:
        broker = getattr(self.plugins_manager.context, "_broker_instance", None)
        if (
            app_message.direction != INCOMING
            or app_message.qos != QOS_1
            or app_message.puback_packet is not None
            or app_message.packet_id is None
            or self.session is None
            or not isinstance(broker, PersistentSessionsBroker)
            or broker.sessions_store is None
        ):
            await flow(self, app_message)
            return
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        broker._mesh_route_waits[id(app_message)] = waiting
        try:
            await self.session.delivered_message_queue.put(app_message)
            try:
                await asyncio.wait_for(asyncio.shield(waiting), ROUTE_TIMEOUT_S)
            except TimeoutError:
                logger.warning(
                    "embedded broker: a QoS 1 message on %s was not routed within %g s; "
                    "acknowledged anyway",
                    app_message.topic,
                    ROUTE_TIMEOUT_S,
                )
        finally:
            broker._mesh_route_waits.pop(id(app_message), None)
        puback = PubackPacket.build(app_message.packet_id)
        await self._send_packet(puback)
        app_message.puback_packet = puback

    qos1_flow._mesh_acks_after_routing = True  # type: ignore[attr-defined]
    qos1_flow._mesh_keeps_unacked = getattr(flow, "_mesh_keeps_unacked", False)  # type: ignore[attr-defined]
    BrokerProtocolHandler._handle_qos1_message_flow = qos1_flow


def _persistent(session: Session) -> bool:
    return session.clean_session is False and bool(session.client_id)


def _succeeded(task: asyncio.Future[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def _drop_oldest(session: Session, n: int) -> None:
    """Remove the ``n`` oldest messages of the session's in-memory queue."""
    queue = session.retained_messages
    for _ in range(n):
        if queue.empty():
            return
        queue.get_nowait()
