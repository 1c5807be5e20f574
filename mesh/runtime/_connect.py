"""Which compute backend a process uses: :func:`connect_backend`.

It lives in the composition layer, not beside the :class:`ComputeBackend`
Protocol in :mod:`mesh.compute._backend`, so that compute never imports its
Ray adapter (:mod:`mesh.ray`): the adapter sits above the Protocol it implements.
"""

from __future__ import annotations

from mesh.compute._backend import ComputeBackend
from mesh.core._errors import BackendError
from mesh.core._settings import MeshSettings

__all__ = ["connect_backend"]


def connect_backend(settings: MeshSettings) -> ComputeBackend:
    """The Ray backend for ``settings``.

    Connects to ``settings.ray_address``, else to the cluster of `mesh up`,
    else starts an embedded local cluster that ``close()`` stops.

    Raises:
        BackendError: Ray is not installed (with the install hint) or unreachable.

    Example:
        >>> runner = Runner([app], backend=connect_backend(MeshSettings()))  # doctest: +SKIP
    """
    try:
        from mesh.ray._backend import RayBackend  # imports ray: only when a backend is asked for
    except ImportError as exc:
        raise BackendError(
            f"the Ray backend needs the cloud extra: pip install 'fogmesh[cloud]' ({exc})"
        ) from exc
    backend: ComputeBackend = RayBackend.connect(settings)
    return backend
