"""Whether a TCP address answers: the fast check before Ray would retry it for minutes."""

from __future__ import annotations

import socket

__all__ = ["tcp_unreachable"]


def tcp_unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """Why ``host:port`` takes no TCP connection within ``timeout_s``, or None when it does.

    Example:
        >>> tcp_unreachable("127.0.0.1", 1, 0.5)
        'connection refused'
    """
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
