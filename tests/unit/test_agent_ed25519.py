"""Ed25519 verification: the native (OpenSSL) and pure-Python verifiers on the same cases."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import _ed25519
from edge_agent._ed25519 import native_available, verify, verify_native, verify_pure

VERIFIERS: dict[str, Callable[[bytes, bytes, bytes], bool]] = {
    "pure": verify_pure,
    "native": verify_native,
}
L = 2**252 + 27742317777372353535851937790883648493

# RFC 8032 section 7.1: (public key, message, signature); TEST 1024 is left out for length.
RFC8032 = {
    "test1": (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    "test2": (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    "test3": (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    "test_sha_abc": (
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
}


def _flip(raw: bytes, index: int) -> bytes:
    out = bytearray(raw)
    out[index] ^= 1
    return bytes(out)


def _cases() -> list[tuple[str, bytes, bytes, bytes, bool]]:
    cases: list[tuple[str, bytes, bytes, bytes, bool]] = []
    others = list(RFC8032.values())
    for i, (name, (pub_hex, msg_hex, sig_hex)) in enumerate(RFC8032.items()):
        pub, msg, sig = bytes.fromhex(pub_hex), bytes.fromhex(msg_hex), bytes.fromhex(sig_hex)
        other_pub = bytes.fromhex(others[(i + 1) % len(others)][0])
        s_plus_l = (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
        cases += [
            (f"{name}-valid", pub, msg, sig, True),
            (f"{name}-message+byte", pub, msg + b"x", sig, False),
            (f"{name}-R-bit", pub, msg, _flip(sig, 0), False),
            (f"{name}-R-last-byte", pub, msg, _flip(sig, 31), False),
            (f"{name}-S-bit", pub, msg, _flip(sig, 32), False),
            (f"{name}-S-last-byte", pub, msg, _flip(sig, 63), False),
            (f"{name}-key-bit", _flip(pub, 0), msg, sig, False),
            (f"{name}-other-key", other_pub, msg, sig, False),
            # The same scalar mod L, non-canonical: RFC 8032 says refuse.
            (f"{name}-S+L", pub, msg, sig[:32] + s_plus_l, False),
            (f"{name}-short-key", pub[:31], msg, sig, False),
            (f"{name}-short-signature", pub, msg, sig[:63], False),
        ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize(
    ("pub", "msg", "sig", "valid"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rfc8032_vectors_valid_and_tampered(
    verifier: str, pub: bytes, msg: bytes, sig: bytes, valid: bool
) -> None:
    assert VERIFIERS[verifier](pub, msg, sig) is valid


def _keypair() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, pub


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize("size", [0, 1, 32, 1000, 100_000])
def test_verifies_cryptography_signatures(verifier: str, size: int) -> None:
    key, pub = _keypair()
    msg = os.urandom(size)
    assert VERIFIERS[verifier](pub, msg, key.sign(msg))
    assert not VERIFIERS[verifier](pub, msg + b"x", key.sign(msg))


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_rejects_points_off_the_curve_and_of_small_order(verifier: str) -> None:
    check = VERIFIERS[verifier]
    key, _ = _keypair()
    assert not check(b"\xff" * 32, b"m", key.sign(b"m"))  # not a point
    # The all-zero key decodes to a point of order 4: with R = that point and S = 0
    # cofactorless verification (OpenSSL's) accepts some messages for anyone.
    zero = bytes(32)
    assert not any(check(zero, b"msg-%d" % i, bytes(64)) for i in range(16))
    identity = (1).to_bytes(32, "little")
    assert not any(check(identity, b"msg-%d" % i, identity + bytes(32)) for i in range(16))


def _small_order_encodings() -> set[bytes]:
    # The eight multiples of a point of order 8, each with either sign of x.
    p = _ed25519._P
    torsion = _ed25519._decompress(_ed25519._Y8.to_bytes(32, "little"))
    assert torsion is not None
    found: set[bytes] = set()
    point = _ed25519._IDENTITY
    for _ in range(8):
        point = _ed25519._add(point, torsion)
        z_inv = pow(point[2], p - 2, p)
        y = point[1] * z_inv % p
        found |= {y.to_bytes(32, "little"), (y | 1 << 255).to_bytes(32, "little")}
    return found


def test_small_order_list_is_the_eight_torsion_points() -> None:
    encodings = _small_order_encodings()
    ys = {int.from_bytes(e, "little") & ((1 << 255) - 1) for e in encodings}
    assert ys == _ed25519._SMALL_ORDER_Y
    for e in encodings:
        point = _ed25519._decompress(e)
        if point is not None:  # x = 0 with the sign bit set is not a valid encoding
            eight = _ed25519._mul(8, point)
            assert _ed25519._equal(eight, _ed25519._IDENTITY)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_rejects_every_small_order_and_non_canonical_encoding(verifier: str) -> None:
    check = VERIFIERS[verifier]
    key, pub = _keypair()
    sig = key.sign(b"m")
    p = _ed25519._P
    # y + p for y = 0 and 1: small-order points again, encoded non-canonically.
    non_canonical = [(p + k).to_bytes(32, "little") for k in (0, 1)]
    for bad in [*_small_order_encodings(), *non_canonical]:
        assert not check(bad, b"m", sig)
        assert not check(pub, b"m", bad + sig[32:])
        assert not check(bad, b"m", bad + bytes(32))
    assert check(pub, b"m", sig)


def test_verify_uses_openssl_when_cryptography_is_importable() -> None:
    assert native_available()
    pub, msg, sig = (bytes.fromhex(h) for h in RFC8032["test1"])
    assert verify(pub, msg, sig) and not verify(pub, msg + b"x", sig)


def test_without_cryptography_verify_falls_back_to_pure_python() -> None:
    pub, msg, sig = RFC8032["test2"]
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None  # as if only the edge extra were installed\n"
        "from edge_agent import _ed25519 as e\n"
        f"args = bytes.fromhex({pub!r}), bytes.fromhex({msg!r}), bytes.fromhex({sig!r})\n"
        "assert not e.native_available()\n"
        "assert e.verify(*args) and not e.verify(args[0], b'x', args[2])\n"
        "try:\n"
        "    e.verify_native(*args)\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "verify_native needs the cryptography package" in out.stdout
