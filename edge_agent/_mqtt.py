"""Connecting to an MQTT broker: one helper for the agent, the edge bus and replicas.

Every paho client of fogmesh connects the same way, through this module:

* **the protocol**: ``"auto"`` asks the broker with a bare MQTT 5 CONNECT (no
  will, no credentials, no properties) before connecting for real
  (:func:`choose_protocol`). A 3.1.1-only broker refuses it with "unacceptable
  protocol version", closes or says nothing (amqtt misreads a v5 CONNECT that
  carries a will or credentials and never answers, so the real CONNECT cannot
  be the question); any MQTT 5 CONNACK, even "not authorized", means MQTT 5.
* **the client** (:func:`new_client`): paho's callback API VERSION2,
  ``TCP_NODELAY`` on the socket (Nagle and delayed ACKs add 40-88 ms to every
  small request/reply), credentials, TLS, the retained last will, reconnect
  delays, and a clean session over 3.1.1 (MQTT 5 says it at connect time:
  :func:`session_properties`).
* **the refusal** (:func:`refusal_text`): a CONNACK reason code as what it
  means and what to do about it; a failed TLS handshake as what failed and
  against which CA (:func:`tls_failure_text`).
* **TLS** (:func:`broker_tls`): ``mqtts://`` (or ``ssl://``) means TLS with the
  server certificate checked against a CA file (or the system CAs); a client
  never falls back to plain MQTT when the handshake fails.
* **a blocking connect** for server processes (:func:`connect_and_wait`).

Only connecting lives here: nothing runs per message. paho is imported on first
use, so ``import mesh`` works without it.

Example:
    >>> refusal_text(0x86).split(":")[0]
    'bad user name or password (reason code 134)'
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload
from urllib.parse import urlsplit

from ._poll_select import install as install_poll_select

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties

__all__ = [
    "BROKER_SCHEMES",
    "TLS_SCHEMES",
    "UNSUPPORTED_PROTOCOL",
    "ClientOptions",
    "MqttVersion",
    "TlsOptions",
    "broker_tls",
    "choose_protocol",
    "close_client",
    "connect_and_wait",
    "new_client",
    "probe_protocol",
    "protocol_from_connack",
    "reason_value",
    "refusal_text",
    "session_properties",
    "set_nodelay",
    "tls_failure_text",
]

logger = logging.getLogger(__name__)

MqttVersion = Literal["5", "3.1.1"]
_CHOICES = ("auto", "5", "3.1.1")

#: URL schemes of a broker over TLS, and of any broker.
TLS_SCHEMES = ("mqtts", "ssl")
BROKER_SCHEMES = ("mqtt", "tcp", *TLS_SCHEMES)

#: CONNACK reason: unsupported protocol version (paho maps a 3.1.1 return code 1 here).
UNSUPPORTED_PROTOCOL = 0x84

_PAHO_HINT = (
    "MQTT needs paho-mqtt: pip install 'fogmesh[edge]' on a device, 'fogmesh[cloud]' elsewhere"
)

# CONNECT, MQTT 5, clean start, keepalive 10 s, no properties, empty client id.
_V5_PROBE = bytes.fromhex("100d00044d5154540502000a000000")

# CONNACK reason codes (MQTT 5, as paho reports them for 3.1.1 too): what, and what to do.
_REFUSALS: dict[int, tuple[str, str]] = {
    0x80: ("unspecified error", "see the broker's log"),
    0x81: ("malformed packet", "the broker could not parse the CONNECT; see its log"),
    0x82: ("protocol error", "the broker rejected the CONNECT; see its log"),
    0x83: ("implementation specific error", "see the broker's log"),
    UNSUPPORTED_PROTOCOL: (
        "unsupported protocol version",
        "connect with protocol 'auto' (or '3.1.1' for a 3.1.1-only broker)",
    ),
    0x85: (
        "client identifier not valid",
        "use a client id of letters, digits and '-' within the broker's length limit",
    ),
    0x86: ("bad user name or password", "check the user name and password given to the client"),
    0x87: (
        "not authorized",
        "the broker refuses this user: check its password file and ACL (re-enrol the agent)",
    ),
    0x88: ("server unavailable", "the broker is not taking connections now; retry later"),
    0x89: ("server busy", "retry later"),
    0x8A: ("banned", "the broker's configuration bans this client"),
    0x8C: ("bad authentication method", "the broker wants another authentication method"),
    0x95: (
        "packet too large",
        "the CONNECT (its will or credentials) is over the broker's maximum packet size",
    ),
    0x97: ("quota exceeded", "the broker's connection quota is used up; retry later"),
    0x9C: ("use another server", "connect to the server the broker names"),
    0x9D: ("server moved", "connect to the server the broker names"),
    0x9F: ("connection rate exceeded", "the client connects too often; retry more slowly"),
}


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS towards the broker (server certificate checked unless ``insecure``)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


def broker_tls(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> TlsOptions | None:
    """The TLS options for a broker URL: None for ``mqtt://``, else checked ones.

    Args:
        url: the broker URL; ``mqtts://`` or ``ssl://`` asks for TLS.
        ca_file: CA bundle the server certificate must chain to (None: system CAs).
        cert_file: client certificate (mutual TLS), with ``key_file``.
        key_file: the client certificate's key (None: inside ``cert_file``).

    Raises:
        ValueError: a CA or client certificate was given for a plain ``mqtt://``
            URL, a key without a certificate, or a file that does not exist.

    Example:
        >>> broker_tls("mqtt://10.0.0.2:1883") is None
        True
        >>> broker_tls("mqtts://10.0.0.2:8883").ca_file is None  # the system CAs
        True
    """
    scheme = urlsplit(url).scheme
    if scheme not in BROKER_SCHEMES:
        raise ValueError(f"broker {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    if scheme not in TLS_SCHEMES:
        if ca_file or cert_file or key_file:
            raise ValueError(
                f"broker {url!r} is plain MQTT but a CA or client certificate was given: "
                "use mqtts:// for TLS"
            )
        return None
    if key_file and not cert_file:
        raise ValueError("a client key was given without its certificate")
    for what, path in (("CA file", ca_file), ("certificate", cert_file), ("key", key_file)):
        if path and not os.path.isfile(path):
            raise ValueError(f"TLS {what} {path} does not exist")
    return TlsOptions(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def tls_failure_text(exc: BaseException, tls: TlsOptions | None) -> str | None:
    """What a failed TLS handshake means, or None when ``exc`` is not one.

    Example:
        >>> import ssl
        >>> err = ssl.SSLCertVerificationError(1, "certificate verify failed")
        >>> err.verify_message = "certificate has expired"
        >>> tls_failure_text(err, TlsOptions(ca_file="/etc/ca.pem")).split(";")[0]
        'TLS handshake failed (certificate has expired) against CA file /etc/ca.pem'
    """
    if tls is None or not isinstance(exc, ssl.SSLError):
        return None
    why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    against = f"CA file {tls.ca_file}" if tls.ca_file else "the system CAs"
    return f"TLS handshake failed ({why}) against {against}; not connecting without TLS"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How :func:`new_client` builds a paho client.

    Attributes:
        client_id: the MQTT client id.
        protocol: the MQTT version to speak (see :func:`choose_protocol`).
        clean_session: 3.1.1 only (MQTT 5 passes ``clean_start`` to ``connect``).
        username: broker user, or None for anonymous.
        password: broker password.
        tls: TLS settings, or None for plain TCP.
        will: ``(topic, payload)`` of the last will (QoS 1, retained).
        reconnect_min_s: first reconnect delay (doubling up to ``reconnect_max_s``).
        reconnect_max_s: longest reconnect delay.
        max_inflight: QoS 1 messages in flight at a time.
        manual_ack: the caller acknowledges QoS 1 messages itself.
    """

    client_id: str
    protocol: MqttVersion
    clean_session: bool = True
    username: str | None = None
    password: str | None = None
    tls: TlsOptions | None = None
    will: tuple[str, bytes] | None = None
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    max_inflight: int = 20
    manual_ack: bool = False


# ------------------------------------------------------------------ protocol


def protocol_from_connack(head: bytes) -> MqttVersion:
    """The MQTT version a broker speaks, from its answer to the bare MQTT 5 CONNECT.

    ``head`` is the first bytes read back (empty when the broker closed or
    said nothing). Any MQTT 5 CONNACK other than "unsupported protocol
    version" means ``"5"`` (a refusal such as "not authorized" is the real
    connect's business); a 3.1.1 CONNACK, a close, a silence or anything else
    means ``"3.1.1"``.

    Example:
        >>> protocol_from_connack(bytes.fromhex("2003008700"))  # v5: not authorized
        '5'
        >>> protocol_from_connack(bytes.fromhex("20020001"))  # 3.1.1: bad protocol version
        '3.1.1'
    """
    if len(head) < 4 or head[0] != 0x20:  # not a CONNACK
        return "3.1.1"
    if head[1] == 2 and head[3] == 1:  # 3.1.1 CONNACK: unacceptable protocol version
        return "3.1.1"
    return "3.1.1" if head[3] == UNSUPPORTED_PROTOCOL else "5"


def probe_protocol(
    host: str, port: int, *, tls: TlsOptions | None = None, timeout_s: float = 3.0
) -> MqttVersion:
    """Ask the broker at ``host:port`` which MQTT version it speaks (see the module doc).

    Raises:
        OSError: the broker is not reachable (or the TLS handshake failed).
    """
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        if tls is not None:
            sock = _tls_context(tls).wrap_socket(sock, server_hostname=host)
        sock.sendall(_V5_PROBE)
        try:
            head = sock.recv(5)
        except TimeoutError:
            head = b""
        if len(head) >= 4 and head[0] == 0x20 and head[3] == 0:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so no session lingers
        return protocol_from_connack(head)
    finally:
        sock.close()


def choose_protocol(
    choice: str,
    host: str,
    port: int,
    *,
    tls: TlsOptions | None = None,
    timeout_s: float = 3.0,
) -> MqttVersion:
    """``choice`` itself when it names a version; for ``"auto"`` the broker's answer.

    Raises:
        ValueError: ``choice`` is not ``"auto"``, ``"5"`` or ``"3.1.1"``.
        OSError: ``"auto"`` and the broker is not reachable.
    """
    if choice == "5":
        return "5"
    if choice == "3.1.1":
        return "3.1.1"
    if choice != "auto":
        raise ValueError(f"MQTT protocol {choice!r}: expected one of {', '.join(_CHOICES)}")
    proto = probe_protocol(host, port, tls=tls, timeout_s=timeout_s)
    if proto == "3.1.1":
        logger.info("broker %s:%d does not take MQTT 5; using 3.1.1", host, port)
    return proto


# ------------------------------------------------------------------ client


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt_module
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise ImportError(_PAHO_HINT) from exc
    install_poll_select()  # paho's select() loop stops at descriptor 1024 (_poll_select.py)
    return mqtt_module


def _tls_context(tls: TlsOptions) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def set_nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Set ``TCP_NODELAY`` on a new socket (paho's ``on_socket_open``; TCP only)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (unix, websockets)
        logger.debug("TCP_NODELAY not set on %r", sock)


_C = TypeVar("_C", bound="mqtt.Client")


@overload
def new_client(options: ClientOptions) -> mqtt.Client: ...


@overload
def new_client(options: ClientOptions, factory: type[_C]) -> _C: ...


def new_client(options: ClientOptions, factory: type[Any] | None = None) -> Any:
    """A paho client set up by ``options`` (callbacks are the caller's to set).

    Args:
        options: id, protocol, credentials, TLS, will, reconnect delays.
        factory: a subclass of paho's ``Client`` to build instead.

    Raises:
        ImportError: paho-mqtt is not installed (with the install command).

    Example:
        >>> client = new_client(ClientOptions("cam-07", "3.1.1"))
        >>> client.protocol == 4  # MQTT 3.1.1
        True
    """
    mqtt_module = _paho()
    from paho.mqtt.enums import CallbackAPIVersion

    v5 = options.protocol == "5"
    client = (factory or mqtt_module.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=options.client_id,
        protocol=mqtt_module.MQTTv5 if v5 else mqtt_module.MQTTv311,
        clean_session=None if v5 else options.clean_session,
        reconnect_on_failure=True,
        manual_ack=options.manual_ack,
    )
    client.on_socket_open = set_nodelay
    client.reconnect_delay_set(options.reconnect_min_s, options.reconnect_max_s)
    client.max_inflight_messages_set(options.max_inflight)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls is not None:
        tls = options.tls
        client.tls_set(
            ca_certs=tls.ca_file,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(tls.insecure)
    if options.will is not None:
        client.will_set(options.will[0], options.will[1], qos=1, retain=True)
    return client


def session_properties(protocol: str, session_expiry_s: int) -> Properties | None:
    """CONNECT properties keeping the session ``session_expiry_s`` (MQTT 5 only; else None)."""
    if protocol != "5" or session_expiry_s <= 0:
        return None
    _paho()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    return props


# ------------------------------------------------------------------ connecting


def reason_value(reason_code: Any) -> int:
    """A paho ``ReasonCode`` (or a plain int) as its number."""
    return int(getattr(reason_code, "value", reason_code))


def refusal_text(code: int) -> str:
    """What a CONNACK reason code means, and what to do about it.

    Example:
        >>> refusal_text(0x89)
        'server busy (reason code 137): retry later'
    """
    what, todo = _REFUSALS.get(code, ("refused", "see the broker's log"))
    return f"{what} (reason code {code}): {todo}"


def connect_and_wait(
    client: mqtt.Client,
    host: str,
    port: int,
    *,
    keepalive_s: int,
    timeout_s: float,
    clean_start: bool | None = None,
    properties: Properties | None = None,
) -> int | None:
    """Connect, start paho's network thread and wait for the CONNACK.

    The client's own ``on_connect`` still runs (after the reason code is
    noted); set it before calling. ``clean_start`` and ``properties`` are
    MQTT 5's (None: paho's default, clean on the first connect only). For
    server processes: the agent connects in the background instead.

    Returns:
        The CONNACK reason code (0: accepted), or None when none came within
        ``timeout_s`` (the client keeps trying; :func:`close_client` stops it).

    Raises:
        OSError: the broker is not reachable.
    """
    codes: queue.SimpleQueue[int] = queue.SimpleQueue()
    user: Callable[..., None] | None = client.on_connect

    def noted(*args: Any) -> None:  # (client, userdata, flags, reason_code, properties)
        codes.put(reason_value(args[3]))
        if user is not None:
            user(*args)

    client.on_connect = noted
    options: dict[str, Any] = {"keepalive": keepalive_s, "properties": properties}
    if clean_start is not None:
        options["clean_start"] = clean_start
    client.connect(host, port, **options)
    client.loop_start()
    try:
        return codes.get(timeout=max(0.01, timeout_s))
    except queue.Empty:
        return None


def close_client(client: mqtt.Client) -> None:
    """Disconnect (if connected) and stop paho's network thread; never raises."""
    try:
        client.disconnect()
    except Exception:  # already gone; nothing more to do
        logger.debug("disconnect of %r failed", client, exc_info=True)
    client.loop_stop()
