"""The gateway's HTTP boundary: the token first, then a bounded body, then the route.

:class:`RequestGuard` runs in :class:`~mesh.serving._gateway_app.GatewayApp`'s
ASGI entry, before FastAPI reads anything, for every request the inference fast
path does not answer (the fast path keeps the same order itself):

1. **Auth before work.** On ``/v1`` and ``/v2`` (health probes and the agents'
   ``/v1/artifacts``, which check their own credentials, excepted) the bearer
   token must be valid and grant at least the scope of the method
   (:func:`least_scope`) before a byte of the body is read; the route's own
   dependency then checks its exact scope.
2. **Bounded bodies.** A ``Content-Length`` over the route's cap is refused
   (413) before reading; a body (chunked or not) is read under the read
   timeout (408) and dropped as soon as it passes the cap (413). Caps:
   inference ``max_body_bytes``; a model upload ``max_upload_bytes`` (streamed
   to the route, which counts it too, each chunk within the read timeout);
   every other body, JSON for the ``/v1`` routers, ``json_body_bytes``.
3. **Bounded JSON.** A buffered body nested deeper than
   :data:`~mesh.core._json_limits.MAX_JSON_DEPTH` is refused (422) before
   FastAPI parses it.

Refusals are the one JSON error body of :mod:`mesh.core._http_errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh.core._errors import InvalidRequestError, RequestTimeoutError, RequestTooLargeError
from mesh.core._http_server import (
    MAX_BODY_BYTES,
    READ_TIMEOUT_S,
    Message,
    Receive,
    Scope,
    Send,
    check_content_length,
    header,
    read_body,
    respond_error,
)
from mesh.core._json_limits import MAX_JSON_DEPTH, nesting_exceeds

if TYPE_CHECKING:
    from mesh.security._token_auth import TokenAuth

__all__ = ["JSON_BODY_BYTES", "MAX_UPLOAD_BYTES", "RequestGuard", "least_scope"]

#: Bodies of the ``/v1`` JSON routes past this are refused (413).
JSON_BODY_BYTES = 1024 * 1024
#: Model uploads past this are refused (413).
MAX_UPLOAD_BYTES = 256 * 1024 * 1024

_OPEN_PREFIXES = ("/v2/health/", "/v1/artifacts")
_UPLOAD = re.compile(r"^/v1/models/[^/]+/versions/?$")
_INFER = re.compile(r"^/v2/models/.+/infer/?$")
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


def least_scope(path: str, method: str) -> str:
    """The least scope any route of ``method`` at ``path`` needs: read, invoke or admin.

    Reading is ``read``; inference is ``invoke``; every other change of the
    ``/v1`` API is ``admin``.
    """
    if method in _NO_BODY:
        return "read"
    if _INFER.match(path):
        return "invoke"
    return "admin"


def _protected(path: str) -> bool:
    if not (path == "/v1" or path == "/v2" or path.startswith(("/v1/", "/v2/"))):
        return False
    return not path.startswith(_OPEN_PREFIXES)


def _has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    return header(scope, b"transfer-encoding") is not None or (
        length is not None and length.strip() not in (b"", b"0")
    )


@dataclass(frozen=True, slots=True)
class RequestGuard:
    """Auth, body caps, read timeout and JSON depth for the gateway's framework routes.

    Args:
        auth: the token check (off: only the caps apply).
        max_body_bytes: the cap of an inference body.
        json_body_bytes: the cap of every other body but a model upload.
        max_upload_bytes: the cap of a model upload.
        read_timeout_s: the time a client has to send a body.
    """

    auth: TokenAuth
    max_body_bytes: int = MAX_BODY_BYTES
    json_body_bytes: int = JSON_BODY_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    read_timeout_s: float = READ_TIMEOUT_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The ``receive`` the route should read from, or None when the request was answered."""
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if self.auth.enabled and _protected(path):
                self.auth.check(header(scope, b"authorization"), least_scope(path, method))
            if not _has_body(scope):
                return receive
            if method == "POST" and _UPLOAD.match(path):
                check_content_length(scope, self.max_upload_bytes)
                return _idle_timeout(receive, self.read_timeout_s)
            return await self._buffered(scope, receive, path)
        except Exception as exc:  # a refusal: answered here, the route never runs
            await respond_error(send, exc)
            return None

    async def _buffered(self, scope: Scope, receive: Receive, path: str) -> Receive | None:
        infer = _INFER.match(path) is not None
        limit = self.max_body_bytes if infer else self.json_body_bytes
        body = await read_body(receive, limit, timeout_s=self.read_timeout_s, scope=scope)
        if body is None:
            raise RequestTooLargeError(f"request body over {limit} bytes, or the client left")
        if not infer and nesting_exceeds(body, MAX_JSON_DEPTH):
            raise InvalidRequestError(
                f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels (or unbalanced)"
            )
        return _replay(body, receive)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then waits on the client (for its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _idle_timeout(receive: Receive, timeout_s: float) -> Receive:
    """A ``receive`` whose body chunks must each come within ``timeout_s`` of asking.

    For uploads, which may take long in all (their size is capped); a client that
    stops sending gets 408.
    """
    import asyncio

    done = False

    async def timed() -> Message:
        nonlocal done
        if done:
            return await receive()
        try:
            async with asyncio.timeout(timeout_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the upload stalled: nothing arrived for {timeout_s:g} s"
            ) from None
        done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return timed
