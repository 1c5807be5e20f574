"""The edge bus's connection to the broker: one paho client, connected and subscribed.

:class:`BrokerLink` picks the protocol (MQTT 5 when the broker speaks it, else
3.1.1), opens the session, subscribes the bus's filters on every connect and
reports ready once the broker acknowledged them; paho reconnects on its own.
The client is set up by :mod:`edge_agent._mqtt`, as the agent's and the
replicas' are (callback API VERSION2, TCP_NODELAY, reason codes as text).

Over MQTT 5 the session outlives a disconnect (``session_expiry_s``), so
subscriptions and QoS 1 messages survive a broker restart. Mosquitto (2.0.11)
does not keep a session across its own restart when the session began with
clean start, so a start first wipes any old session with a clean connect,
then opens the real one with clean start off.

Threads: the callbacks run on paho's network thread and only hand over (no
blocking, no user code): messages go straight to the bus's ``on_message``,
other subscriptions' acknowledgements to its ``on_suback``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from edge_agent._mqtt import (
    ClientOptions,
    MqttVersion,
    TlsOptions,
    choose_protocol,
    close_client,
    connect_and_wait,
    new_client,
    reason_value,
    refusal_text,
    session_properties,
    tls_failure_text,
)
from mesh.edge._records import EdgeConnectionError

__all__ = ["BrokerLink"]

logger = logging.getLogger(__name__)

_PROBE_S = 3.0  # longest wait for the broker's answer to the MQTT 5 question


class BrokerLink:
    """One paho client of the edge bus, connected with its subscriptions in place.

    Args:
        host: broker host.
        port: broker port.
        client_id: MQTT client id.
        username: broker user, or None.
        password: broker password.
        protocol: ``"auto"`` (5 when the broker speaks it, else 3.1.1), ``"5"`` or ``"3.1.1"``.
        keepalive_s: MQTT keepalive.
        session_expiry_s: MQTT 5 session lifetime across disconnects (0: none).
        filters: the topic filters to subscribe (QoS 1) on every connect.
        on_message: paho's ``on_message(client, userdata, message)`` (on paho's
            thread: must not block).
        on_suback: called with the message id of every other subscription's SUBACK.
        on_ready: called each time the filters are acknowledged after a connect.
        tls: TLS towards the broker (``mqtts://``), or None for plain MQTT.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None,
        password: str | None,
        protocol: Literal["auto", "5", "3.1.1"],
        keepalive_s: int,
        session_expiry_s: int,
        filters: Callable[[], list[str]],
        on_message: Callable[[Any, Any, Any], None],
        on_suback: Callable[[int], None],
        on_ready: Callable[[], None],
        tls: TlsOptions | None = None,
    ) -> None:
        """Configure; :meth:`start` connects."""
        self.host = host
        self.port = port
        self.client_id = client_id
        self._username = username
        self._password = password
        self._protocol_choice = protocol
        self.protocol: MqttVersion | None = None
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._filters = filters
        self._on_message = on_message
        self._on_suback = on_suback
        self._on_ready = on_ready
        self._tls = tls

        self.client: Any = None  # the paho client, None until started
        self._ready_mid: int | None = None
        self._connected = threading.Event()
        self._ready = threading.Event()  # connected and the filters acknowledged
        self._stopping = False
        self._starting = False
        self._wiping = False

    @property
    def ready(self) -> bool:
        """Whether the link is connected with its subscriptions in place."""
        return self._ready.is_set()

    def live_client(self) -> Any:
        """The paho client while connected, else None."""
        client = self.client
        return client if client is not None and self._connected.is_set() else None

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float) -> None:
        """Connect, subscribe and wait until the broker acknowledged the filters.

        Raises:
            EdgeConnectionError: the broker was unreachable, refused the client
                (the message says why and what to do), or did not answer within
                ``timeout_s``. The link is stopped again.
        """
        self._stopping = False
        self._starting = True
        deadline = time.monotonic() + timeout_s
        try:
            # A 3.1.1-only broker (amqtt) misreads a v5 CONNECT with credentials
            # and never answers: "auto" asks with a bare one first.
            try:
                proto = choose_protocol(
                    self._protocol_choice,
                    self.host,
                    self.port,
                    tls=self._tls,
                    timeout_s=min(_PROBE_S, max(0.01, deadline - time.monotonic())),
                )
            except OSError as exc:
                raise self._unreachable(exc) from exc
            if proto == "5" and self._session_expiry_s > 0:
                self._connect(proto, deadline, wipe=True)
            self._connect(proto, deadline)
            if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                raise EdgeConnectionError(
                    f"broker {self.host}:{self.port} did not acknowledge the subscriptions "
                    f"of {self.client_id} within {timeout_s:g} s"
                )
        except BaseException:
            self.stop()
            raise
        finally:
            self._starting = False

    def _connect(self, proto: MqttVersion, deadline: float, *, wipe: bool = False) -> None:
        """A fresh client, connected; ``wipe``: a clean connect that ends the old session."""
        persistent = proto == "5" and not wipe and self._session_expiry_s > 0
        self._close_client()
        options = ClientOptions(
            client_id=self.client_id,
            protocol=proto,
            username=self._username,
            password=self._password,
            reconnect_min_s=1,
            reconnect_max_s=2,
            max_inflight=1000,
            tls=self._tls,
        )
        client = new_client(options)
        client.max_queued_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._handle_subscribe
        self.client = client
        self._wiping = wipe
        self.protocol = proto
        props = session_properties(proto, self._session_expiry_s) if persistent else None
        try:
            code = connect_and_wait(
                client,
                self.host,
                self.port,
                keepalive_s=self._keepalive_s,
                timeout_s=deadline - time.monotonic(),
                clean_start=False if persistent else None,
                properties=props,
            )
        except OSError as exc:
            raise self._unreachable(exc) from exc
        if code is None:
            raise EdgeConnectionError(
                f"no CONNACK from broker {self.host}:{self.port} (MQTT {proto})"
            )
        if code != 0:
            raise EdgeConnectionError(
                f"broker {self.host}:{self.port} refused {self.client_id} "
                f"(MQTT {proto}): {refusal_text(code)}"
            )

    def _unreachable(self, exc: OSError) -> EdgeConnectionError:
        tls = tls_failure_text(exc, self._tls)
        if tls is not None:
            return EdgeConnectionError(f"broker mqtts://{self.host}:{self.port}: {tls}")
        return EdgeConnectionError(f"cannot reach broker {self.host}:{self.port}: {exc}")

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            close_client(client)

    def stop(self) -> None:
        """Disconnect and stop paho's thread; idempotent."""
        self._stopping = True
        self._ready.clear()
        self._connected.clear()
        self._close_client()

    # ------------------------------------------------------------ paho callbacks
    # These run on paho's network thread: no blocking, no waiting, no user code.

    def _handle_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if client is not self.client or self._wiping:
            return  # a replaced client, or the session wipe: start() disconnects it
        code = reason_value(reason_code)
        if code != 0:
            logger.warning(
                "%s: broker %s:%d refused the connection: %s",
                self.client_id,
                self.host,
                self.port,
                refusal_text(code),
            )
            if self._starting:
                client.disconnect()  # start() reports it; later, paho keeps retrying
            return
        self._connected.set()
        topics = self._filters()
        # The SUBACK is read on this same thread after we return, so no race here.
        _, self._ready_mid = client.subscribe([(t, 1) for t in topics])
        logger.info(
            "%s connected to %s:%d (session present: %s); subscribing %d topics",
            self.client_id,
            self.host,
            self.port,
            getattr(flags, "session_present", None),
            len(topics),
        )

    def _handle_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if client is not self.client:
            return  # a replaced client (the session wipe) going away
        self._connected.clear()
        self._ready.clear()
        if not self._stopping:
            logger.warning(
                "%s lost broker %s:%d (%s); reconnecting",
                self.client_id,
                self.host,
                self.port,
                reason_code,
            )

    def _handle_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        failed = [str(rc) for rc in reason_codes if reason_value(rc) >= 0x80]
        if failed:
            logger.error(
                "%s: broker refused subscriptions (mid %d): %s",
                self.client_id,
                mid,
                ", ".join(failed),
            )
        if mid == self._ready_mid:
            self._ready_mid = None
            if self._connected.is_set():
                self._ready.set()
                self._on_ready()
            return
        self._on_suback(mid)
