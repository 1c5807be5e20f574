"""The composition root: the one place every layer is wired together.

:func:`connect_backend` picks the compute backend; :func:`build_services`
builds the control plane (edge bus, registry, serving manager, placement
controller, HTTP gateway) and :func:`run_control_plane` runs it (``python -m
mesh.runtime``, which `mesh up` starts and `mesh down` stops).

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.runtime._connect import connect_backend
    from mesh.runtime._control_plane import (
        ControlPlaneServices,
        ControlPlaneSettings,
        MqttProtocol,
        build_services,
        run_control_plane,
    )
    from mesh.runtime._daemon import cluster_down, cluster_up, read_cluster_file

__all__ = [
    "ControlPlaneServices",
    "ControlPlaneSettings",
    "MqttProtocol",
    "build_services",
    "cluster_down",
    "cluster_up",
    "connect_backend",
    "read_cluster_file",
    "run_control_plane",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.runtime._connect": ("connect_backend",),
        "mesh.runtime._control_plane": (
            "ControlPlaneServices",
            "ControlPlaneSettings",
            "MqttProtocol",
            "build_services",
            "run_control_plane",
        ),
        "mesh.runtime._daemon": (
            "cluster_down",
            "cluster_up",
            "read_cluster_file",
        ),
    },
)
