"""MQTT brokers the mesh starts: an embedded amqtt broker and Mosquitto.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.edge.broker._broker import (
        BrokerHandle,
        BrokerStartError,
        EmbeddedBroker,
        MosquittoBroker,
        MosquittoConfig,
        find_mosquitto,
        free_port,
        start_embedded_broker,
        start_mosquitto,
    )

__all__ = [
    "BrokerHandle",
    "BrokerStartError",
    "EmbeddedBroker",
    "MosquittoBroker",
    "MosquittoConfig",
    "find_mosquitto",
    "free_port",
    "start_embedded_broker",
    "start_mosquitto",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.edge.broker._broker": (
            "BrokerHandle",
            "BrokerStartError",
            "EmbeddedBroker",
            "MosquittoBroker",
            "MosquittoConfig",
            "find_mosquitto",
            "free_port",
            "start_embedded_broker",
            "start_mosquitto",
        ),
    },
)
