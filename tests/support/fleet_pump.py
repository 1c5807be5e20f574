"""One thread that runs the network loop of many paho clients (epoll, not a thread each).

paho's own loop (``loop_start``) is a thread per client around ``select()``,
which cannot watch a descriptor numbered 1024 or more: each client holds three
(its socket and a socket pair), so one process stops at about 340 clients.
:class:`ClientPump` drives the clients through paho's external-loop calls
(``loop_read``, ``loop_write``, ``loop_misc``) from one ``selectors`` loop
(epoll: no such bound). A publish from another thread is written by that thread
(paho does so when no loop thread runs); one made inside a callback is written
after the callback by the pump.

Example:
    >>> pump = ClientPump().start()                      # doctest: +SKIP
    >>> client.connect(host, port); pump.add(client)     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import threading
import time
from typing import Any

__all__ = ["ClientPump"]

logger = logging.getLogger(__name__)

_MISC_EVERY_S = 0.5  # keepalive pings and queued writes of every client


class ClientPump:
    """The network loop of many paho clients, on one thread."""

    def __init__(self) -> None:
        """Nothing runs until :meth:`start`."""
        self._sel = selectors.DefaultSelector()
        self._clients: dict[int, Any] = {}  # id(client) -> client
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ClientPump:
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._run, name="fleet-pump", daemon=True)
        self._thread.start()
        return self

    def add(self, client: Any) -> None:
        """Drive ``client`` (connected: its socket is open)."""
        sock = client.socket()
        if sock is None:
            return
        with self._lock:
            self._clients[id(client)] = client
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            self._sel.register(sock, selectors.EVENT_READ, client)

    def remove(self, client: Any) -> None:
        """Stop driving ``client``; its socket is left as it is (open or closed)."""
        with self._lock:
            self._clients.pop(id(client), None)
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)

    def _run(self) -> None:
        last_misc = 0.0
        while not self._stop.is_set():
            with self._lock:
                empty = not self._clients
            if empty:
                self._stop.wait(0.05)
                continue
            try:
                events = self._sel.select(timeout=0.05)
            except (OSError, ValueError):
                continue
            for key, _mask in events:
                self._service(key.data, read=True)
            now = time.monotonic()
            if now - last_misc >= _MISC_EVERY_S:
                last_misc = now
                with self._lock:
                    clients = list(self._clients.values())
                for client in clients:
                    self._service(client, read=False)

    def _service(self, client: Any, *, read: bool) -> None:
        with self._lock:
            if id(client) not in self._clients:
                return
        try:
            rc = client.loop_read() if read else client.loop_misc()
            if rc == 0 and client.want_write():
                rc = client.loop_write()
        except Exception:  # one client's failure never stops the others
            logger.exception("fleet pump: a client failed")
            rc = 1
        if rc != 0:
            self.remove(client)  # lost: its owner reconnects it (paho called on_disconnect)

    def close(self) -> None:
        """Stop the loop thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._sel.close()
