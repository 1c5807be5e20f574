"""Ed25519 signature verification (RFC 8032, section 5.1.7) of artifact signatures.

:func:`verify` uses OpenSSL through ``cryptography`` when that is importable, and
otherwise a pure-Python version of the RFC's reference algorithm (extended twisted
Edwards coordinates, a few milliseconds per signature). The edge extra does not
depend on ``cryptography`` (about 18 MB installed with cffi, a fifth more than the
rest of the agent), and an agent verifies a few signatures per model install, so
the fallback is fast enough; a device or fog node that has ``cryptography`` gets the
native one. Verification only: agents never sign.

Both verifiers refuse the same inputs. Checked here before either runs: a key or
signature of the wrong length, a non-canonical ``S`` (S >= L, per RFC 8032), and, as
libsodium does and OpenSSL does not, a key or ``R`` of small order, which would let
a forged signature verify. Each verifier's decoding refuses a key or ``R`` that is
not a curve point or not canonically encoded (y >= p).

Example:
    >>> verify(bytes(32), b"msg", bytes(64))
    False
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["native_available", "verify", "verify_native", "verify_pure"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p: _Point) -> _Point:
    q = _IDENTITY
    while s > 0:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _equal(p: _Point, q: _Point) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(raw: bytes) -> _Point | None:
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
assert _GX is not None
_G: _Point = (_GX, _GY, 1, _GX * _GY % _P)


# The y-coordinates of the eight points of small order (an encoding is y and the
# sign of x); libsodium refuses the same points.
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y8, _P - _Y8})


def _refused(public_key: bytes, signature: bytes) -> bool:
    """Whether the key or signature is refused before any curve arithmetic."""
    if len(public_key) != 32 or len(signature) != 64:
        return True
    if int.from_bytes(signature[32:], "little") >= _L:
        return True
    for raw in (public_key, signature[:32]):
        y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
        if y in _SMALL_ORDER_Y:
            return True
    return False


def verify_pure(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check an Ed25519 ``signature`` of ``message`` under a 32-byte ``public_key``, in Python.

    Returns False (never raises) for any signature that does not verify or any
    input refused as the module docstring says.
    """
    if _refused(public_key, signature):
        return False
    a = _decompress(public_key)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    digest = hashlib.sha512(signature[:32] + public_key + message).digest()
    h = int.from_bytes(digest, "little") % _L
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


@functools.cache
def _openssl() -> type[Ed25519PublicKey] | None:
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return None
    return Ed25519PublicKey


def native_available() -> bool:
    """Whether ``cryptography`` is importable, so :func:`verify` uses OpenSSL."""
    return _openssl() is not None


def verify_native(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check an Ed25519 ``signature`` as :func:`verify_pure` does, with OpenSSL's arithmetic.

    Raises:
        ModuleNotFoundError: ``cryptography`` is not installed.
    """
    key_type = _openssl()
    if key_type is None:
        raise ModuleNotFoundError(
            "verify_native needs the cryptography package: pip install cryptography"
        )
    from cryptography.exceptions import InvalidSignature

    if _refused(public_key, signature):
        return False
    try:
        key_type.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check an Ed25519 ``signature`` of ``message`` under a 32-byte ``public_key``.

    OpenSSL's arithmetic when ``cryptography`` is importable, else pure Python;
    both return False (never raise) for the same inputs.

    Example:
        >>> verify(bytes(32), b"", bytes(64))
        False
    """
    if native_available():
        return verify_native(public_key, message, signature)
    return verify_pure(public_key, message, signature)
