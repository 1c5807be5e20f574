"""paho's client, tuned for the agent's hot path (a request's trip through the agent).

:class:`FastClient` is paho's ``Client`` with three changes, each measured by
``bench/edge.py``: it runs its own network loop (:meth:`FastClient.start_loop`)
so a reply is written from the thread that made it; it decodes the plain
PUBLISH and PUBACK packets of a request without building MQTT 5
``Properties``; and acknowledgements made inside ``on_message`` are sent on
the way out of it. :class:`Ack` sends one message's PUBACK once.
:class:`~edge_agent._transport.MqttTransport` is its only user.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ._supervisor import Supervisor

__all__ = ["Ack", "FastClient"]

logger = logging.getLogger(__name__)


class FastClient(mqtt.Client):
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
        #: Runs the network loop (restarted if it ever raises); its own when None.
        self.supervisor: Supervisor | None = None
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
        supervisor = self.supervisor or Supervisor()
        # Never seen to raise; if it did, the agent would be cut off for good: restarted.
        self._loop_thread = supervisor.thread(f"mqtt-{self._client_id.decode()}", self._run_loop)
        self._loop_thread.start()

    def _run_loop(self) -> None:
        self.loop_forever(retry_first_connection=True)

    def _thread_main(self) -> None:
        """The thread of paho's ``loop_start()`` (TLS), restarted as :meth:`start_loop`'s."""
        supervisor = self.supervisor or Supervisor()
        try:
            supervisor.run(f"mqtt-{self._client_id.decode()}", self._run_loop)
        finally:
            self._thread = None

    def stop_loop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop started by :meth:`start_loop` (after :meth:`disconnect`)."""
        self._thread_terminate = True
        thread = self._loop_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)


class Ack:
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
