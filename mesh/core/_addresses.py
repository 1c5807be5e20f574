"""Host addresses: whether one is this host's loopback."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, bracketed IPv6 too, or ``localhost``) is the loopback.

    A name other than ``localhost`` is not resolved and counts as not loopback.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("10.77.0.10")
        (True, True, False)
    """
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
