"""Checks that an HTTP answer is the mesh's one JSON error body (:mod:`mesh.core._http_errors`)."""

from __future__ import annotations

from typing import Any

import httpx


def assert_error(
    response: httpx.Response, status: int, kind: str | None = None, needle: str = ""
) -> dict[str, Any]:
    """Assert ``response`` is ``{"error": message, "type": kind, "status": status}``.

    Args:
        response: the answer (httpx, or FastAPI's TestClient, which is httpx).
        status: the HTTP status it must have (in the status line and the body).
        kind: the ``type`` it must name (a class of the error tree), if given.
        needle: text the message must hold.

    Returns:
        The error document.
    """
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    doc = response.json()
    assert isinstance(doc, dict) and set(doc) == {"error", "type", "status"}, doc
    assert isinstance(doc["error"], str) and doc["error"], doc
    assert doc["status"] == status, doc
    if kind is not None:
        assert doc["type"] == kind, doc
    assert needle in doc["error"], doc
    return doc
