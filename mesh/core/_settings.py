"""Process settings (``MESH_*`` environment variables, then defaults)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MeshSettings"]


class MeshSettings(BaseSettings):
    """Settings of the mesh control plane and CLI.

    Read when constructed (never at import time) from ``MESH_*`` variables.

    Example:
        >>> MeshSettings(data_dir=Path("/tmp/m")).store_path
        PosixPath('/tmp/m/mesh.db')
    """

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: Path.cwd() / ".mesh",
        description="Where the store, artifacts and logs live.",
    )
    token_max_ttl_s: float = Field(
        30 * 86400.0,
        gt=0,
        allow_inf_nan=False,
        description="The longest a bearer token may live (seconds; default 30 days): "
        "longer ones are neither issued nor accepted.",
    )
    ray_address: str | None = Field(
        None,
        description="Address of an existing Ray cluster ('HOST:PORT'); None = the embedded "
        "local cluster started by `mesh up` (or by the process itself).",
    )
    cloud_cpus: float = Field(1.0, gt=0, description="CPUs of the embedded cloud (head) node.")
    cloud_gpus: float = Field(0.0, ge=0, description="GPUs the embedded cloud node advertises.")
    fog_nodes: int = Field(1, ge=0, le=8, description="Embedded fog nodes to start.")
    fog_cpus: float = Field(1.0, gt=0, description="CPUs of each embedded fog node.")
    object_store_mb: int = Field(
        128, ge=78, description="Object store of each embedded node, in MiB."
    )
    include_dashboard: bool = Field(
        False, description="Start Ray's dashboard with the embedded cluster."
    )
    ray_auth_mode: str = Field(
        "disabled",
        description="RAY_AUTH_MODE for the embedded cluster and its drivers ('disabled' or "
        "'token'); set explicitly because Ray 2.60 turns token auth on by default.",
    )

    @property
    def store_path(self) -> Path:
        """The SQLite file of the run store."""
        return self.data_dir / "mesh.db"

    @property
    def cluster_file(self) -> Path:
        """Where `mesh up` records the running cluster (address, pid)."""
        return self.data_dir / "cluster.json"
