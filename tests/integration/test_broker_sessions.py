"""Persistent sessions on both brokers: what a device that vanished gets when it comes back.

MQTT 3.1.1 ([MQTT-4.4.0-1], 3.1.2.4): a client that reconnects with
``clean_session`` false gets again every QoS 1 message it never acknowledged,
flagged DUP, and then what was published while it was away. Mosquitto does;
the embedded amqtt broker does since :mod:`mesh.edge.broker._amqtt_sessions` (stock amqtt
forgets a message whose connection died before its PUBACK: the camera frame
that goes out just as an agent is killed).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from mesh.edge.broker._broker import BrokerHandle
from tests.support.brokers import MqttProbe, broker, unique  # noqa: F401

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


class _Device:
    """A paho client with a persistent session that acknowledges only if told to."""

    def __init__(self, handle: BrokerHandle, client_id: str, *, ack: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: list[tuple[bytes, bool]] = []
        self._cond = threading.Condition()
        self._subacked = False
        self.client: Any = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            manual_ack=not ack,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(handle.host, handle.port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.got.append((bytes(msg.payload), bool(msg.dup)))
            self._cond.notify_all()

    def _on_subscribe(self, *_a: Any) -> None:
        with self._cond:
            self._subacked = True
            self._cond.notify_all()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.wait_for(lambda: self._subacked), f"no SUBACK for {topic}"

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout_s))

    def kill(self) -> None:
        """Vanish: the TCP connection drops, with no DISCONNECT and no PUBACK."""
        self.client.loop_stop()
        sock = self.client.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_unacknowledged_message_is_sent_again_when_the_session_returns(
    broker: BrokerHandle,  # noqa: F811
) -> None:
    topic, device_id = unique("frames"), unique("device")
    first = _Device(broker, device_id, ack=False)
    first.subscribe(topic)
    publisher = MqttProbe(broker)
    try:
        publisher.publish(topic, b"in flight")
        assert first.wait_for(lambda: first.got), "the device never got the message"
        first.kill()  # it had the message, but never acknowledged it
        publisher.publish(topic, b"while away")
        second = _Device(broker, device_id, ack=True)  # same id: the session resumes
        try:
            assert second.wait_for(lambda: len(second.got) >= 2), (
                f"after the reconnect the device got only {second.got}"
            )
            assert [payload for payload, _ in second.got] == [b"in flight", b"while away"]
            assert second.got[0][1], "a message sent again is flagged DUP"
        finally:
            second.close()
    finally:
        publisher.close()
