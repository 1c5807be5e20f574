"""Pure-Python Ed25519 verification against signatures made by ``cryptography``."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent._ed25519 import verify


def _keypair() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, pub


@pytest.mark.parametrize("size", [0, 1, 32, 1000, 100_000])
def test_verifies_cryptography_signatures(size: int) -> None:
    key, pub = _keypair()
    msg = os.urandom(size)
    assert verify(pub, msg, key.sign(msg))


def test_many_random_keys() -> None:
    for _ in range(10):
        key, pub = _keypair()
        msg = os.urandom(40)
        assert verify(pub, msg, key.sign(msg))


def test_rfc8032_test_vector_1() -> None:
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert verify(pub, b"", sig)


def test_rejects_tampering() -> None:
    key, pub = _keypair()
    msg = b"fogmesh-artifact:v1\ncounter\n1\n" + b"a" * 64
    sig = key.sign(msg)
    assert not verify(pub, msg + b"x", sig)
    for i in (0, 31, 32, 63):
        bad = bytearray(sig)
        bad[i] ^= 1
        assert not verify(pub, msg, bytes(bad))
    _, other = _keypair()
    assert not verify(other, msg, sig)


def test_rejects_malformed_inputs() -> None:
    key, pub = _keypair()
    sig = key.sign(b"m")
    assert not verify(pub[:31], b"m", sig)
    assert not verify(pub, b"m", sig[:63])
    assert not verify(b"\xff" * 32, b"m", sig)  # not a point
    # Non-canonical S (S + L) must be refused even though it is the same scalar mod L.
    s = int.from_bytes(sig[32:], "little") + 2**252 + 27742317777372353535851937790883648493
    if s < 2**256:
        assert not verify(pub, b"m", sig[:32] + s.to_bytes(32, "little"))


def test_rejects_small_order_keys_and_points() -> None:
    # The all-zero key decodes to a point of order 4: with R = that point and S = 0
    # cofactorless verification would accept some messages for anyone.
    zero = bytes(32)
    assert not any(verify(zero, b"msg-%d" % i, bytes(64)) for i in range(16))
    identity = (1).to_bytes(32, "little")
    assert not any(verify(identity, b"msg-%d" % i, identity + bytes(32)) for i in range(16))
