"""Bearer tokens: signed, with scopes and an expiry.

A token is ``mesh_<payload>.<signature>``: the payload is base64url JSON
(subject, scopes, issued-at, expiry, id) and the signature an HMAC-SHA256 of
it under the control plane's secret (kept under the data dir, mode 0600).
Verification needs no database; revocation is by rotating the secret.

Scopes are ordered: ``admin`` implies ``invoke``, which implies ``read``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from mesh.core._errors import MeshError

__all__ = [
    "SCOPES",
    "AuthError",
    "ForbiddenError",
    "TokenClaims",
    "TokenSigner",
]

#: Scopes from weakest to strongest; each implies the ones before it.
SCOPES: tuple[str, ...] = ("read", "invoke", "admin")
_PREFIX = "mesh_"
SECRET_FILE = "token-secret"


class AuthError(MeshError):
    """A token is missing, malformed, forged or expired (HTTP 401)."""

    http_status = 401
    challenge = 'Bearer realm="fogmesh"'


class ForbiddenError(MeshError):
    """A valid token lacks the scope a call needs (HTTP 403)."""

    http_status = 403

    def __init__(self, subject: str, needed: str, granted: tuple[str, ...]) -> None:
        self.subject = subject
        self.needed = needed
        self.granted = granted
        super().__init__(
            f"token of {subject!r} has scopes {', '.join(granted) or 'none'}; "
            f"this call needs {needed!r}"
        )


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    subject: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    token_id: str

    def allows(self, scope: str) -> bool:
        """Whether the token grants ``scope`` (directly or through a stronger scope)."""
        rank = SCOPES.index(scope)
        return any(SCOPES.index(s) >= rank for s in self.scopes if s in SCOPES)

    def require(self, scope: str) -> None:
        """Raise :class:`ForbiddenError` unless the token grants ``scope``."""
        if not self.allows(scope):
            raise ForbiddenError(self.subject, scope, self.scopes)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies tokens with one secret.

    Example:
        >>> signer = TokenSigner(b"k" * 32)
        >>> token = signer.issue("ci", ["invoke"], ttl_s=60, now=1000.0)
        >>> signer.verify(token, now=1001.0).allows("read")
        True
    """

    def __init__(self, secret: bytes) -> None:
        """Use ``secret`` (at least 32 bytes) to sign and verify."""
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TokenSigner:
        """The signer whose secret lives in ``data_dir/keys/token-secret`` (created 0600)."""
        path = data_dir / "keys" / SECRET_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def issue(
        self, subject: str, scopes: list[str] | tuple[str, ...], *, ttl_s: float, now: float
    ) -> str:
        """A token for ``subject`` with ``scopes``, valid for ``ttl_s`` seconds from ``now``.

        Raises:
            ValueError: an unknown scope or a non-positive ``ttl_s``.
        """
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}, got {list(scopes)}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        claims = {
            "sub": subject,
            "scp": list(scopes),
            "iat": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(8),
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{_PREFIX}{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def verify(self, token: str, *, now: float) -> TokenClaims:
        """The claims of a genuine, unexpired token.

        Raises:
            AuthError: malformed, forged or expired (the message says which).
        """
        if not token.startswith(_PREFIX) or token.count(".") != 1:
            raise AuthError("malformed token: expected 'mesh_<payload>.<signature>'")
        payload, signature = token[len(_PREFIX) :].split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise AuthError("invalid token signature")
        try:
            claims = json.loads(_unb64(payload))
            parsed = TokenClaims(
                subject=str(claims["sub"]),
                scopes=tuple(claims["scp"]),
                issued_at=float(claims["iat"]),
                expires_at=float(claims["exp"]),
                token_id=str(claims["jti"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"malformed token payload: {exc}") from exc
        if now >= parsed.expires_at:
            raise AuthError(f"token {parsed.token_id} of {parsed.subject!r} has expired")
        return parsed
