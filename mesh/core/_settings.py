"""Process settings (``MESH_*`` environment variables, then defaults)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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
    ray_auth_mode: Literal["token", "disabled"] = Field(
        "token",
        description="RAY_AUTH_MODE for the embedded cluster and its drivers. 'token' (default): "
        "every Ray process and driver must present the token (see ray_token_file); "
        "'disabled' lets anyone who reaches a Ray port run code as this user; use it only "
        "where nothing else can reach the cluster.",
    )
    ray_token_file: Path | None = Field(
        None,
        description="File holding the Ray token. None = <data_dir>/keys/ray-token, generated "
        "(0600) for the embedded cluster. For a cluster at MESH_RAY_ADDRESS that runs "
        "RAY_AUTH_MODE=token, point this (or RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN) at its "
        "token; `mesh up` refuses to start without one.",
    )
    ray_node_ip: str = Field(
        "127.0.0.1",
        description="The address the embedded cluster's nodes bind to and advertise. With a "
        "loopback address (default) every Ray port (GCS, raylets, object managers, workers, "
        "dashboard agents, metrics, runtime-env agents) listens on 127.0.0.1 only. Ray 2.60 "
        "has no per-address bind: any other address makes those ports listen on all "
        "interfaces, and only the token (ray_auth_mode='token') then keeps others out.",
    )

    @field_validator("ray_node_ip")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(
                f"ray_node_ip must be an IP address such as 127.0.0.1, got {value!r}"
            ) from None

    @property
    def store_path(self) -> Path:
        """The SQLite file of the run store."""
        return self.data_dir / "mesh.db"

    @property
    def ray_token_path(self) -> Path:
        """The Ray token file: ``ray_token_file``, else ``<data_dir>/keys/ray-token``."""
        return self.ray_token_file or self.data_dir / "keys" / "ray-token"

    @property
    def cluster_file(self) -> Path:
        """Where `mesh up` records the running cluster (address, pid)."""
        return self.data_dir / "cluster.json"
