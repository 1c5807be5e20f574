"""Ray's credentials: the embedded cluster's token and what a driver needs to join.

Ray 2.60 authenticates every gRPC and HTTP entry point of a cluster (GCS,
raylets, workers, dashboard and its agents) when ``RAY_AUTH_MODE=token``; each
process reads the token from ``RAY_AUTH_TOKEN``, else the file at
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. The embedded cluster's
token is ours: generated once at ``<data_dir>/keys/ray-token`` (0600, beside
the other keys) and handed to every Ray process through the environment
(:func:`use_embedded_token`). For a cluster at ``MESH_RAY_ADDRESS`` the
operator brings the token (``MESH_RAY_TOKEN_FILE``, ``RAY_AUTH_TOKEN_PATH`` or
``RAY_AUTH_TOKEN``), and :func:`check_cluster_auth` refuses to start without
one where the cluster asks for it.

Example:
    >>> import tempfile
    >>> path = ensure_ray_token(Path(tempfile.mkdtemp()) / "keys" / "ray-token")
    >>> len(path.read_text()), oct(path.stat().st_mode & 0o777)
    (64, '0o600')
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Literal

from mesh.core._errors import BackendError
from mesh.core._settings import MeshSettings

__all__ = [
    "ClusterAuth",
    "check_cluster_auth",
    "ensure_ray_token",
    "probe_cluster_auth",
    "token_available",
    "use_embedded_token",
    "use_external_token",
    "use_loopback_driver",
]

logger = logging.getLogger(__name__)

ClusterAuth = Literal["token", "open", "unknown"]

# Ray's own names (ray/_private/authentication, and the C++ token loader).
_MODE = "RAY_AUTH_MODE"
_TOKEN = "RAY_AUTH_TOKEN"
_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray_token(path: Path) -> Path:
    """The token file at ``path``, created (256 random bits, hex, mode 0600) if missing.

    Its folder is created 0700. An existing file is kept as it is, so a
    restarted cluster keeps its token; delete the file (cluster down) to rotate.

    Raises:
        BackendError: the file exists but is empty (Ray would abort on it).
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    if not path.read_text().strip():
        raise BackendError(f"the Ray token file {path} is empty; delete it to get a new token")
    return path


def _refresh_ray_config() -> None:
    """Make an already-loaded Ray re-read RAY_AUTH_MODE and the token (as Ray itself does)."""
    import sys

    if "ray._raylet" not in sys.modules:
        return  # read fresh when Ray loads
    from ray._raylet import (  # type: ignore[attr-defined, unused-ignore]
        AuthenticationTokenLoader,
        Config,
    )

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def use_embedded_token(settings: MeshSettings) -> Path | None:
    """Set this process's Ray auth environment for the embedded cluster; returns the token file.

    ``RAY_AUTH_MODE`` comes from ``settings.ray_auth_mode``. In ``token`` mode
    the token file (``settings.ray_token_path``) is created if missing and named
    by ``RAY_AUTH_TOKEN_PATH``; ``RAY_AUTH_TOKEN`` is removed, since Ray would
    prefer it. Raylets, workers and drivers started from here inherit both.
    """
    os.environ[_MODE] = settings.ray_auth_mode
    path: Path | None = None
    if settings.ray_auth_mode == "token":
        path = ensure_ray_token(settings.ray_token_path)
        os.environ[_TOKEN_PATH] = str(path)
        os.environ.pop(_TOKEN, None)
    _refresh_ray_config()
    return path


def use_external_token(settings: MeshSettings) -> None:
    """Set this process's Ray auth environment to join the cluster at ``settings.ray_address``.

    ``RAY_AUTH_MODE`` comes from the settings. The token is, in order:
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` if the environment sets them;
    ``MESH_RAY_TOKEN_FILE``; ``<data_dir>/keys/ray-token`` if it exists; else
    whatever Ray finds itself (``~/.ray/auth_token``).
    """
    os.environ[_MODE] = settings.ray_auth_mode
    if _TOKEN not in os.environ and _TOKEN_PATH not in os.environ:
        path = settings.ray_token_path
        if settings.ray_token_file is not None or path.exists():
            os.environ[_TOKEN_PATH] = str(path)
    _refresh_ray_config()


def token_available() -> bool:
    """Whether a Ray driver in this process would find a token (env, file, or Ray's default)."""
    if os.environ.get(_TOKEN, "").strip():
        return True
    named = os.environ.get(_TOKEN_PATH)
    path = Path(named) if named else Path.home() / ".ray" / "auth_token"
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def use_loopback_driver() -> None:
    """Let a driver in this process join a cluster whose nodes are on 127.0.0.1.

    Ray 2.60's ``ray.init(address="127.0.0.1:PORT")`` rewrites a loopback
    address to the host's outward address (its "node IP"), where a cluster
    bound to loopback does not listen (ray-project/ray#59110). Ray keeps the
    loopback address only when multi-host clusters are off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import): set it in the
    environment for processes started from here, and in the loaded constant.
    """
    os.environ[_CLUSTERS] = "0"
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]


def probe_cluster_auth(address: str, *, timeout_s: float = 5.0) -> ClusterAuth:
    """Ask the GCS at ``address``, without a token, whether it requires one.

    One ``GetClusterId`` call with no credentials: ``UNAUTHENTICATED`` means
    the cluster runs ``RAY_AUTH_MODE=token``; an answer means it is open.

    Returns:
        ``"token"``, ``"open"``, or ``"unknown"`` (no answer, or another error).
    """
    import grpc  # type: ignore[import-untyped, unused-ignore]
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    request: Any = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined, unused-ignore]
    with grpc.insecure_channel(address) as channel:
        stub: Any = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)  # type: ignore[no-untyped-call, unused-ignore]
        try:
            stub.GetClusterId(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return "token"
            logger.debug("Ray auth probe of %s: %s", address, exc)
            return "unknown"
    return "open"


def check_cluster_auth(settings: MeshSettings, address: str, origin: str) -> None:
    """Refuse to join a cluster that wants a token we lack; warn about an open one.

    An open cluster is joined without a token (``RAY_AUTH_MODE=disabled`` in
    this process), after the warning.

    Raises:
        BackendError: the cluster at ``address`` requires a token and this
            process has none, or its settings say ``ray_auth_mode='disabled'``.
    """
    if "://" in address:
        return  # ray:// (Ray Client) authenticates on its own path
    auth = probe_cluster_auth(address)
    if auth == "token":
        if settings.ray_auth_mode != "token":
            raise BackendError(
                f"the Ray cluster at {address} (from {origin}) requires token authentication "
                "but MESH_RAY_AUTH_MODE is 'disabled': set MESH_RAY_AUTH_MODE=token and give "
                "its token (MESH_RAY_TOKEN_FILE, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
            )
        if not token_available():
            raise BackendError(
                f"the Ray cluster at {address} (from {origin}) requires token authentication "
                "and no token was found: set MESH_RAY_TOKEN_FILE (or RAY_AUTH_TOKEN_PATH) to "
                f"a file holding the cluster's token, or put it at {settings.ray_token_path}"
            )
    elif auth == "open" and settings.ray_auth_mode == "token":
        logger.warning(
            "the Ray cluster at %s (from %s) accepts connections without a token: anyone "
            "who reaches it can run code as its user; start it with RAY_AUTH_MODE=token. "
            "Joining it without a token",
            address,
            origin,
        )
        # A token protects nothing there, and Ray would refuse to join without one.
        os.environ[_MODE] = "disabled"
        _refresh_ray_config()
