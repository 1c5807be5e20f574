"""The one place an exception becomes an HTTP status and the one JSON error body.

Every HTTP server of the mesh answers errors the same way: the gateway's
``/v2`` Open Inference Protocol and its ``/v1`` routers (models, modules,
placements, routes), the artifact endpoint, and a replica's own ASGI server.
The status is the one the exception's class declares
(:attr:`~mesh.core._errors.MeshError.http_status`, see the tree in
:mod:`mesh.core._errors`); the body is::

    {"error": "<message>", "type": "ModelNotServedError", "status": 404}

``error`` is the message, as the Open Inference Protocol has it (tritonclient
reads that key and nothing else), so the same body serves OIP and REST clients;
``type`` is the class name in the tree, for programs to branch on; ``status``
repeats the HTTP status for logs that keep only bodies. Anything that is not a
:class:`~mesh.core._errors.MeshError` is a bug: 500, type ``InternalError``.
Errors FastAPI raises by itself (unknown route 404, wrong method 405, a body
that does not validate 422) get the same shape, typed as the request errors of
the tree.

Servers built on FastAPI call :func:`install_error_handlers`; raw ASGI servers
(the replica, the gateway's inference fast path) send
:func:`error_status`, :func:`error_headers` and :func:`error_body` (or use
:func:`mesh.core._http_server.respond_error`).

Example:
    >>> from mesh.core._errors import NotFoundError
    >>> error_status(NotFoundError("no route GET /x"))
    404
    >>> error_document(NotFoundError("no route GET /x"))
    {'error': 'no route GET /x', 'type': 'NotFoundError', 'status': 404}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mesh.core._errors import (
    InvalidRequestError,
    MeshError,
    MethodNotAllowedError,
    NotFoundError,
    RequestError,
    RequestTimeoutError,
    RequestTooLargeError,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "INTERNAL_ERROR",
    "error_body",
    "error_document",
    "error_headers",
    "error_status",
    "install_error_handlers",
]

logger = logging.getLogger(__name__)

#: The ``type`` of an error that is not a :class:`MeshError` (a bug).
INTERNAL_ERROR = "InternalError"

#: FastAPI's own HTTP errors, named as the request errors of the tree.
_REQUEST_ERRORS: dict[int, str] = {
    cls.http_status: cls.__name__
    for cls in (
        RequestError,
        NotFoundError,
        MethodNotAllowedError,
        RequestTimeoutError,
        RequestTooLargeError,
        InvalidRequestError,
    )
}


def error_status(exc: BaseException) -> int:
    """The HTTP status of an exception: its class's ``http_status``, 500 for non-mesh ones."""
    return exc.http_status if isinstance(exc, MeshError) else 500


def error_document(exc: BaseException) -> dict[str, Any]:
    """The JSON error document: ``{"error": message, "type": class name, "status": status}``."""
    if isinstance(exc, MeshError):
        return _document(str(exc) or type(exc).__name__, type(exc).__name__, exc.http_status)
    return _document(f"{type(exc).__name__}: {exc}", INTERNAL_ERROR, 500)


def error_body(exc: BaseException) -> bytes:
    """:func:`error_document` as compact JSON bytes (for raw ASGI servers)."""
    return json.dumps(error_document(exc), separators=(",", ":")).encode()


def error_headers(exc: BaseException) -> list[tuple[bytes, bytes]]:
    """Headers that go with the error: a ``WWW-Authenticate`` challenge for auth errors."""
    challenge = exc.challenge if isinstance(exc, MeshError) else None
    return [(b"www-authenticate", challenge.encode())] if challenge else []


def _document(message: str, kind: str, status: int) -> dict[str, Any]:
    return {"error": message, "type": kind, "status": status}


def _validation_message(errors: Sequence[Any]) -> str:
    """``body.model: Field required; query.limit: ...`` from FastAPI's validation errors."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "the request does not validate"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with :func:`error_status` and the one JSON body.

    Covers :class:`MeshError` raised by routes and dependencies, FastAPI's own
    HTTP errors (unknown route, method) and request validation errors, and any
    other exception (500; the server logs its traceback).
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    def respond(document: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
        return JSONResponse(document, status_code=document["status"], headers=headers)

    async def on_mesh_error(request: Request, exc: Exception) -> Response:
        status = error_status(exc)
        if status >= 500:
            logger.warning("%s %s failed: %s", request.method, request.url.path, exc)
        headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
        return respond(error_document(exc), headers or None)

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _REQUEST_ERRORS.get(exc.status_code, "HTTPError")
        return respond(_document(str(exc.detail), kind, exc.status_code), exc.headers)

    async def on_invalid_request(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message = _validation_message(exc.errors())
        return respond(_document(message, InvalidRequestError.__name__, 422))

    async def on_bug(_request: Request, exc: Exception) -> Response:
        # Starlette re-raises it after this answer, so the server logs the traceback.
        return respond(error_document(exc))

    app.add_exception_handler(MeshError, on_mesh_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(Exception, on_bug)
