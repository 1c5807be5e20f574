"""The Ray adapter: the only package of ``mesh`` that imports ``ray``.

:class:`RayBackend` implements compute's ``ComputeBackend`` (tasks, Tune and
Ray Data jobs); the local cluster of cloud and fog nodes; :class:`RayNodeProbe`
implements control's ``NodeProbe``; :class:`RayReplicaLauncher` implements
serving's ``ReplicaLauncher``. Importing any of them imports Ray.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend
    from mesh.ray._cluster import LocalCluster, prepare_ray_environment, start_local_cluster
    from mesh.ray._probe import RayNodeProbe
    from mesh.ray._replicas import RayReplicaLauncher
    from mesh.ray._tune import report_trial

__all__ = [
    "LocalCluster",
    "RayBackend",
    "RayNodeProbe",
    "RayReplicaLauncher",
    "prepare_ray_environment",
    "report_trial",
    "start_local_cluster",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.ray._backend": ("RayBackend",),
        "mesh.ray._cluster": (
            "LocalCluster",
            "prepare_ray_environment",
            "start_local_cluster",
        ),
        "mesh.ray._probe": ("RayNodeProbe",),
        "mesh.ray._replicas": ("RayReplicaLauncher",),
        "mesh.ray._tune": ("report_trial",),
    },
)
