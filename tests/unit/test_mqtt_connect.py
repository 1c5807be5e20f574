"""The one MQTT connection helper (edge_agent._mqtt): fallback decision, reason codes, client.

Where a broker would answer, a socket server sends canned bytes (a fake, so it
lives here); the real brokers are in tests/integration/test_mqtt_connect.py.
"""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from edge_agent._client import FastClient
from edge_agent._mqtt import (
    UNSUPPORTED_PROTOCOL,
    ClientOptions,
    TlsOptions,
    choose_protocol,
    close_client,
    connect_and_wait,
    new_client,
    probe_protocol,
    protocol_from_connack,
    reason_value,
    refusal_text,
    session_properties,
    set_nodelay,
)


class CannedBroker:
    """Accepts connections; answers each CONNECT with ``answer`` (None: silence; b"": close)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connects: list[bytes] = []
        self.after: list[bytes] = []  # what a client sent after the answer
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._conns.append(conn)
            conn.settimeout(5)
            try:
                self.connects.append(conn.recv(4096))
                if self.answer == b"":
                    conn.close()
                    continue
                if self.answer is not None:
                    conn.sendall(self.answer)
                    self.after.append(conn.recv(4096))
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def canned(request: pytest.FixtureRequest) -> Iterator[CannedBroker]:
    broker = CannedBroker(request.param)
    try:
        yield broker
    finally:
        broker.close()


# ---------------------------------------------------------------- the fallback decision


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("2003000000", "5"),  # v5 CONNACK: accepted
        ("2003008600", "5"),  # v5: bad user name or password (still MQTT 5)
        ("2003008700", "5"),  # v5: not authorized
        ("2003008400", "3.1.1"),  # v5: unsupported protocol version
        ("20020001", "3.1.1"),  # 3.1.1 CONNACK: unacceptable protocol version
        ("", "3.1.1"),  # closed or silent
        ("200300", "3.1.1"),  # cut short
        ("30030000", "3.1.1"),  # not a CONNACK
    ],
)
def test_the_fallback_decision_reads_the_connack(head: str, expected: str) -> None:
    assert protocol_from_connack(bytes.fromhex(head)) == expected


@pytest.mark.parametrize(
    ("canned", "expected"),
    [
        (bytes.fromhex("2003000000"), "5"),
        (bytes.fromhex("2003008700"), "5"),
        (bytes.fromhex("20020001"), "3.1.1"),
        (b"", "3.1.1"),
        (None, "3.1.1"),
    ],
    indirect=["canned"],
)
def test_probe_sends_a_bare_v5_connect(canned: CannedBroker, expected: str) -> None:
    assert probe_protocol("127.0.0.1", canned.port, timeout_s=0.5) == expected
    connect = canned.connects[0]
    assert connect[0] == 0x10 and connect[8] == 5  # CONNECT, protocol level 5
    assert connect[9] == 0x02  # clean start only: no will, no user name, no password


@pytest.mark.parametrize("canned", [bytes.fromhex("2003000000")], indirect=True)
def test_an_accepted_probe_disconnects_so_no_session_lingers(canned: CannedBroker) -> None:
    assert probe_protocol("127.0.0.1", canned.port, timeout_s=2) == "5"
    threading.Event().wait(0.2)  # the server reads what follows the CONNACK
    assert canned.after[:1] == [b"\xe0\x00"]


def test_probe_of_an_unreachable_broker_raises() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(OSError):
        probe_protocol("127.0.0.1", port, timeout_s=1)
    with pytest.raises(OSError):
        choose_protocol("auto", "127.0.0.1", port, timeout_s=1)


def test_a_named_version_is_used_without_asking() -> None:
    # Port 9 is not listened on: asking would raise.
    assert choose_protocol("5", "127.0.0.1", 9) == "5"
    assert choose_protocol("3.1.1", "127.0.0.1", 9) == "3.1.1"


def test_an_unknown_version_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'4'.*expected one of auto, 5, 3\.1\.1"):
        choose_protocol("4", "127.0.0.1", 9)


# ---------------------------------------------------------------- reason codes


@pytest.mark.parametrize(
    ("code", "what", "todo"),
    [
        (0x84, "unsupported protocol version", "protocol 'auto'"),
        (0x85, "client identifier not valid", "client id"),
        (0x86, "bad user name or password", "check the user name and password"),
        (0x87, "not authorized", "password file and ACL"),
        (0x88, "server unavailable", "retry later"),
        (0x8A, "banned", "bans this client"),
        (0x9F, "connection rate exceeded", "retry more slowly"),
    ],
)
def test_refusals_say_what_and_what_to_do(code: int, what: str, todo: str) -> None:
    text = refusal_text(code)
    assert text.startswith(f"{what} (reason code {code}): ")
    assert todo in text


def test_an_unknown_code_still_names_itself() -> None:
    assert refusal_text(0xFE) == "refused (reason code 254): see the broker's log"


def test_paho_maps_a_311_refusal_to_the_v5_code_the_text_knows() -> None:
    from paho.mqtt._packet import convert_connack_rc_to_reason_code

    assert reason_value(convert_connack_rc_to_reason_code(1)) == UNSUPPORTED_PROTOCOL
    assert "bad user name" in refusal_text(reason_value(convert_connack_rc_to_reason_code(4)))
    assert reason_value(7) == 7


# ---------------------------------------------------------------- the client


def test_new_client_uses_callback_api_2_and_tcp_nodelay() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # VERSION1 would warn
        client = new_client(ClientOptions("c-1", "5", username="u", password="p"))
    assert client.protocol == mqtt.MQTTv5
    assert client.on_socket_open is set_nodelay
    assert client._username == b"u" and client._password == b"p"
    assert client._client_id == b"c-1"
    assert client._max_inflight_messages == 20


def test_new_client_311_session_will_and_factory() -> None:
    options = ClientOptions(
        "cam-7", "3.1.1", clean_session=False, will=("st", b"off"), max_inflight=5
    )
    client = new_client(options, FastClient)
    assert isinstance(client, FastClient)
    assert client.protocol == mqtt.MQTTv311 and client._clean_session is False
    assert client._will and client._will_topic == b"st" and client._will_payload == b"off"
    assert client._will_retain and client._will_qos == 1
    assert client._max_inflight_messages == 5


def test_new_client_with_tls() -> None:
    client = new_client(ClientOptions("t", "5", tls=TlsOptions(insecure=True)))
    assert client._ssl and client._tls_insecure


def test_set_nodelay_on_tcp_and_not_on_unix_sockets() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    tcp = socket.create_connection(server.getsockname())
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        set_nodelay(None, None, tcp)
        assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        set_nodelay(None, None, a)  # not TCP: skipped without an error
    finally:
        for s in (tcp, server, a, b):
            s.close()


def test_session_properties_only_for_v5_with_an_expiry() -> None:
    props = session_properties("5", 300)
    assert props is not None and props.SessionExpiryInterval == 300
    assert session_properties("3.1.1", 300) is None
    assert session_properties("5", 0) is None


# ---------------------------------------------------------------- connect_and_wait


@pytest.mark.parametrize("canned", [bytes.fromhex("20020005")], indirect=True)
def test_connect_and_wait_returns_the_refusal_as_a_v5_code(canned: CannedBroker) -> None:
    seen: list[int] = []
    client = new_client(ClientOptions("w-1", "3.1.1"))
    client.on_connect = lambda c, u, f, rc, p: seen.append(reason_value(rc))
    try:
        code = connect_and_wait(client, "127.0.0.1", canned.port, keepalive_s=5, timeout_s=5)
    finally:
        close_client(client)
    assert code == 0x87 and "not authorized" in refusal_text(code)
    assert seen[:1] == [0x87]  # the client's own on_connect ran too


@pytest.mark.parametrize("canned", [None], indirect=True)
def test_connect_and_wait_gives_none_on_silence(canned: CannedBroker) -> None:
    client = new_client(ClientOptions("w-2", "5"))
    try:
        code = connect_and_wait(client, "127.0.0.1", canned.port, keepalive_s=5, timeout_s=0.3)
    finally:
        close_client(client)
    assert code is None
    assert canned.connects and canned.connects[0][0] == 0x10


def test_connect_and_wait_raises_when_unreachable() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    client = new_client(ClientOptions("w-3", "3.1.1"))
    try:
        with pytest.raises(OSError):
            connect_and_wait(client, "127.0.0.1", port, keepalive_s=5, timeout_s=1)
    finally:
        close_client(client)
