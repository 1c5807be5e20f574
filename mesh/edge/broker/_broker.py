"""MQTT brokers the mesh can start: an embedded amqtt broker and a local Mosquitto.

Both hide behind :class:`BrokerHandle` (``url``, ``host``, ``port``, ``stop()``):

- :func:`start_embedded_broker` runs amqtt (MQTT 3.1.1 only, anonymous, loopback)
  on its own asyncio loop in a daemon thread: the demo's and the unit-ish
  integration tests' default. A client's persistent session (``clean_session``
  false) keeps QoS 1 messages while it is away, and those sent on a connection
  that died before their PUBACK, as Mosquitto's does (:mod:`mesh.edge.broker._amqtt_sessions`).
  asyncio sets ``TCP_NODELAY`` on its TCP sockets.
- :func:`start_mosquitto` runs a real ``mosquitto`` from a generated config
  (``set_tcp_nodelay true``, ``log_dest stdout``, a persistence dir, optional
  password and ACL files) as a child process: production-like, for tests and dev.

Example:
    >>> broker = start_embedded_broker()            # doctest: +SKIP
    >>> broker.url                                    # doctest: +SKIP
    'mqtt://127.0.0.1:40211'
    >>> broker.stop()                                 # doctest: +SKIP

Errors: :class:`BrokerStartError` (a :class:`~mesh.core._errors.MeshError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from mesh.core._errors import MeshError

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

_START_TIMEOUT_S = 10.0


class BrokerStartError(MeshError, RuntimeError):
    """A broker could not be started (missing binary, port taken, bad config)."""


@runtime_checkable
class BrokerHandle(Protocol):
    """A running MQTT broker the mesh started.

    Attributes:
        url: ``mqtt://host:port``.
        host: the address clients connect to.
        port: the TCP port.
    """

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        ...

    @property
    def host(self) -> str:
        """The address clients connect to."""
        ...

    @property
    def port(self) -> int:
        """The TCP port."""
        ...

    def stop(self) -> None:
        """Stop the broker; idempotent."""
        ...


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    Another process may take it before it is used; callers that can bind port 0
    themselves should prefer that.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- amqtt


class EmbeddedBroker:
    """An amqtt broker running on its own event loop in a daemon thread.

    MQTT 3.1.1 only, anonymous; meant for loopback use (demo, tests). Create it
    with :func:`start_embedded_broker`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
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
        return "127.0.0.1" if self._bind_host in ("", "0.0.0.0") else self._bind_host

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
                from amqtt.broker import Broker

                from mesh.edge.broker._amqtt_sessions import keep_unacknowledged
            except ImportError as exc:  # pragma: no cover - depends on extras
                raise BrokerStartError(
                    "the embedded broker needs amqtt: pip install 'fogmesh[cloud]'"
                ) from exc
            keep_unacknowledged()
            ready = threading.Event()
            failure: list[BaseException] = []
            loop = asyncio.new_event_loop()
            config = {
                "listeners": {
                    "default": {
                        "type": "tcp",
                        "bind": f"{self._bind_host}:{self._requested_port}",
                    }
                },
                # Only what we need: no $SYS publisher, no packet logger. Anyone may
                # connect, and persistent sessions keep QoS 1 messages while away.
                "plugins": {
                    "mesh.edge.broker._amqtt_sessions.OpenSessionsAuth": {"allow_anonymous": True}
                },
            }

            class _Broker(Broker):  # type: ignore[misc]
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
                await broker.start()
                server = broker._servers["default"].instance
                self._port = int(server.sockets[0].getsockname()[1])
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
            if not ready.wait(_START_TIMEOUT_S):
                raise BrokerStartError(
                    f"embedded broker on {self._bind_host}:{self._requested_port} did not start "
                    f"within {_START_TIMEOUT_S:g} s"
                )
            if failure:
                thread.join(1.0)
                raise BrokerStartError(
                    f"embedded broker on {self._bind_host}:{self._requested_port} failed to "
                    f"start: {failure[0]}"
                ) from failure[0]
            self._loop = loop
            self._thread = thread
            # Later restarts reuse the same port, so clients reconnect to it.
            self._requested_port = self._port
            logger.info("embedded MQTT broker (amqtt) listening on %s", self.url)
            return self

    def stop(self) -> None:
        """Shut the broker down and join its thread; idempotent."""
        with self._lock:
            loop, thread, broker = self._loop, self._thread, self._broker
            self._loop = self._thread = self._broker = None
            if loop is None or thread is None:
                return
            if broker is not None and thread.is_alive():
                fut = asyncio.run_coroutine_threadsafe(_shutdown_amqtt(broker), loop)
                try:
                    fut.result(_START_TIMEOUT_S)
                except Exception:
                    logger.warning(
                        "embedded broker %s did not shut down cleanly", self.url, exc_info=True
                    )
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_START_TIMEOUT_S)
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


def start_embedded_broker(host: str = "127.0.0.1", port: int = 0) -> EmbeddedBroker:
    """Start an embedded amqtt broker (MQTT 3.1.1) and return its handle.

    Args:
        host: address to bind; loopback by default (the broker is anonymous).
        port: TCP port; 0 picks a free one.

    Example:
        >>> with start_embedded_broker() as broker:   # doctest: +SKIP
        ...     print(broker.url)
    """
    return EmbeddedBroker(host, port).start()


# ----------------------------------------------------------------------- mosquitto


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` binary, or None when not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in (
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class MosquittoConfig:
    """What :func:`render_mosquitto_config` writes.

    Attributes:
        port: TCP listener port.
        host: listener address.
        persistence_dir: where ``mosquitto.db`` lives; None disables persistence.
        password_file: Mosquitto password file; None allows anonymous clients.
        acl_file: Mosquitto ACL file (only used together with a password file).
        run_as_root: keep root privileges (``user root``) so files created by the
            calling root process stay readable; ignored when not root.
        max_keepalive: upper bound the broker accepts for client keepalives.
    """

    port: int
    host: str = "127.0.0.1"
    persistence_dir: Path | None = None
    password_file: Path | None = None
    acl_file: Path | None = None
    run_as_root: bool = True
    max_keepalive: int = 65535


def render_mosquitto_config(cfg: MosquittoConfig) -> str:
    """Render a mosquitto.conf for a local broker (dev and tests)."""
    lines = [
        "# Generated by fogmesh (mesh.edge.broker); see deploy/mosquitto.conf for production.",
        "per_listener_settings false",
        # Nagle + delayed ACK costs ~40-88 ms per small request/response on loopback.
        "set_tcp_nodelay true",
        # A root-run mosquitto cannot open a log file outside its own dirs.
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        f"max_keepalive {cfg.max_keepalive}",
        "max_queued_messages 10000",
    ]
    if cfg.run_as_root and hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")
    if cfg.persistence_dir is not None:
        lines += [
            "persistence true",
            f"persistence_location {str(cfg.persistence_dir).rstrip('/')}/",
            "autosave_interval 1",
        ]
    else:
        lines.append("persistence false")
    lines.append(f"listener {cfg.port} {cfg.host}")
    if cfg.password_file is not None:
        lines += ["allow_anonymous false", f"password_file {cfg.password_file}"]
        if cfg.acl_file is not None:
            lines.append(f"acl_file {cfg.acl_file}")
    else:
        lines.append("allow_anonymous true")
    return "\n".join(lines) + "\n"


class MosquittoBroker:
    """A ``mosquitto`` child process started from a generated config.

    Supports ``stop()`` then ``start()`` again on the same port and persistence
    dir (to simulate a broker outage), and ``reload()`` (SIGHUP: re-reads the
    password and ACL files).
    """

    def __init__(
        self,
        config: MosquittoConfig,
        *,
        workdir: Path,
        executable: str,
    ) -> None:
        self.config = config
        self.workdir = workdir
        self.executable = executable
        self.config_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: deque[str] = deque(maxlen=400)
        self._log_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return "127.0.0.1" if self.config.host in ("", "0.0.0.0") else self.config.host

    @property
    def port(self) -> int:
        """The TCP port."""
        return self.config.port

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """The last lines mosquitto wrote to stdout/stderr."""
        with self._log_lock:
            return "\n".join(self._log)

    def start(self) -> MosquittoBroker:
        """Write the config and start mosquitto; returns once the port accepts.

        Raises:
            BrokerStartError: the process exited or never opened its port.
        """
        with self._lock:
            if self.running:
                return self
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.config.persistence_dir is not None:
                self.config.persistence_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(render_mosquitto_config(self.config))
            proc = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
            self._proc = proc
            assert proc.stdout is not None
            self._reader = threading.Thread(
                target=self._pump,
                args=(proc.stdout,),
                name=f"mosquitto-{self.port}-log",
                daemon=True,
            )
            self._reader.start()
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if _wait_port(self.host, self.port, min(deadline, time.monotonic() + 0.2)):
                    logger.info("mosquitto pid %d listening on %s", proc.pid, self.url)
                    return self
            self._terminate(proc)
            self._proc = None
            if self._reader is not None:
                self._reader.join(2.0)
                self._reader = None
            raise BrokerStartError(
                f"mosquitto ({self.executable}) did not start on {self.url} "
                f"(exit code {proc.returncode}); its log:\n{self.log_text()}"
            )

    def _pump(self, stream: IO[bytes]) -> None:
        # Owns the pipe: reads until mosquitto exits (EOF), then closes it.
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                with self._log_lock:
                    self._log.append(line)
                logger.debug("mosquitto:%d %s", self.port, line)
        except (OSError, ValueError):
            logger.debug("mosquitto:%d log pipe closed", self.port)
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def reload(self) -> None:
        """Send SIGHUP so mosquitto re-reads its password and ACL files."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
            logger.info("mosquitto pid %d on %s reloaded", proc.pid, self.url)

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL after 5 s); idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            self._terminate(proc)
            if self._reader is not None:
                self._reader.join(5.0)
                self._reader = None
            logger.info("mosquitto on %s stopped (exit code %s)", self.url, proc.returncode)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MosquittoBroker(url={self.url!r}, pid={self.pid})"


def start_mosquitto(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    workdir: Path | None = None,
    persistence: bool = True,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    executable: str | None = None,
) -> MosquittoBroker:
    """Start a local Mosquitto from a generated config and return its handle.

    Args:
        port: TCP port; 0 picks a free one.
        host: listener address.
        workdir: where the config and persistence dir go (a temp dir by default).
        persistence: keep retained messages and sessions across ``stop()``/``start()``.
        password_file: require these credentials (no anonymous clients).
        acl_file: apply this ACL file (with ``password_file``).
        executable: the mosquitto binary; found on PATH / in sbin by default.

    Raises:
        BrokerStartError: mosquitto is not installed or did not start.

    Example:
        >>> broker = start_mosquitto()                  # doctest: +SKIP
        >>> broker.stop()                               # doctest: +SKIP
    """
    exe = executable or find_mosquitto()
    if exe is None:
        raise BrokerStartError(
            "mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients)"
        )
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mesh-mosquitto-"))
    cfg = MosquittoConfig(
        port=port or free_port(host if host not in ("", "0.0.0.0") else "127.0.0.1"),
        host=host,
        persistence_dir=(workdir / "data") if persistence else None,
        password_file=password_file,
        acl_file=acl_file,
    )
    last: BrokerStartError | None = None
    # A free port can be taken between the probe and mosquitto's bind; retry a fresh one.
    for _ in range(3):
        try:
            return MosquittoBroker(cfg, workdir=workdir, executable=exe).start()
        except BrokerStartError as exc:
            last = exc
            if port:
                break
            cfg = MosquittoConfig(
                port=free_port(),
                host=cfg.host,
                persistence_dir=cfg.persistence_dir,
                password_file=cfg.password_file,
                acl_file=cfg.acl_file,
            )
    assert last is not None
    raise last
