"""The artifact endpoint's URL as agents see it: the base of the URLs in their desired states.

Agents download models from the gateway's ``/v1/artifacts`` over HTTP, at URLs
the control plane signs and sends them (:class:`mesh.edge._install.EdgeInstaller`).
``MESH_ARTIFACT_BASE_URL`` names it when set (a proxy, a DNS name). Otherwise it
is the gateway's own address (``MESH_GATEWAY_HOST``); a gateway bound on every
address (``0.0.0.0``, ``::``) is advertised at the address this host reaches the
devices' broker from, the network its agents are on (loopback only when that
broker is on loopback too, as in the demo). A loopback URL with a devices' broker
elsewhere reaches no device: logged as a warning naming the setting.
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from collections.abc import Callable

from mesh.core._addresses import is_loopback

__all__ = ["artifact_base_url", "local_address_toward"]

logger = logging.getLogger(__name__)

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def local_address_toward(host: str) -> str:
    """The address of this host on the route to ``host`` (sends nothing); 127.0.0.1 if none.

    Example:
        >>> local_address_toward("127.0.0.1")
        '127.0.0.1'
    """
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)  # UDP: picks the route and source address, sends nothing
            return str(probe.getsockname()[0])
    except (OSError, IndexError) as exc:
        logger.warning(
            "no route from this host to %s (%s); artifact URLs name 127.0.0.1", host, exc
        )
        return "127.0.0.1"


def artifact_base_url(
    *,
    explicit: str | None,
    gateway_host: str,
    gateway_port: int,
    device_broker_url: str,
    route: Callable[[str], str] = local_address_toward,
) -> str:
    """``http://HOST:PORT`` agents fetch artifacts from (see the module doc).

    Args:
        explicit: ``MESH_ARTIFACT_BASE_URL``; wins when set.
        gateway_host: the gateway's bind address (``MESH_GATEWAY_HOST``).
        gateway_port: the gateway's port (fixed before this is called).
        device_broker_url: the broker devices are told (``MESH_AGENT_BROKER_URL``).
        route: this host's address toward a host (:func:`local_address_toward`).

    Example:
        >>> artifact_base_url(explicit=None, gateway_host="10.77.0.10", gateway_port=8080,
        ...                   device_broker_url="mqtts://10.77.0.10:8883")
        'http://10.77.0.10:8080'
    """
    if explicit:
        return explicit
    broker_host = urllib.parse.urlsplit(device_broker_url).hostname or "127.0.0.1"
    host = gateway_host
    if host in _WILDCARDS:
        host = "127.0.0.1" if is_loopback(broker_host) else route(broker_host)
    if is_loopback(host) and not is_loopback(broker_host):
        logger.warning(
            "agents fetch models from %s (loopback) but reach the broker at %s: devices on "
            "other hosts cannot download them; set MESH_GATEWAY_HOST to an address they "
            "reach, or MESH_ARTIFACT_BASE_URL",
            host,
            broker_host,
        )
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{gateway_port}"
