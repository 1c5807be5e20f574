"""What the serving manager needs from replicas and installers: Protocols and records.

The Ray launcher (:mod:`mesh.ray._replicas`), the HTTP probe and the edge
installer implement these; unit tests use fakes behind the same Protocols.
"""

from __future__ import annotations

import http.client
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from edge_agent._mqtt import TlsOptions, broker_tls
from mesh.core._errors import MeshError
from mesh.models._export import ModelSignature
from mesh.sdk._specs import Resources
from mesh.serving._routes import ReplicaEndpoint

if TYPE_CHECKING:
    from mesh.models._registry import ModelRegistry, ModelVersion

__all__ = [
    "AgentErrorReply",
    "AgentInstaller",
    "DeployError",
    "HttpProbe",
    "ModelArtifact",
    "ReplicaFailedError",
    "ReplicaHandle",
    "ReplicaLauncher",
    "ReplicaMqtt",
    "ReplicaProbe",
    "ReplicaRequest",
    "ReplicaStatus",
]

logger = logging.getLogger(__name__)


class DeployError(MeshError, RuntimeError):
    """A version could not be put in service; what served before still serves (HTTP 409)."""

    http_status = 409


class ReplicaFailedError(DeployError):
    """A replica died for good or failed to start (the message says why)."""


# ---------------------------------------------------------------- what is deployed


@dataclass(frozen=True, slots=True)
class ModelArtifact:
    """One version of a model's ONNX file, ready to ship to replicas or agents.

    Attributes:
        model: the model's name in the registry.
        version: the version id (``v3``).
        sha256: digest of the file.
        data: the file's bytes.
        signature: its inputs and outputs.
    """

    model: str
    version: str
    sha256: str
    data: bytes = field(repr=False)
    signature: ModelSignature

    @classmethod
    def from_registry(
        cls, registry: ModelRegistry, model: str, ref: str = "production"
    ) -> ModelArtifact:
        """The version ``ref`` (``v3``, ``production``, ...) of ``model`` in the registry."""
        version, path = registry.artifact_path(model, ref)
        return cls.from_version(version, path.read_bytes())

    @classmethod
    def from_version(cls, version: ModelVersion, data: bytes) -> ModelArtifact:
        """Wrap a registry version and its bytes."""
        return cls(version.name, version.version, version.sha256, data, version.signature)

    @classmethod
    def from_file(cls, path: Path, *, model: str, version: str) -> ModelArtifact:
        """An ONNX file outside the registry (checked, signature read from the graph)."""
        import hashlib

        from mesh.models._export import load_checked, signature_of

        data = path.read_bytes()
        return cls(
            model, version, hashlib.sha256(data).hexdigest(), data, signature_of(load_checked(data))
        )


@dataclass(frozen=True, slots=True)
class ReplicaRequest:
    """What a launcher needs to start one replica."""

    module: str
    artifact: ModelArtifact
    tier: str
    site: str | None
    resources: Resources
    replica_id: str
    batching: str = "auto"
    max_restarts: int = 3
    #: Pin to this one Ray node (its id), besides tier and site.
    node: str | None = None
    #: Never on these Ray nodes (a standby avoids its primary's node and lost nodes).
    avoid_nodes: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        """The version the replica serves."""
        return self.artifact.version


@dataclass(frozen=True, slots=True)
class ReplicaMqtt:
    """How replicas reach the MQTT broker, to answer agents' offloaded requests directly.

    A replica given these subscribes to ``{prefix}/modules/{module}/infer/{replica_id}``:
    the replica id is the ``target`` an agent's offload route names (see
    :func:`mesh.edge._install.offload_target`).

    Attributes:
        url: ``mqtt://[user:pass@]host[:port]``, or ``mqtts://`` for TLS.
        username: broker user (overrides the URL's).
        password: broker password (overrides the URL's).
        prefix: topic prefix (``mesh/v1``).
        protocol: ``"auto"`` (5, then 3.1.1 when refused), ``"5"`` or ``"3.1.1"``.
        connect_timeout_s: how long a starting replica waits to be connected and
            subscribed; it fails to start past that (a route must never name a
            replica that does not listen).
        keepalive_s: MQTT keepalive.
        ca_file: CA an ``mqtts://`` broker's certificate must chain to (None: system
            CAs); a path on the replica's host.
        cert_file: client certificate for mutual TLS (with ``key_file``).
        key_file: the client certificate's key.

    Example:
        >>> ReplicaMqtt("mqtt://cp:pw@10.0.0.2:1884").endpoint()
        ('10.0.0.2', 1884, 'cp', 'pw')
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = "mesh/v1"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    connect_timeout_s: float = 15.0
    keepalive_s: int = 30
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parts.hostname:
            raise ValueError(
                f"broker {self.url!r}: expected mqtt://[user:pass@]host[:port] or mqtts://"
            )
        if (self.ca_file or self.cert_file) and parts.scheme not in ("mqtts", "ssl"):
            raise ValueError(f"broker {self.url!r} is plain MQTT: use mqtts:// with a CA file")
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"protocol {self.protocol!r}: expected 'auto', '5' or '3.1.1'")

    def tls(self) -> TlsOptions | None:
        """TLS options for the URL (None for ``mqtt://``).

        Raises:
            ValueError: a TLS file does not exist on this host.
        """
        return broker_tls(
            self.url, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )

    def endpoint(self) -> tuple[str, int, str | None, str | None]:
        """Host, port, username and password (explicit fields win over the URL's)."""
        parts = urlsplit(self.url)
        user = self.username or (unquote(parts.username) if parts.username else None)
        password = self.password
        if password is None and parts.password:
            password = unquote(parts.password)
        port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)
        return parts.hostname or "127.0.0.1", port, user, password


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica as ``mesh modules``/``placements`` show it."""

    module: str
    version: str
    replica_id: str
    state: str
    node: str | None
    url: str | None
    in_flight: float | None = None
    requests: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None


# ---------------------------------------------------------------- the seams


class ReplicaHandle(Protocol):
    """A started (or starting) replica."""

    @property
    def replica_id(self) -> str:
        """Its id."""
        ...

    def poll(self) -> ReplicaEndpoint | None:
        """Its endpoint once it serves (warm); None while it starts. Never blocks.

        Raises:
            ReplicaFailedError: it failed to start or died for good.
        """
        ...

    def refresh(self, timeout_s: float) -> ReplicaEndpoint | None:
        """Ask it for its endpoint now (a restarted replica listens on a new port).

        Returns None when it does not answer within ``timeout_s`` (e.g. restarting).

        Raises:
            ReplicaFailedError: it died for good.
        """
        ...

    def stop(self) -> None:
        """Stop it (idempotent)."""
        ...


class ReplicaLauncher(Protocol):
    """Starts replicas on nodes of a tier (Ray: an actor pinned by label_selector)."""

    def launch(self, request: ReplicaRequest) -> ReplicaHandle:
        """Start a replica; returns at once (poll the handle).

        Raises:
            UnsatisfiableError: no live node has the tier, site or resources.
        """
        ...


class ReplicaProbe(Protocol):
    """Reads a replica's ``/stats`` over its own socket (health apart from Ray)."""

    def stats(self, endpoint: ReplicaEndpoint, timeout_s: float) -> dict[str, Any] | None:
        """The replica's stats, or None when it does not answer."""
        ...


class AgentInstaller(Protocol):
    """Installs a module on an edge agent (desired state over MQTT, artifact over HTTP)."""

    def install(
        self, agent_id: str, module: str, artifact: ModelArtifact, timeout_s: float
    ) -> None:
        """Install ``artifact`` as ``module`` on the agent and wait until it serves it.

        Raises:
            DeployError: the agent reported an error or did not answer in time.
        """
        ...


@runtime_checkable
class AgentErrorReply(Protocol):
    """An agent's error answer to a request (:class:`mesh.edge._records.EdgeInferenceError`).

    What serving and control know of the edge's errors: an exception with
    these attributes is an answer; a ``TimeoutError`` or ``ConnectionError``
    is no answer at all. So neither layer imports the edge.

    Attributes:
        code: the protocol's error code (``bad_input``, ``unknown_module``, ``not_ready``…).
        expected: for ``bad_input``, the module's input signature as text.
    """

    code: str
    expected: list[str]


class HttpProbe:
    """:class:`ReplicaProbe` over ``http.client`` (the manager's thread; no event loop)."""

    def stats(self, endpoint: ReplicaEndpoint, timeout_s: float) -> dict[str, Any] | None:
        """``GET /stats`` of the replica (with its key); None on any failure."""
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)
        headers = {"Authorization": endpoint.authorization.decode()} if endpoint.key else {}
        try:
            conn.request("GET", "/stats", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            data = json.loads(body)
            return data if isinstance(data, dict) else None
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()


# ---------------------------------------------------------------- the manager
