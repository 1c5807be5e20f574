"""The bearer-token check where requests arrive: the gateway's and the REST API's.

:class:`TokenAuth` reads ``Authorization: Bearer <token>``, verifies it with a
:class:`~mesh.security._auth.TokenSigner` (verified tokens are cached, each still
checked for expiry and against the deny list of revoked ids,
:class:`~mesh.security._revocations.TokenRevocations`; the cache starts over when
the signer's key is rotated) and requires a scope; a FastAPI dependency wraps it
for ``/v1`` routes.

Example:
    >>> import time
    >>> signer = TokenSigner(b"k" * 32)
    >>> auth = TokenAuth(signer)
    >>> token = signer.issue("ci", ["invoke"], ttl_s=60, now=time.time())
    >>> auth.check(f"Bearer {token}", "read").subject
    'ci'
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import Request

from mesh.security._auth import AuthError, TokenClaims, TokenSigner
from mesh.security._revocations import TokenRevocations

__all__ = ["TokenAuth"]

#: Tokens are a few hundred characters; longer headers are refused unread.
_MAX_HEADER_CHARS = 8192


class TokenAuth:
    """Bearer-token checks for ``/v1`` and ``/v2``, with verified tokens cached.

    Args:
        signer: verifies tokens; None turns auth off (every call is let through).
        clock: Unix seconds (injected in tests).
        cache_size: verified tokens remembered (each still checked for expiry).
        revocations: the deny list of revoked token ids; None: none is revoked.
    """

    def __init__(
        self,
        signer: TokenSigner | None,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 4096,
        revocations: TokenRevocations | None = None,
    ) -> None:
        """Check tokens with ``signer``."""
        self.signer = signer
        self.revocations = revocations
        self._clock = clock
        self._cache: dict[str, TokenClaims] = {}
        self._cache_size = cache_size
        self._generation = signer.generation if signer is not None else 0

    @property
    def enabled(self) -> bool:
        """Whether tokens are checked."""
        return self.signer is not None

    def check(self, authorization: str | bytes | None, scope: str) -> TokenClaims | None:
        """The claims of the request's token, which must grant ``scope``.

        Returns None when auth is off.

        Raises:
            AuthError: no token, not an ASCII bearer token, forged, expired, revoked, or
                signed by a rotated-out key (401).
            ForbiddenError: the token lacks ``scope`` (403).
        """
        if self.signer is None:
            return None
        if not authorization:
            raise AuthError(
                "missing Authorization: Bearer <token> (make one with "
                "`mesh tokens create NAME --scope invoke`)"
            )
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        if not authorization.isascii() or len(authorization) > _MAX_HEADER_CHARS:
            raise AuthError("the Authorization header must be 'Bearer <token>' in ASCII")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        now = self._clock()
        self.signer.refresh()
        if self.signer.generation != self._generation:
            # The key was rotated: what the old one verified must be verified again.
            self._cache.clear()
            self._generation = self.signer.generation
        claims = self._cache.get(token)
        if claims is None:
            claims = self.signer.verify(token, now=now)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[token] = claims
        elif not now < claims.expires_at:
            self._cache.pop(token, None)
            raise AuthError(f"token {claims.token_id} of {claims.subject!r} has expired")
        if self.revocations is not None and self.revocations.is_revoked(claims.token_id):
            raise AuthError(f"token {claims.token_id} of {claims.subject!r} has been revoked")
        claims.require(scope)
        return claims

    def dependency(self, scope: str) -> Callable[[Request], TokenClaims | None]:
        """A FastAPI dependency requiring ``scope``."""

        def require(request: Request) -> TokenClaims | None:
            return self.check(request.headers.get("authorization"), scope)

        require.__name__ = f"require_{scope}"
        return require
