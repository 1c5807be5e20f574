"""The artifact endpoint agents download signed ONNX files from (FastAPI).

Routes (mount :func:`artifact_router` in the REST control plane, or serve
:func:`create_artifact_app` on its own with :func:`serve_in_thread`):

- ``GET /v1/artifacts/public-key``: the Ed25519 public key agents verify with.
- ``GET /v1/artifacts/{sha256}``: the file, for an enrolled agent. Either
  ``Authorization: Bearer <agent token>`` (from enrolment), or a pre-signed URL
  (``?agent=ID&expires=UNIX&sig=HMAC``, see :meth:`UrlSigner.sign_url`) for
  downloaders that cannot set headers. 401 without or with a wrong credential
  (checked before the digest, so nothing leaks), 404 for an unknown digest.
  The ETag is the sha256 (the content never changes): a request whose
  ``If-None-Match`` names it (or ``*``) is answered 304 without the body
  (:func:`etag_matches`), so a cache in front of the endpoint (a fog node's, an
  HTTP proxy's) revalidates for a few hundred bytes instead of the file.

Errors are raised (:class:`ArtifactAuthError`,
:class:`~mesh.models._artifacts.ArtifactNotFoundError`) and answered by the
app's handlers (:func:`mesh.core._http_errors.install_error_handlers`) with the
one JSON error body, as on every endpoint of the mesh.

Example:
    >>> app = create_artifact_app(EdgeSettings(data_dir=Path("/tmp/m")))  # doctest: +SKIP
    >>> server = serve_in_thread(app, port=0)                             # doctest: +SKIP
    >>> server.url; server.stop()                                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol
from urllib.parse import urlencode

# FastAPI resolves the route signatures' (string) annotations in this module's globals.
from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.responses import FileResponse, Response

from edge_agent._files import atomic_write
from edge_agent.protocol import ModuleSpec, Route
from mesh.core._errors import MeshError
from mesh.core._http_errors import install_error_handlers
from mesh.core._http_server import ServerThread, serve_asgi
from mesh.models._artifacts import (
    ArtifactInfo,
    ArtifactNotFoundError,
    ArtifactSigner,
    ArtifactStore,
)
from mesh.security._auth import AuthError

if TYPE_CHECKING:
    from mesh.edge._enrolment import EdgeSettings

__all__ = [
    "AgentAuth",
    "ArtifactAuthError",
    "ArtifactServer",
    "UrlSigner",
    "artifact_router",
    "create_artifact_app",
    "etag_matches",
    "serve_in_thread",
    "signed_module_spec",
]

logger = logging.getLogger(__name__)

URL_KEY_FILE = "artifact-url.key"


class ArtifactAuthError(AuthError):
    """An artifact download without a valid agent token or signed URL (HTTP 401)."""

    challenge = 'Bearer realm="fogmesh-artifacts"'


class AgentAuth(Protocol):
    """Who may download: the enrolment store implements this."""

    def agent_for_token(self, token: str) -> str | None:
        """The agent a bearer token belongs to, or None."""
        ...

    def is_enrolled(self, agent_id: str) -> bool:
        """Whether the agent is (still) enrolled."""
        ...


class UrlSigner:
    """HMAC-SHA256 pre-signed artifact URLs, scoped to one agent and one digest.

    Example:
        >>> signer = UrlSigner(b"k" * 32)
        >>> url = signer.sign_url("http://cp:8471", "a" * 64, agent_id="cam-07", ttl_s=60)
        >>> url.startswith("http://cp:8471/v1/artifacts/" + "a" * 64 + "?agent=cam-07")
        True
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        """Use ``key`` (at least 16 random bytes) as the HMAC key."""
        if len(key) < 16:
            raise MeshError("URL signing key must be at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "UrlSigner(key=<hidden>)"

    @classmethod
    def load_or_create(cls, data_dir: Path) -> UrlSigner:
        """Load ``<data_dir>/keys/artifact-url.key``, creating it (0600) if missing."""
        file = Path(data_dir) / "keys" / URL_KEY_FILE
        if not file.is_file():
            atomic_write(file, secrets.token_bytes(32), mode=0o600)
            logger.info("created artifact URL signing key %s", file)
        return cls(file.read_bytes())

    def _mac(self, sha256: str, agent_id: str, expires: int) -> str:
        msg = f"{sha256}\n{agent_id}\n{expires}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign_url(
        self,
        base_url: str,
        sha256: str,
        *,
        agent_id: str,
        ttl_s: float = 86400.0,
        now: float | None = None,
    ) -> str:
        """A download URL for ``agent_id`` valid for ``ttl_s`` seconds."""
        expires = int((time.time() if now is None else now) + ttl_s)
        query = urlencode(
            {"agent": agent_id, "expires": expires, "sig": self._mac(sha256, agent_id, expires)}
        )
        return f"{base_url.rstrip('/')}/v1/artifacts/{sha256}?{query}"

    def verify(
        self, sha256: str, agent_id: str, expires: int, sig: str, now: float | None = None
    ) -> bool:
        """Whether a pre-signed URL's fields are authentic and unexpired."""
        if expires < (time.time() if now is None else now) or not sig.isascii():
            return False  # compare_digest refuses non-ASCII text (a client's, here)
        return hmac.compare_digest(self._mac(sha256, agent_id, expires), sig)


def signed_module_spec(
    name: str,
    version: str,
    artifact: ArtifactInfo,
    *,
    agent_id: str,
    base_url: str,
    signer: ArtifactSigner,
    url_signer: UrlSigner,
    route: Route | None = None,
    ttl_s: float = 7 * 86400.0,
    **options: Any,
) -> ModuleSpec:
    """A desired-state module entry for one agent: pre-signed URL, sha256, Ed25519 signature.

    Args:
        name: module name.
        version: module version.
        artifact: the stored ONNX file.
        agent_id: the agent the URL is for.
        base_url: the artifact endpoint as the agent reaches it.
        signer: the control plane's artifact-signing key.
        url_signer: the URL signing key.
        route: local (default) or offload.
        ttl_s: how long the download URL stays valid.
        **options: other ``ModuleSpec`` fields (threads, providers, max_queue, ...).
    """
    return ModuleSpec(
        name=name,
        version=version,
        url=url_signer.sign_url(base_url, artifact.sha256, agent_id=agent_id, ttl_s=ttl_s),
        sha256=artifact.sha256,
        signature=signer.sign_module(name, version, artifact.sha256),
        key_id=signer.key_id,
        size=artifact.size,
        route=route or Route(),
        **options,
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110 13.1.2).

    ``etag`` is the quoted tag (``'"<sha256>"'``); the header is ``*`` or a comma-separated
    list of tags, each maybe ``W/``-prefixed. A header that is no such list matches nothing.

    Example:
        >>> etag_matches('W/"ab", "cd"', '"cd"'), etag_matches('"ab"', '"cd"')
        (True, False)
    """
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip() for t in if_none_match.split(","))
    return any(t.removeprefix("W/") == etag for t in tags)


def artifact_router(
    *,
    store: ArtifactStore,
    signer: ArtifactSigner,
    auth: AgentAuth,
    url_signer: UrlSigner | None = None,
) -> APIRouter:
    """The ``/v1/artifacts`` routes as an ``APIRouter``.

    Mount it in a FastAPI app that answers the mesh's errors
    (:func:`mesh.core._http_errors.install_error_handlers`; the gateway's app does).
    """
    router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])

    def _agent(
        authorization: str | None,
        sha256: str,
        agent: str | None,
        expires: int | None,
        sig: str | None,
    ) -> str:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                agent_id = auth.agent_for_token(token.strip())
                if agent_id is not None:
                    return agent_id
            raise ArtifactAuthError("invalid bearer token")
        if (
            agent is not None
            and expires is not None
            and sig is not None
            and url_signer is not None
            and url_signer.verify(sha256, agent, expires, sig)
            and auth.is_enrolled(agent)
        ):
            return agent
        if agent is not None or sig is not None:
            raise ArtifactAuthError("invalid or expired signed URL")
        raise ArtifactAuthError("missing Authorization: Bearer <agent token>")

    @router.get("/public-key", summary="The control plane's artifact-signing public key")
    def public_key() -> dict[str, str]:
        return {
            "algorithm": "ed25519",
            "public_key": signer.public_key_b64(),
            "key_id": signer.key_id,
            "pem": signer.public_key_pem(),
        }

    @router.get(
        "/{sha256}",
        summary="Download an artifact by sha256 (enrolled agents only)",
        response_class=FileResponse,
        responses={
            401: {"description": "no or wrong credentials"},
            304: {"description": "If-None-Match names this artifact's ETag"},
            404: {"description": "no artifact with this sha256"},
        },
    )
    def download(
        sha256: str,
        authorization: Annotated[str | None, Header()] = None,
        if_none_match: Annotated[str | None, Header()] = None,
        agent: Annotated[str | None, Query(max_length=128)] = None,
        expires: Annotated[int | None, Query()] = None,
        sig: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Response:
        agent_id = _agent(authorization, sha256, agent, expires, sig)
        try:
            info = store.info(sha256)
        except ArtifactNotFoundError:
            logger.info("agent %s asked for unknown artifact %s", agent_id, sha256[:80])
            raise ArtifactNotFoundError(sha256[:80]) from None
        headers = {
            "ETag": f'"{sha256}"',
            "X-Content-SHA256": sha256,
            "Cache-Control": "private, max-age=31536000, immutable",
        }
        if etag_matches(if_none_match, headers["ETag"]):
            logger.debug("agent %s holds artifact %s already (304)", agent_id, sha256)
            return Response(status_code=304, headers=headers)
        logger.info("agent %s downloads artifact %s (%d bytes)", agent_id, sha256, info.size)
        return FileResponse(info.path, media_type="application/octet-stream", headers=headers)

    return router


def create_artifact_app(
    settings: EdgeSettings | None = None,
    *,
    store: ArtifactStore | None = None,
    signer: ArtifactSigner | None = None,
    auth: AgentAuth | None = None,
    url_signer: UrlSigner | None = None,
) -> FastAPI:
    """A FastAPI app serving only the artifact routes (defaults from the data dir)."""
    if settings is None:
        from mesh.edge._enrolment import EdgeSettings

        settings = EdgeSettings()
    if auth is None:
        from mesh.edge._enrolment import EnrolmentStore

        auth = EnrolmentStore(settings.store_path)
    app = FastAPI(title="fogmesh artifacts", version="1")
    install_error_handlers(app)
    app.include_router(
        artifact_router(
            store=store or ArtifactStore(settings.data_dir / "artifacts"),
            signer=signer or ArtifactSigner.load_or_create(settings.data_dir),
            auth=auth,
            url_signer=url_signer or UrlSigner.load_or_create(settings.data_dir),
        )
    )
    return app


#: The artifact endpoint's server handle (``url``, ``stop()``).
ArtifactServer = ServerThread


def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 10.0
) -> ServerThread:
    """Serve an ASGI app with uvicorn in a daemon thread; returns once it accepts.

    Args:
        app: the ASGI app.
        host: bind address.
        port: TCP port; 0 picks a free one (read it from the result).
        timeout_s: how long to wait for startup.

    Raises:
        MeshError: uvicorn did not start in time.
    """
    return serve_asgi(app, host=host, port=port, name="mesh-artifacts", timeout_s=timeout_s)
