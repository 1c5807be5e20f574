"""A port reserved ahead (reserve_port) is not given to anyone else, and serve_asgi serves on it."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI

from mesh.core._http_server import reserve_port, serve_asgi


def test_a_reserved_port_is_held_until_served_on() -> None:
    sock = reserve_port("127.0.0.1")
    port = int(sock.getsockname()[1])
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError) as exc:  # what a Ray worker binding it meanwhile would get
            other.bind(("127.0.0.1", port))
        assert exc.value.errno == errno.EADDRINUSE
    finally:
        other.close()
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    server = serve_asgi(app, sock=sock)
    try:
        assert server.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as resp:
            assert resp.read() == b'{"ok":true}'
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
