"""Model artifacts: a content-addressed file store and the control plane's signing key.

Artifacts (ONNX files) are stored once under their sha256 (``<data>/artifacts/<sha256>``),
written atomically (temp file, fsync, rename), so a reader never sees half a file.
The control plane signs artifacts with an Ed25519 key kept under the data dir
(``<data>/keys/artifact-signing.pem``, mode 0600); agents receive the public key
at enrolment and verify every download before loading it.

What is signed for a module artifact is the contract's
:func:`edge_agent.protocol.artifact_signing_message` (module name, version and
sha256), so a valid artifact cannot be replayed as another module or version;
:meth:`ArtifactSigner.sign_bytes` signs raw bytes for other uses.

Example:
    >>> store = ArtifactStore(Path("/tmp/m/artifacts"))            # doctest: +SKIP
    >>> info = store.put_bytes(onnx_bytes)                           # doctest: +SKIP
    >>> signer = ArtifactSigner.load_or_create(Path("/tmp/m"))        # doctest: +SKIP
    >>> signature = signer.sign_module("counter", "1", info.sha256)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent._files import atomic_write, confined, fsync_dir
from edge_agent.protocol import artifact_signing_message
from mesh.core._errors import MeshError

__all__ = [
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactSigner",
    "ArtifactStore",
    "InvalidSignatureError",
    "is_sha256",
    "sha256_file",
    "verify_signature",
]

logger = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
SIGNING_KEY_FILE = "artifact-signing.pem"
PUBLIC_KEY_FILE = "artifact-signing.pub.pem"


class ArtifactError(MeshError):
    """An artifact could not be stored, found, signed or verified."""


class ArtifactNotFoundError(ArtifactError, LookupError):
    """No artifact with that sha256 is stored (HTTP 404)."""

    http_status = 404

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        super().__init__(f"no artifact with sha256 {sha256}")


class InvalidSignatureError(ArtifactError, ValueError):
    """A signature does not match the data and public key."""


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a lowercase hex sha256 digest."""
    return bool(_SHA256_RE.match(value))


def sha256_file(path: Path) -> str:
    """Return the lowercase hex sha256 of a file, reading it in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """A stored artifact.

    Attributes:
        sha256: lowercase hex digest; also the file name.
        size: bytes.
        path: where it lies.
    """

    sha256: str
    size: int
    path: Path


class ArtifactStore:
    """Content-addressed artifact files under one directory.

    Example:
        >>> store = ArtifactStore(tmp_path / "artifacts")   # doctest: +SKIP
        >>> info = store.put_bytes(b"onnx...")              # doctest: +SKIP
        >>> store.path(info.sha256).read_bytes()            # doctest: +SKIP
        b'onnx...'
    """

    def __init__(self, root: Path) -> None:
        """Use ``root`` (created on first write) as the store directory."""
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ArtifactStore(root={str(self.root)!r})"

    def _file(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            # Also what keeps a crafted name from escaping the store directory.
            raise ArtifactNotFoundError(sha256)
        try:
            return confined(self.root, sha256, what="artifact id")
        except ValueError:  # a link in the store pointing out of it: not ours to serve
            raise ArtifactNotFoundError(sha256) from None

    def has(self, sha256: str) -> bool:
        """Whether an artifact with this digest is stored."""
        try:
            return self._file(sha256).is_file()
        except ArtifactNotFoundError:
            return False

    def path(self, sha256: str) -> Path:
        """The file of a stored artifact.

        Raises:
            ArtifactNotFoundError: unknown or malformed digest.
        """
        file = self._file(sha256)
        if not file.is_file():
            raise ArtifactNotFoundError(sha256)
        return file

    def info(self, sha256: str) -> ArtifactInfo:
        """Describe a stored artifact (raises :class:`ArtifactNotFoundError`)."""
        file = self.path(sha256)
        return ArtifactInfo(sha256=sha256, size=file.stat().st_size, path=file)

    def read_bytes(self, sha256: str) -> bytes:
        """Return a stored artifact's content."""
        return self.path(sha256).read_bytes()

    def put_bytes(self, data: bytes) -> ArtifactInfo:
        """Store ``data`` under its sha256 (a no-op when already stored)."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self._file(sha256)
        if not target.is_file():
            atomic_write(target, data)
            logger.info("stored artifact %s (%d bytes)", sha256, len(data))
        return ArtifactInfo(sha256=sha256, size=len(data), path=target)

    def put_file(self, source: Path) -> ArtifactInfo:
        """Copy a file into the store, hashing while copying (constant memory)."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out, Path(source).open("rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            target = self._file(sha256)
            if target.is_file():
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                fsync_dir(self.root)
                logger.info("stored artifact %s (%d bytes) from %s", sha256, size, source)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ArtifactInfo(sha256=sha256, size=size, path=target)

    def __iter__(self) -> Iterator[ArtifactInfo]:
        """Every stored artifact, in digest order."""
        if not self.root.is_dir():
            return
        for file in sorted(self.root.iterdir()):
            if file.is_file() and is_sha256(file.name):
                yield ArtifactInfo(sha256=file.name, size=file.stat().st_size, path=file)

    def delete(self, sha256: str) -> bool:
        """Remove an artifact; returns whether it existed."""
        try:
            self.path(sha256).unlink()
        except (ArtifactNotFoundError, FileNotFoundError):
            return False
        logger.info("deleted artifact %s", sha256)
        return True


class ArtifactSigner:
    """The control plane's Ed25519 artifact-signing key.

    Create with :meth:`load_or_create` (a key file under the data dir, 0600)
    or :meth:`generate` (in memory, for tests).

    Example:
        >>> signer = ArtifactSigner.generate()
        >>> sig = signer.sign_module("counter", "1", "0" * 64)
        >>> verify_signature(signer.public_key_b64(), sig,
        ...                  artifact_signing_message("counter", "1", "0" * 64))
    """

    __slots__ = ("_key",)

    def __init__(self, private_key: object) -> None:
        """Wrap a ``cryptography`` Ed25519 private key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if not isinstance(private_key, Ed25519PrivateKey):
            raise ArtifactError(f"not an Ed25519 private key: {type(private_key).__name__}")
        self._key: Ed25519PrivateKey = private_key

    def __repr__(self) -> str:
        return f"ArtifactSigner(public_key={self.public_key_b64()!r})"

    @classmethod
    def generate(cls) -> ArtifactSigner:
        """A fresh key held only in memory."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: Path) -> ArtifactSigner:
        """Load ``<data_dir>/keys/artifact-signing.pem``, creating it (0600) if missing.

        Also writes the public key beside it (``artifact-signing.pub.pem``).

        Raises:
            ArtifactError: the key file exists but is not a readable Ed25519 PEM key.
        """
        from cryptography.hazmat.primitives import serialization

        keys = Path(data_dir) / "keys"
        key_file = keys / SIGNING_KEY_FILE
        if key_file.is_file():
            try:
                key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise ArtifactError(f"cannot read the signing key {key_file}: {exc}") from exc
            signer = cls(key)
            if key_file.stat().st_mode & 0o077:
                logger.warning("signing key %s is readable by others; setting 0600", key_file)
                os.chmod(key_file, 0o600)
        else:
            keys.mkdir(parents=True, exist_ok=True)
            os.chmod(keys, 0o700)
            signer = cls.generate()
            pem = signer._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            atomic_write(key_file, pem, mode=0o600)
            logger.info(
                "created artifact signing key %s (public %s)", key_file, signer.public_key_b64()
            )
        pub_file = keys / PUBLIC_KEY_FILE
        pub_pem = signer.public_key_pem().encode()
        if not pub_file.is_file() or pub_file.read_bytes() != pub_pem:
            atomic_write(pub_file, pub_pem, mode=0o644)
        return signer

    def sign_bytes(self, data: bytes) -> str:
        """Sign raw bytes; returns the signature as standard base64."""
        return base64.b64encode(self._key.sign(data)).decode("ascii")

    def sign_module(self, name: str, version: str, sha256: str) -> str:
        """Sign one module artifact (see ``artifact_signing_message``); base64.

        Raises:
            ArtifactError: ``sha256`` is not a hex sha256 digest.
        """
        if not is_sha256(sha256.lower()):
            raise ArtifactError(f"module {name} {version}: not a hex sha256: {sha256!r}")
        return self.sign_bytes(artifact_signing_message(name, version, sha256))

    @property
    def key_id(self) -> str:
        """A short id of this key: the first 16 hex of the raw public key's sha256."""
        return hashlib.sha256(self.public_key_raw()).hexdigest()[:16]

    def public_key_raw(self) -> bytes:
        """The 32-byte raw public key."""
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def public_key_b64(self) -> str:
        """The raw public key as standard base64 (44 characters): what agents get."""
        return base64.b64encode(self.public_key_raw()).decode("ascii")

    def public_key_pem(self) -> str:
        """The public key as a SubjectPublicKeyInfo PEM."""
        from cryptography.hazmat.primitives import serialization

        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )


def verify_signature(public_key: str | bytes, signature_b64: str, message: bytes) -> None:
    """Check an Ed25519 signature (what an agent does; here for tests and tools).

    Args:
        public_key: raw 32 bytes, their base64, or a PEM.
        signature_b64: base64 signature.
        message: the signed bytes (for module artifacts, ``artifact_signing_message``).

    Raises:
        InvalidSignatureError: the signature does not verify.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        if isinstance(public_key, str) and public_key.lstrip().startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(public_key.encode())
        else:
            raw = public_key if isinstance(public_key, bytes) else base64.b64decode(public_key)
            key = Ed25519PublicKey.from_public_bytes(raw)
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidSignatureError("public key is not Ed25519")
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except InvalidSignature as exc:
        raise InvalidSignatureError("signature does not match the artifact") from exc
    except (ValueError, TypeError) as exc:
        raise InvalidSignatureError(f"malformed key or signature: {exc}") from exc
