"""Running an ASGI app under uvicorn in a daemon thread (replicas, gateway, artifacts)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Literal

from mesh.core._errors import MeshError

__all__ = ["ServerThread", "serve_asgi"]

logger = logging.getLogger(__name__)


class ServerThread:
    """An ASGI app served by uvicorn in a daemon thread (see :func:`serve_asgi`)."""

    def __init__(self, server: Any, thread: threading.Thread, host: str, port: int) -> None:
        """Wrap a started uvicorn server."""
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the server thread still runs."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish open requests (up to ``timeout_s``), and join; idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)


def serve_asgi(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "mesh-http",
    keep_alive_s: float = 300.0,
    timeout_s: float = 15.0,
    lifespan: Literal["on", "off"] = "off",
) -> ServerThread:
    """Serve ``app`` with uvicorn in a daemon thread; returns once it accepts connections.

    httptools and uvloop are used when installed (uvicorn's ``auto``).
    Keep-alive is long because the gateway pools connections to replicas.
    ``lifespan="on"`` runs the app's startup and shutdown (the gateway closes
    its connections there).

    Raises:
        MeshError: the server did not start within ``timeout_s``.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan=lifespan,
        ws="none",
        http="auto",
        loop="auto",
        log_level="warning",
        backlog=2048,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=int(keep_alive_s),
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout_s)
            sock.close()
            raise MeshError(f"HTTP server {name} on {host}:{bound} did not start")
        time.sleep(0.005)
    logger.info("%s listening on http://%s:%d", name, host, bound)
    return ServerThread(server, thread, host, bound)
