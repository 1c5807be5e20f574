"""Broker fixtures and helpers shared by MQTT tests (mosquitto and the embedded amqtt).

Use from a test module::

    from tests.support.brokers import broker, mosquitto, embedded_broker  # noqa: F401

``broker`` is parametrised over both kinds. Without a ``mosquitto`` binary the
mosquitto cases skip with the reason, unless ``MESH_REQUIRE_SERVICES=1``, in
which case they fail. Every broker is stopped when its fixture ends.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.edge.broker._broker import (
    BrokerHandle,
    EmbeddedBroker,
    MosquittoBroker,
    find_mosquitto,
    start_embedded_broker,
    start_mosquitto,
)

__all__ = [
    "BROKER_KINDS",
    "KillableMosquitto",
    "MqttProbe",
    "broker",
    "embedded_broker",
    "mosquitto",
    "require_mosquitto",
    "unique",
]

BROKER_KINDS = ("mosquitto", "amqtt")


def require_mosquitto() -> str:
    """Return the mosquitto binary, or skip (fail under MESH_REQUIRE_SERVICES=1)."""
    exe = find_mosquitto()
    if exe is None:
        reason = "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
        if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    return exe


def require_mosquitto_clients() -> None:
    """Skip (or fail under MESH_REQUIRE_SERVICES=1) without mosquitto_sub/_pub."""
    import shutil

    if shutil.which("mosquitto_sub") is None or shutil.which("mosquitto_pub") is None:
        reason = "mosquitto-clients is not installed (apt-get install mosquitto-clients)"
        if os.environ.get("MESH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MESH_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)


def unique(prefix: str = "t") -> str:
    """A unique, topic-safe name for one test."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh anonymous Mosquitto on a free port (with persistence)."""
    require_mosquitto()
    handle = start_mosquitto(workdir=tmp_path / "mosquitto")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A fresh embedded amqtt broker on a free port (anonymous: tests of its MQTT, not its logins)."""
    handle = start_embedded_broker(anonymous=True)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerHandle]:
    """Each test runs against a real Mosquitto and against the embedded amqtt broker."""
    handle: BrokerHandle
    if request.param == "mosquitto":
        require_mosquitto()
        handle = start_mosquitto(workdir=tmp_path / "mosquitto")
    else:
        handle = start_embedded_broker(anonymous=True)
    try:
        yield handle
    finally:
        handle.stop()


class MqttProbe:
    """A plain paho client for tests: a fake agent or an observer.

    Messages land in ``messages`` (topic, payload, retain); ``wait_for`` blocks on
    a condition over them.
    """

    def __init__(
        self,
        handle: BrokerHandle,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        keepalive: int = 60,
        protocol: str = "3.1.1",
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client_id = client_id or unique("probe")
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._connack: list[int] = []
        self._subacks: dict[int, list[int]] = {}
        self._pubacks: set[int] = set()
        proto = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.client: Any = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.disconnects: list[int] = []
        self.client.connect(handle.host, handle.port, keepalive=keepalive)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connack.append(int(rc.value))
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.disconnects.append(int(rc.value))
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._subacks[mid] = [int(c.value) for c in codes]
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self._pubacks.add(mid)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        """Wait until ``predicate()`` (evaluated under the probe's lock) holds."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def connack(self, timeout_s: float = 10.0) -> int:
        """The CONNACK reason code (0 = accepted)."""
        assert self.wait_for(lambda: bool(self._connack), timeout_s), "no CONNACK"
        return self._connack[0]

    def subscribe(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """Subscribe (QoS 1) and return the SUBACK codes."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert self.wait_for(lambda: mid in self._subacks, timeout_s), f"no SUBACK for {topic}"
        return self._subacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        timeout_s: float = 10.0,
    ) -> None:
        """Publish and wait for the PUBACK (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            assert self.wait_for(lambda: info.mid in self._pubacks, timeout_s), (
                f"no PUBACK for {topic}"
            )

    def payloads(self, topic: str) -> list[bytes]:
        """Payloads received on ``topic`` so far."""
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker fires the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            import socket as _socket

            sock.shutdown(_socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def mosquitto_sub(
    handle: BrokerHandle,
    topic: str,
    *,
    count: int = 1,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 10.0,
) -> subprocess.Popen[str]:
    """Start a plain ``mosquitto_sub -C count`` (caller waits on / kills it)."""
    require_mosquitto_clients()
    cmd = [
        "mosquitto_sub",
        "-h",
        handle.host,
        "-p",
        str(handle.port),
        "-t",
        topic,
        "-C",
        str(count),
        "-W",
        str(int(timeout_s)),
        "-v",
        "-q",
        "1",
    ]
    if username is not None:
        cmd += ["-u", username, "-P", password or ""]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class KillableMosquitto:
    """An anonymous Mosquitto on one port that a test kills with -9 and starts again.

    Args:
        workdir: its config and log go here.
        extra: more config lines; without persistence ones a ``kill -9`` loses all
            it held (``persistence false``).
    """

    def __init__(self, workdir: Path, extra: tuple[str, ...] = ("persistence false",)) -> None:
        from mesh.edge.broker._handle import free_port

        self.exe = require_mosquitto()
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        lines = (f"listener {self.port} 127.0.0.1", "allow_anonymous true", *extra)
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, same config); returns once it listens."""
        import time

        from mesh.edge.broker._handle import wait_port

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        assert wait_port("127.0.0.1", self.port, time.monotonic() + 20), self.log.read_text()

    def kill(self) -> None:
        """SIGKILL this Mosquitto (only the one it started) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
