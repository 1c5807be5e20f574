"""The base every layer stands on: imports nothing else of ``mesh``.

The error root (:class:`MeshError`, the tree drawn in :mod:`mesh.core._errors`)
and the errors the SDK raises, process settings (:class:`MeshSettings`, ``MESH_*``),
the metrics registry, MQTT topic rules, SQLite helpers and the ASGI server thread.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.core._errors import (
        BackendError,
        CancelledError,
        ClusterNotRunningError,
        ConfigError,
        FunctionTimeoutError,
        InvalidArgumentsError,
        InvocationError,
        MeshError,
        RemoteFunctionError,
        SpecError,
        StoreError,
        UnknownFunctionError,
        UnsatisfiableError,
    )
    from mesh.core._http_server import ServerThread, serve_asgi
    from mesh.core._metrics import MetricsRegistry
    from mesh.core._settings import MeshSettings
    from mesh.core._sqlite import open_sqlite, write_transaction
    from mesh.core._topics import cover_filters, topic_covers, topic_matches

__all__ = [
    "BackendError",
    "CancelledError",
    "ClusterNotRunningError",
    "ConfigError",
    "FunctionTimeoutError",
    "InvalidArgumentsError",
    "InvocationError",
    "MeshError",
    "MeshSettings",
    "MetricsRegistry",
    "RemoteFunctionError",
    "ServerThread",
    "SpecError",
    "StoreError",
    "UnknownFunctionError",
    "UnsatisfiableError",
    "cover_filters",
    "open_sqlite",
    "serve_asgi",
    "topic_covers",
    "topic_matches",
    "write_transaction",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.core._errors": (
            "BackendError",
            "CancelledError",
            "ClusterNotRunningError",
            "ConfigError",
            "FunctionTimeoutError",
            "InvalidArgumentsError",
            "InvocationError",
            "MeshError",
            "RemoteFunctionError",
            "SpecError",
            "StoreError",
            "UnknownFunctionError",
            "UnsatisfiableError",
        ),
        "mesh.core._http_server": (
            "ServerThread",
            "serve_asgi",
        ),
        "mesh.core._metrics": ("MetricsRegistry",),
        "mesh.core._settings": ("MeshSettings",),
        "mesh.core._sqlite": (
            "open_sqlite",
            "write_transaction",
        ),
        "mesh.core._topics": (
            "cover_filters",
            "topic_covers",
            "topic_matches",
        ),
    },
)
