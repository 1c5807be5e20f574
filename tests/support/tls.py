"""A test CA and server certificates, made at test time (no key ever lives in the repo).

:func:`make_test_pki` writes, under one directory:

* ``ca.pem``: a CA (the one clients are given),
* ``server.pem``/``server.key``: a server certificate from that CA for
  ``127.0.0.1``, ``localhost`` and any ``addresses`` given (subject alternative
  names, e.g. a test-bed host's address), valid now,
* ``expired.pem``/``expired.key``: the same names from the same CA, expired a day ago,
* ``other-ca.pem`` and ``other.pem``/``other.key``: another CA and a server
  certificate from it (a client given ``ca.pem`` must refuse it).

Use with :class:`mesh.edge.broker._mosquitto.MosquittoTls` via :meth:`TestPki.listener`.

Example::

    pki = make_test_pki(tmp_path / "pki")
    broker = start_mosquitto(tls=pki.listener())         # mqtts://127.0.0.1:PORT
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.edge.broker._mosquitto import MosquittoTls

__all__ = ["TestPki", "make_test_pki"]

_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class TestPki:
    """Paths of the files :func:`make_test_pki` wrote."""

    __test__ = False  # not a pytest class

    ca: Path
    server_cert: Path
    server_key: Path
    expired_cert: Path
    expired_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path

    def listener(self, which: str = "server") -> MosquittoTls:
        """Mosquitto's TLS files serving ``which`` certificate: server, expired or other."""
        cert, key = {
            "server": (self.server_cert, self.server_key),
            "expired": (self.expired_cert, self.expired_key),
            "other": (self.other_cert, self.other_key),
        }[which]
        return MosquittoTls(ca_file=self.ca, cert_file=cert, key_file=key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str, now: dt.datetime) -> tuple[_Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server(
    ca_key: _Key,
    ca_cert: x509.Certificate,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    addresses: Sequence[str] = (),
) -> tuple[_Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", *addresses)]
    san = x509.SubjectAlternativeName([*ips, x509.DNSName("localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fogmesh test broker"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, cert: x509.Certificate, key: _Key | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def make_test_pki(directory: Path, *, addresses: Sequence[str] = ()) -> TestPki:
    """Write a test CA, a valid, an expired and a foreign server certificate (see module doc).

    Args:
        directory: where the files go (made if missing).
        addresses: IP addresses the server certificates name besides 127.0.0.1.

    Raises:
        ValueError: an address is not an IP address.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _ca("fogmesh test CA", now)
    other_ca_key, other_ca_cert = _ca("another test CA", now)
    begins, ends = now - dt.timedelta(days=1), now + dt.timedelta(days=7)
    server_key, server_cert = _server(
        ca_key, ca_cert, not_before=begins, not_after=ends, addresses=addresses
    )
    expired_key, expired_cert = _server(
        ca_key,
        ca_cert,
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
        addresses=addresses,
    )
    other_key, other_cert = _server(
        other_ca_key, other_ca_cert, not_before=begins, not_after=ends, addresses=addresses
    )
    _write(directory / "ca.pem", ca_cert)
    _write(directory / "other-ca.pem", other_ca_cert)
    _write(directory / "server.pem", server_cert, server_key)
    _write(directory / "expired.pem", expired_cert, expired_key)
    _write(directory / "other.pem", other_cert, other_key)
    return TestPki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        expired_cert=directory / "expired.pem",
        expired_key=directory / "expired.key",
        other_ca=directory / "other-ca.pem",
        other_cert=directory / "other.pem",
        other_key=directory / "other.key",
    )
