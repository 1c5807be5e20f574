"""Replica keys: the credential the control plane issues to each replica it starts.

A replica's OIP server listens on its node's address, so it answers only callers
holding its key: the gateway's pooled connections and the control plane's
probes, which read it from the replica's
:class:`~mesh.serving._routes.ReplicaEndpoint`. The key is random (32 bytes),
new at every start of the replica's process, handed to the replica out of sight
of ``ps`` (a Ray actor's constructor argument, or the environment or stdin of
``python -m mesh.serving.replica._server``) and never logged. It travels as
``Authorization: Bearer <key>``; the replica compares the header's bytes in
constant time. Liveness and readiness (``/v2/health/live``, ``/v2/health/ready``)
stay open: they carry no data, and a load balancer or Ray may probe them.

Example:
    >>> key = new_replica_key()
    >>> check = ReplicaKeyCheck(key)
    >>> check.allows(authorization(key)), check.allows(b"Bearer nope"), check.allows(None)
    (True, False, False)
"""

from __future__ import annotations

import hmac
import secrets

from mesh.security._auth import AuthError

__all__ = [
    "OPEN_PATHS",
    "REPLICA_KEY_ENV",
    "ReplicaKeyCheck",
    "authorization",
    "new_replica_key",
]

#: The environment variable ``python -m mesh.serving.replica._server`` reads its key from.
REPLICA_KEY_ENV = "MESH_REPLICA_KEY"
#: Paths a replica answers without its key (no data: liveness and readiness).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
_KEY_BYTES = 32


def new_replica_key() -> str:
    """A fresh random key (32 bytes, URL-safe text of 43 characters)."""
    return secrets.token_urlsafe(_KEY_BYTES)


def authorization(key: str) -> bytes:
    """The ``Authorization`` header's value that carries ``key``."""
    return b"Bearer " + key.encode("ascii")


class ReplicaKeyCheck:
    """The replica's side: whether a request's ``Authorization`` header holds its key.

    Args:
        key: the key the control plane issued (at least 32 characters).

    Raises:
        ValueError: the key is too short to be one the control plane issued.
    """

    __slots__ = ("_expected",)

    def __init__(self, key: str) -> None:
        """Remember the header value that carries ``key``."""
        if len(key) < _KEY_BYTES:
            raise ValueError(f"a replica key has at least {_KEY_BYTES} characters")
        self._expected = authorization(key)

    def allows(self, value: bytes | None) -> bool:
        """Whether ``value`` (the ``Authorization`` header, if any) carries the key."""
        return value is not None and hmac.compare_digest(value, self._expected)

    def check(self, value: bytes | None) -> None:
        """Refuse a request whose ``Authorization`` header does not carry the key.

        Raises:
            AuthError: no header, or another key (HTTP 401).
        """
        if not self.allows(value):
            raise AuthError(
                "this replica answers only the gateway and the control plane: "
                "send its replica key as 'Authorization: Bearer <key>'"
            )
