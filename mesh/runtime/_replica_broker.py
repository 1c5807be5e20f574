"""Whether replicas on the Ray cluster's nodes can reach the control plane's MQTT broker.

Replicas answer agents' offloaded requests over MQTT as well as HTTP. A broker
on loopback (the embedded one) is reached only from the control plane's own
host, so when the cluster's nodes are elsewhere the replicas get no broker and
serve HTTP only, with one warning naming the setting to change.
"""

from __future__ import annotations

import logging
import urllib.parse

__all__ = ["replicas_reach_broker"]

logger = logging.getLogger(__name__)


def replicas_reach_broker(broker_url: str, ray_address: str | None) -> bool:
    """Whether replicas on every node of the Ray cluster at ``ray_address`` reach the broker.

    A broker on loopback (the embedded one) is reached only from the control
    plane's host: the embedded cluster (``ray_address`` None) runs there; when
    the cluster's nodes are elsewhere (its address is not loopback), replicas
    serve HTTP only, and agents' offloaded requests need a broker they all
    reach (``MESH_BROKER_URL``); logged once (one call per start), as a warning.

    Example:
        >>> replicas_reach_broker("mqtt://127.0.0.1:1883", None)
        True
        >>> replicas_reach_broker("mqtt://127.0.0.1:1883", "10.0.0.5:6379")
        False
    """
    from mesh.core._addresses import is_loopback

    broker_host = urllib.parse.urlsplit(broker_url).hostname or ""
    if ray_address is None or not is_loopback(broker_host):
        return True
    if is_loopback(ray_address.rpartition(":")[0]):
        return True
    logger.warning(
        "the MQTT broker %s listens on loopback and the Ray cluster %s is not: replicas on "
        "other hosts cannot reach it, so they serve HTTP only (agents' offloaded requests "
        "need MESH_BROKER_URL, a broker every host reaches)",
        broker_url,
        ray_address,
    )
    return False
