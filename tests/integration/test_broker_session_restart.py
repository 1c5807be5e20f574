"""The embedded broker's persistent sessions outlive its process (``sessions.db``).

The control plane runs the embedded broker in its own process; killed and
restarted, the broker must still know every offline client's persistent
session (``clean_session`` false): its subscriptions, and the QoS 1 messages
queued for it, including those published after the restart and before the
client is back. Stock amqtt forgot them all (59 camera frames lost in one
chaos-suite control-plane kill); Mosquitto with ``persistence true`` keeps them.

The broker runs in a child process started as the control plane starts it
(:func:`~mesh.edge.broker._broker.start_embedded_broker` with a ``sessions_db``)
so that ``kill -9`` is a real crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.edge.broker._broker import free_port
from tests.support.brokers import MqttProbe, unique

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]

_BROKER_MAIN = """
import sys, threading, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from mesh.edge.broker._broker import start_embedded_broker
from mesh.edge.broker._session_store import SessionLimits
start_embedded_broker(
    port=int(sys.argv[1]),
    anonymous=True,
    sessions_db=Path(sys.argv[2]),
    session_limits=SessionLimits(max_messages=int(sys.argv[3])),
)
print("ready", flush=True)
threading.Event().wait()
"""


class _BrokerProcess:
    """The embedded broker in a child process on a fixed port and data file."""

    def __init__(self, port: int, sessions_db: Path, *, max_messages: int = 1000) -> None:
        self.host, self.port, self.sessions_db = "127.0.0.1", port, sessions_db
        self.max_messages = max_messages
        self.url = f"mqtt://{self.host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _BrokerProcess:
        pytest.importorskip("amqtt", reason="amqtt is not installed (pip install 'fogmesh[cloud]')")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BROKER_MAIN,
                str(self.port),
                str(self.sessions_db),
                str(self.max_messages),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert b"ready" in line, f"the embedded broker did not start on {self.url}"
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def broker_dir(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    yield free_port(), tmp_path / "mqtt" / "sessions.db"


class _Device:
    """A paho client with a persistent session (``clean_session`` false, QoS 1)."""

    def __init__(self, broker: _BrokerProcess, client_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: list[tuple[bytes, bool]] = []
        self.session_present: list[bool] = []
        self._cond = threading.Condition()
        self._subacked = False
        self.client: Any = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self.wait_for(lambda: bool(self.session_present)), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, flags: Any, *_a: Any) -> None:
        with self._cond:
            self.session_present.append(bool(flags.session_present))
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.got.append((bytes(msg.payload), bool(msg.dup)))
            self._cond.notify_all()

    def _on_subscribe(self, *_a: Any) -> None:
        with self._cond:
            self._subacked = True
            self._cond.notify_all()

    def subscribe(self, topic: str) -> None:
        self._subacked = False
        self.client.subscribe(topic, qos=1)
        assert self.wait_for(lambda: self._subacked), f"no SUBACK for {topic}"

    def wait_for(self, predicate: Any, timeout_s: float = 15.0) -> bool:
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout_s))

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [payload for payload, _ in self.got]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: _BrokerProcess, topic: str, payloads: list[bytes]) -> None:
    publisher = MqttProbe(broker)  # type: ignore[arg-type]  # host/port/url is all it reads
    try:
        assert publisher.connack() == 0
        for payload in payloads:
            publisher.publish(topic, payload)  # waits for each PUBACK
    finally:
        publisher.close()


def _assert_each_once(got: list[tuple[bytes, bool]], expected: list[bytes]) -> None:
    """Every expected payload arrived; a repeat only as a QoS 1 re-send (flagged DUP)."""
    firsts = [payload for payload, dup in got if not dup]
    assert sorted(set(p for p, _ in got)) == sorted(expected), f"got {got}"
    assert len(firsts) == len(set(firsts)), f"a message came twice without DUP: {got}"


def test_an_offline_session_gets_what_was_published_around_a_broker_kill(
    broker_dir: tuple[int, Path],
) -> None:
    port, sessions_db = broker_dir
    topic, device_id = unique("frames"), unique("device")
    broker = _BrokerProcess(port, sessions_db).start()
    try:
        device = _Device(broker, device_id)
        device.subscribe(topic)
        device.close()  # away: its session keeps the subscription
        before = [f"before-{i}".encode() for i in range(5)]
        _publish(broker, topic, before)  # queued for the offline session
        broker.kill9()
        broker.start()  # same port, same sessions.db
        after = [f"after-{i}".encode() for i in range(20)]
        _publish(broker, topic, after)  # nobody connected subscribes: only the stored session
        back = _Device(broker, device_id)
        try:
            assert back.session_present == [True], "the restarted broker forgot the session"
            expected = before + after
            assert back.wait_for(lambda: set(back.payloads()) >= set(expected)), (
                f"after the restart the device got {len(set(back.payloads()))} of "
                f"{len(expected)}: {back.payloads()}"
            )
            _assert_each_once(back.got, expected)
            assert [p for p in back.payloads() if p in expected][: len(expected)] == expected, (
                "queued messages arrive in publish order"
            )
        finally:
            back.close()
    finally:
        broker.kill9()


def test_a_delivered_message_is_not_sent_again_after_the_next_kill(
    broker_dir: tuple[int, Path],
) -> None:
    port, sessions_db = broker_dir
    topic, device_id = unique("frames"), unique("device")
    broker = _BrokerProcess(port, sessions_db).start()
    try:
        device = _Device(broker, device_id)
        device.subscribe(topic)
        device.close()
        _publish(broker, topic, [b"one"])
        device = _Device(broker, device_id)
        assert device.wait_for(lambda: device.payloads() == [b"one"])
        # A SUBACK on the same connection: the broker has read the PUBACK before it
        # (amqtt serves SUBSCRIBE only after the queued messages are delivered).
        device.subscribe(unique("sync"))
        device.close()  # acknowledged: the store dropped it
        broker.kill9()
        broker.start()
        _publish(broker, topic, [b"two"])
        back = _Device(broker, device_id)
        try:
            assert back.wait_for(lambda: b"two" in back.payloads())
            assert back.payloads() == [b"two"], f"an acknowledged message came back: {back.got}"
        finally:
            back.close()
    finally:
        broker.kill9()


def test_a_clean_session_is_not_kept(broker_dir: tuple[int, Path]) -> None:
    port, sessions_db = broker_dir
    topic, device_id = unique("frames"), unique("device")
    broker = _BrokerProcess(port, sessions_db).start()
    try:
        device = _Device(broker, device_id)
        device.subscribe(topic)
        device.close()
        clean = MqttProbe(broker, client_id=device_id)  # type: ignore[arg-type]
        assert clean.connack() == 0  # clean_session true: the stored session ends
        clean.close()
        broker.kill9()
        broker.start()
        _publish(broker, topic, [b"for nobody"])
        back = _Device(broker, device_id)
        try:
            assert back.session_present == [False], "a clean connect must end the stored session"
        finally:
            back.close()
    finally:
        broker.kill9()


def test_a_full_queue_keeps_the_newest_in_memory_and_on_disk(
    broker_dir: tuple[int, Path],
) -> None:
    port, sessions_db = broker_dir
    topic, device_id = unique("frames"), unique("device")
    broker = _BrokerProcess(port, sessions_db, max_messages=3).start()
    try:
        device = _Device(broker, device_id)
        device.subscribe(topic)
        device.close()
        _publish(broker, topic, [b"m0", b"m1", b"m2", b"m3"])  # m0 dropped
        broker.kill9()
        broker.start()
        _publish(broker, topic, [b"m4"])  # m1 dropped
        back = _Device(broker, device_id)
        try:
            assert back.wait_for(lambda: b"m4" in back.payloads())
            back.subscribe(unique("sync"))  # every queued message was sent before this
            assert back.payloads() == [b"m2", b"m3", b"m4"]
        finally:
            back.close()
    finally:
        broker.kill9()


def test_a_clean_stop_keeps_the_sessions_too(tmp_path: Path) -> None:
    from mesh.edge.broker._broker import start_embedded_broker

    sessions_db = tmp_path / "sessions.db"
    topic, device_id = unique("frames"), unique("device")
    broker = start_embedded_broker(anonymous=True, sessions_db=sessions_db)
    try:
        device = _Device(broker, device_id)  # type: ignore[arg-type]
        device.subscribe(topic)
        device.close()
        _publish(broker, topic, [b"before"])  # type: ignore[arg-type]
    finally:
        broker.stop()
    broker = start_embedded_broker(port=broker.port, anonymous=True, sessions_db=sessions_db)
    try:
        _publish(broker, topic, [b"after"])  # type: ignore[arg-type]
        back = _Device(broker, device_id)  # type: ignore[arg-type]
        try:
            assert back.wait_for(lambda: len(back.payloads()) >= 2), back.got
            assert back.payloads() == [b"before", b"after"]
        finally:
            back.close()
    finally:
        broker.stop()
