"""MQTT brokers the mesh can start: an embedded amqtt broker (here) and a local Mosquitto.

Both hide behind :class:`BrokerHandle` (``url``, ``host``, ``port``, ``stop()``):

- :func:`start_embedded_broker` runs amqtt (MQTT 3.1.1 only, loopback only) on its
  own asyncio loop in a daemon thread: the demo's and the unit-ish integration
  tests' default. It lets in only the users of a Mosquitto password file (the one
  enrolment writes from the control plane's key store:
  :mod:`mesh.edge.broker._amqtt_auth`); anonymous clients only where a test asks.
  A client's persistent session (``clean_session`` false) keeps QoS 1 messages
  while it is away, and those sent on a connection that died before their
  PUBACK, as Mosquitto's does (:mod:`mesh.edge.broker._amqtt_sessions`). Given a
  ``sessions_db`` (the control plane's ``<data>/mqtt/sessions.db``), persistent
  sessions, their subscriptions and queued messages also outlive the broker's
  process (:mod:`mesh.edge.broker._session_store`,
  :mod:`mesh.edge.broker._amqtt_persistence`), as Mosquitto's ``persistence true``.
  asyncio sets ``TCP_NODELAY`` on its TCP sockets.
- :func:`start_mosquitto` (:mod:`mesh.edge.broker._mosquitto`) runs a real
  ``mosquitto`` from a generated config as a child process: production-like, for
  tests and dev.

The handle, the error and the port helpers live in :mod:`mesh.edge.broker._handle`;
this module re-exports them and the Mosquitto names, so callers import every
broker name from here.

Example:
    >>> broker = start_embedded_broker()            # doctest: +SKIP
    >>> broker.url                                    # doctest: +SKIP
    'mqtt://127.0.0.1:40211'
    >>> broker.stop()                                 # doctest: +SKIP

Errors: :class:`BrokerStartError` (a :class:`~mesh.core._errors.MeshError`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.core._addresses import is_loopback
from mesh.edge.broker._handle import (
    START_TIMEOUT_S,
    BrokerHandle,
    BrokerStartError,
    free_port,
)
from mesh.edge.broker._mosquitto import (
    MosquittoBroker,
    MosquittoConfig,
    find_mosquitto,
    render_mosquitto_config,
    start_mosquitto,
)

if TYPE_CHECKING:
    from mesh.edge.broker._session_store import SessionLimits, SessionStore

__all__ = [
    "BrokerHandle",
    "BrokerStartError",
    "EmbeddedBroker",
    "MosquittoBroker",
    "MosquittoConfig",
    "find_mosquitto",
    "free_port",
    "render_mosquitto_config",
    "start_embedded_broker",
    "start_mosquitto",
]

logger = logging.getLogger(__name__)


class EmbeddedBroker:
    """An amqtt broker running on its own event loop in a daemon thread.

    MQTT 3.1.1 only, loopback only (demo, tests), with the logins of a password
    file; persistent sessions kept in ``sessions_db`` when given. Create it with
    :func:`start_embedded_broker`.

    Raises:
        BrokerStartError: a non-loopback ``host``, or neither ``password_file`` nor
            ``anonymous``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        password_file: Path | None = None,
        anonymous: bool = False,
        sessions_db: Path | None = None,
        session_limits: SessionLimits | None = None,
    ) -> None:
        if not is_loopback(host):
            raise BrokerStartError(
                f"the embedded broker binds to loopback only, not {host!r}: it is for "
                "the demo and tests; for devices on a network run Mosquitto "
                "(deploy/mosquitto.conf) and set MESH_BROKER_URL"
            )
        if password_file is None and not anonymous:
            raise BrokerStartError(
                "the embedded broker needs a password file (mesh.edge._enrolment."
                "write_broker_files writes one from the control plane's key store); "
                "anonymous=True is for tests only"
            )
        self._password_file = password_file
        self._sessions_db = sessions_db
        self._session_limits = session_limits
        self._store: SessionStore | None = None
        self._bind_host = host
        self._requested_port = port
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self._bind_host

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        return f"mqtt://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the broker thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmbeddedBroker:
        """Start serving; returns self once the listener accepts connections.

        Raises:
            BrokerStartError: amqtt is missing or the listener could not bind.
        """
        with self._lock:
            if self.running:
                return self
            try:
                from mesh.edge.broker._amqtt_persistence import (
                    PersistentSessionsBroker,
                    ack_after_routing,
                    check_persistence_hooks,
                )
                from mesh.edge.broker._amqtt_sessions import (
                    bound_port,
                    check_amqtt,
                    keep_unacknowledged,
                )
            except ImportError as exc:  # pragma: no cover - depends on extras
                raise BrokerStartError(
                    "the embedded broker needs amqtt: pip install 'fogmesh[cloud]'"
                ) from exc
            check_amqtt()
            check_persistence_hooks()
            keep_unacknowledged()
            ack_after_routing()
            store = self._open_store()
            ready = threading.Event()
            failure: list[BaseException] = []
            loop = asyncio.new_event_loop()
            # Only what we need: no $SYS publisher, no packet logger. The users of the
            # password file (or, in tests, anyone) may connect, and persistent
            # sessions keep QoS 1 messages while away.
            auth: dict[str, Any] = (
                {"mesh.edge.broker._amqtt_sessions.OpenSessionsAuth": {"allow_anonymous": True}}
                if self._password_file is None
                else {
                    "mesh.edge.broker._amqtt_auth.PasswordFileAuth": {
                        "password_file": str(self._password_file)
                    }
                }
            )
            config: dict[str, Any] = {
                "listeners": {
                    "default": {
                        "type": "tcp",
                        "bind": f"{self._bind_host}:{self._requested_port}",
                    }
                },
                "plugins": auth,
            }
            if store is not None:  # amqtt's session monitor forgets them in memory too
                config["session_expiry_interval"] = int(store.limits.expiry_s)

            class _Broker(PersistentSessionsBroker):
                """Tracks client streams so a stop closes every connection."""

                streams: set[asyncio.StreamWriter] = set()

                async def stream_connected(
                    self,
                    reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter,
                    listener_name: str,
                ) -> None:
                    self.streams.add(writer)
                    try:
                        await super().stream_connected(reader, writer, listener_name)
                    finally:
                        self.streams.discard(writer)
                        writer.close()

            async def boot() -> None:
                broker = _Broker(config, loop=loop)
                broker.sessions_store = store
                await broker.start()
                self._port = bound_port(broker, "default")
                self._broker = broker

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    loop.run_until_complete(boot())
                except BaseException as exc:
                    failure.append(exc)
                    ready.set()
                    loop.close()
                    return
                ready.set()
                try:
                    loop.run_forever()
                finally:
                    loop.close()

            thread = threading.Thread(target=run, name="mesh-amqtt-broker", daemon=True)
            thread.start()
            if not ready.wait(START_TIMEOUT_S):
                raise BrokerStartError(
                    f"embedded broker on {self._bind_host}:{self._requested_port} did not start "
                    f"within {START_TIMEOUT_S:g} s"
                )
            if failure:
                thread.join(1.0)
                if store is not None:
                    store.close()
                raise BrokerStartError(
                    f"embedded broker on {self._bind_host}:{self._requested_port} failed to "
                    f"start: {failure[0]}"
                ) from failure[0]
            self._loop = loop
            self._thread = thread
            self._store = store
            # Later restarts reuse the same port, so clients reconnect to it.
            self._requested_port = self._port
            logger.info("embedded MQTT broker (amqtt) listening on %s", self.url)
            return self

    def _open_store(self) -> SessionStore | None:
        if self._sessions_db is None:
            return None
        from mesh.core._errors import StoreError
        from mesh.edge.broker._session_store import SessionStore

        try:
            return SessionStore(self._sessions_db, self._session_limits)
        except (StoreError, OSError) as exc:
            raise BrokerStartError(
                f"embedded broker: cannot open its sessions file {self._sessions_db}: {exc}"
            ) from exc

    def stop(self) -> None:
        """Shut the broker down and join its thread; idempotent.

        Stored persistent sessions stay for the next start.
        """
        with self._lock:
            loop, thread, broker = self._loop, self._thread, self._broker
            store, self._store = self._store, None
            self._loop = self._thread = self._broker = None
            if loop is None or thread is None:
                return
            if broker is not None and thread.is_alive():
                fut = asyncio.run_coroutine_threadsafe(_shutdown_amqtt(broker), loop)
                try:
                    fut.result(START_TIMEOUT_S)
                except Exception:
                    logger.warning(
                        "embedded broker %s did not shut down cleanly", self.url, exc_info=True
                    )
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
                thread.join(START_TIMEOUT_S)
            if store is not None:
                store.close()
            logger.info("embedded MQTT broker %s stopped", self.url)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(url={self.url!r}, running={self.running})"


async def _shutdown_amqtt(broker: Any) -> None:
    await broker.shutdown()
    for writer in list(broker.streams):
        writer.close()
    # amqtt leaves per-connection tasks behind; cancel them so the loop closes quietly.
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def start_embedded_broker(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    password_file: Path | None = None,
    anonymous: bool = False,
    sessions_db: Path | None = None,
    session_limits: SessionLimits | None = None,
) -> EmbeddedBroker:
    """Start an embedded amqtt broker (MQTT 3.1.1) and return its handle.

    Args:
        host: a loopback address to bind.
        port: TCP port; 0 picks a free one.
        password_file: the Mosquitto password file whose users may log in (re-read
            when it changes); see :func:`mesh.edge._enrolment.embedded_broker_login`.
        anonymous: let anyone in without a password file (tests only).
        sessions_db: keep persistent sessions (subscriptions, queued QoS 1/2
            messages) in this SQLite file across restarts; None keeps them in
            memory only.
        session_limits: per-session queue bounds and expiry (defaults:
            :class:`~mesh.edge.broker._session_store.SessionLimits`).

    Raises:
        BrokerStartError: a non-loopback ``host``, no password file, or no start.

    Example:
        >>> with start_embedded_broker(password_file=passwd) as broker:   # doctest: +SKIP
        ...     print(broker.url)
    """
    return EmbeddedBroker(
        host,
        port,
        password_file=password_file,
        anonymous=anonymous,
        sessions_db=sessions_db,
        session_limits=session_limits,
    ).start()
