"""Integration fixtures: a real multi-node local Ray cluster, shared by the session.

The cluster is the mesh's own embedded one (a cloud head and one fog node,
``mesh.site=fog-0``), started through :class:`mesh.ray._backend.RayBackend`, so
these tests exercise exactly what ``mesh`` runs. It is shut down at the end of
the session, whatever happens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from mesh import MeshSettings

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend


@pytest.fixture(scope="session")
def ray_settings(tmp_path_factory: pytest.TempPathFactory) -> MeshSettings:
    """Settings of the shared cluster: 1 cloud CPU, one 1-CPU fog node, no auth, no dashboard."""
    return MeshSettings(
        data_dir=tmp_path_factory.mktemp("mesh-ray"),
        ray_address=None,
        cloud_cpus=1,
        cloud_gpus=0,
        fog_nodes=1,
        fog_cpus=1,
        object_store_mb=100,
        include_dashboard=False,
        ray_auth_mode="disabled",
    )


@pytest.fixture(scope="session")
def ray_backend(ray_settings: MeshSettings) -> Iterator[RayBackend]:
    """A connected backend owning an embedded cloud + fog cluster."""
    pytest.importorskip("ray")
    from mesh.ray._backend import RayBackend

    saved = dict(os.environ)
    # Ray 2.60 turns token auth on for new local clusters unless told otherwise.
    os.environ["RAY_AUTH_MODE"] = ray_settings.ray_auth_mode
    backend = RayBackend.connect(ray_settings)
    try:
        yield backend
    finally:
        try:
            backend.close()
        finally:
            os.environ.clear()
            os.environ.update(saved)
