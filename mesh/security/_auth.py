"""Bearer tokens: signed, with scopes and an expiry.

A token is ``mesh_<payload>.<signature>``: the payload is base64url JSON
(subject, scopes, issued-at, expiry, id) and the signature an HMAC-SHA256 of
it under the control plane's secret (``keys/token-secret`` under the data dir,
mode 0600).

Limits: a token lives at most ``max_ttl_s`` (:data:`DEFAULT_MAX_TTL_S`, 30 days;
``MESH_TOKEN_MAX_TTL_S``): :meth:`TokenSigner.issue` refuses a longer, a
non-positive or a non-finite lifetime, and :meth:`TokenSigner.verify` refuses a
token whose lifetime is longer (one minted before the limit, or with a NaN
expiry, which never compares as past).

Revocation of one token is by its id (a deny list: :mod:`mesh.security._revocations`);
of all of them by rotating the key (:func:`rotate_key`, ``mesh tokens rotate-key``):
the new secret replaces the file, and the old one is kept beside it
(``token-secret.previous``) for a grace period the operator chooses (default
none), during which tokens it signed still verify. A signer from
:meth:`TokenSigner.load_or_create` notices a rotation by itself (one ``stat`` of
the key file at most once a second), so a running control plane needs no restart.

Scopes are ordered: ``admin`` implies ``invoke``, which implies ``read``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent._files import atomic_write
from mesh.core._errors import MeshError

__all__ = [
    "DEFAULT_MAX_TTL_S",
    "SCOPES",
    "AuthError",
    "ForbiddenError",
    "TokenClaims",
    "TokenSigner",
    "rotate_key",
]

#: Scopes from weakest to strongest; each implies the ones before it.
SCOPES: tuple[str, ...] = ("read", "invoke", "admin")
_PREFIX = "mesh_"
SECRET_FILE = "token-secret"
PREVIOUS_FILE = "token-secret.previous"
#: The longest a token may live unless the settings say otherwise: 30 days.
DEFAULT_MAX_TTL_S = 30 * 86400.0
_RELOAD_CHECK_S = 1.0  # at most one stat of the key file per second


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


def _check_secret(secret: bytes) -> bytes:
    if len(secret) < 32:
        raise ValueError("the token secret must be at least 32 bytes")
    return secret


def _read_previous(keys: Path, now: float) -> bytes | None:
    """The rotated-out secret, while its grace period lasts."""
    try:
        data = json.loads((keys / PREVIOUS_FILE).read_text())
        if float(data["until"]) > now:
            return _check_secret(bytes.fromhex(str(data["secret"])))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def rotate_key(data_dir: Path, *, grace_s: float = 0.0, now: float | None = None) -> Path:
    """Replace the token secret; tokens it signed keep working for ``grace_s`` seconds.

    Running control planes pick the new secret up within a second, no restart.

    Returns:
        The key file.

    Raises:
        ValueError: ``grace_s`` negative or not finite.
    """
    if not (math.isfinite(grace_s) and grace_s >= 0):
        raise ValueError(f"grace_s must be a finite number of seconds >= 0, got {grace_s}")
    keys = data_dir / "keys"
    path = keys / SECRET_FILE
    now = time.time() if now is None else now
    if path.is_file() and grace_s > 0:
        previous = {"secret": path.read_bytes().hex(), "until": now + grace_s}
        atomic_write(keys / PREVIOUS_FILE, json.dumps(previous).encode(), mode=0o600)
    else:
        (keys / PREVIOUS_FILE).unlink(missing_ok=True)
    atomic_write(path, secrets.token_bytes(32), mode=0o600)
    return path


class TokenSigner:
    """Issues and verifies tokens with one secret (and a rotated-out one, for a grace).

    Args:
        secret: at least 32 bytes.
        max_ttl_s: the longest lifetime :meth:`issue` grants and :meth:`verify` accepts.
        previous: a rotated-out secret whose tokens still verify (its grace lasts).

    Example:
        >>> signer = TokenSigner(b"k" * 32)
        >>> token = signer.issue("ci", ["invoke"], ttl_s=60, now=1000.0)
        >>> signer.verify(token, now=1001.0).allows("read")
        True
    """

    def __init__(
        self,
        secret: bytes,
        *,
        max_ttl_s: float = DEFAULT_MAX_TTL_S,
        previous: bytes | None = None,
    ) -> None:
        """Use ``secret`` to sign and verify."""
        if not (math.isfinite(max_ttl_s) and max_ttl_s > 0):
            raise ValueError(f"max_ttl_s must be a finite number of seconds > 0, got {max_ttl_s}")
        self._secret = _check_secret(secret)
        self._previous = _check_secret(previous) if previous is not None else None
        self.max_ttl_s = max_ttl_s
        self._keys: Path | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        #: Bumped whenever the secret changes (caches of verified tokens start over).
        self.generation = 0

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    @classmethod
    def load_or_create(cls, data_dir: Path, *, max_ttl_s: float = DEFAULT_MAX_TTL_S) -> TokenSigner:
        """The signer whose secret lives in ``data_dir/keys/token-secret`` (created 0600).

        It re-reads the file when it changes (:func:`rotate_key`), looking at most
        once a second.
        """
        path = data_dir / "keys" / SECRET_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(secrets.token_bytes(32))
        signer = cls(
            path.read_bytes(),
            max_ttl_s=max_ttl_s,
            previous=_read_previous(path.parent, time.time()),
        )
        signer._keys = path.parent
        signer._stamp = _stamp(path)
        signer._checked = time.monotonic()
        return signer

    def refresh(self) -> None:
        """Re-read the key file if it changed (at most one ``stat`` a second)."""
        keys = self._keys
        if keys is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._checked < _RELOAD_CHECK_S:
                return
            self._checked = now
            path = keys / SECRET_FILE
            stamp = _stamp(path)
            previous = _read_previous(keys, time.time())
            if stamp == self._stamp and previous == self._previous:
                return
            try:
                secret = _check_secret(path.read_bytes())
            except (OSError, ValueError):
                return  # keep the secret we have; the file is being replaced
            self._secret, self._previous, self._stamp = secret, previous, stamp
            self.generation += 1

    def issue(
        self, subject: str, scopes: list[str] | tuple[str, ...], *, ttl_s: float, now: float
    ) -> str:
        """A token for ``subject`` with ``scopes``, valid for ``ttl_s`` seconds from ``now``.

        Raises:
            ValueError: an unknown scope, or ``ttl_s`` not in ``(0, max_ttl_s]``
                (NaN and infinity included).
        """
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {', '.join(SCOPES)}, got {list(scopes)}")
        if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be a finite number of seconds > 0, got {ttl_s}")
        if ttl_s > self.max_ttl_s:
            raise ValueError(
                f"ttl_s {ttl_s:.0f} s is over the maximum token lifetime of "
                f"{self.max_ttl_s:.0f} s ({self.max_ttl_s / 86400:g} days; MESH_TOKEN_MAX_TTL_S)"
            )
        claims = {
            "sub": subject,
            "scp": list(scopes),
            "iat": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(8),
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{_PREFIX}{payload}.{self._sign(payload)}"

    def _sign(self, payload: str, secret: bytes | None = None) -> str:
        key = self._secret if secret is None else secret
        return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())

    def _genuine(self, payload: str, signature: str) -> bool:
        if hmac.compare_digest(signature, self._sign(payload)):
            return True
        previous = self._previous
        return previous is not None and hmac.compare_digest(
            signature, self._sign(payload, previous)
        )

    def verify(self, token: str, *, now: float) -> TokenClaims:
        """The claims of a genuine, unexpired token.

        Raises:
            AuthError: malformed, forged (or signed by a rotated-out key past its
                grace), expired, or living longer than ``max_ttl_s``.
        """
        self.refresh()
        if not token.startswith(_PREFIX) or token.count(".") != 1:
            raise AuthError("malformed token: expected 'mesh_<payload>.<signature>'")
        payload, signature = token[len(_PREFIX) :].split(".")
        if not self._genuine(payload, signature):
            raise AuthError("invalid token signature (forged, or its key was rotated)")
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
        lifetime = parsed.expires_at - parsed.issued_at
        # 1 s of slack: exp - iat is rounded in float arithmetic.
        if not (math.isfinite(lifetime) and 0 < lifetime <= self.max_ttl_s + 1.0):
            raise AuthError(
                f"token {parsed.token_id} of {parsed.subject!r} lives {lifetime:.0f} s, over "
                f"the maximum of {self.max_ttl_s:.0f} s: make a new one"
            )
        if not now < parsed.expires_at:
            raise AuthError(f"token {parsed.token_id} of {parsed.subject!r} has expired")
        return parsed


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
