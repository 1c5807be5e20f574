"""What every broker the mesh starts shares: its handle, its error, and port helpers.

:class:`BrokerHandle` (``url``, ``host``, ``port``, ``stop()``) is what the embedded
broker (:mod:`mesh.edge.broker._broker`) and Mosquitto
(:mod:`mesh.edge.broker._mosquitto`) both are to their callers.
"""

from __future__ import annotations

import socket
import time
from typing import Protocol, runtime_checkable

from mesh.core._errors import MeshError

__all__ = ["START_TIMEOUT_S", "BrokerHandle", "BrokerStartError", "free_port", "wait_port"]

#: How long a broker may take to accept connections.
START_TIMEOUT_S = 10.0


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


def wait_port(host: str, port: int, deadline: float) -> bool:
    """Whether ``host:port`` accepted a TCP connection before the monotonic ``deadline``."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False
