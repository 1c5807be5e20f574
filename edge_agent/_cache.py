"""The on-disk module cache: verified downloads, atomic installs, state that survives restart.

Layout under ``cache_dir``::

    modules/<name>/<version>-<sha256[:16]>.onnx   installed artifacts
    tmp/                                            downloads in progress
    state.json                                      last applied desired state + installs

Every write is temp file + fsync + rename (+ fsync of the directory), so a
crash leaves the old file or the new one, never half of one
(:mod:`edge_agent._files`). A ``state.json`` damaged all the same (a failing
flash, a hand edit) is moved aside (:func:`~edge_agent._quarantine.quarantine`),
kept for inspection and reported; the agent starts without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _ed25519
from ._files import atomic_write, check_name, confined, fsync_dir
from ._quarantine import quarantine
from .protocol import (
    DesiredState,
    ErrorCode,
    ModuleSpec,
    ProtocolError,
    artifact_signing_message,
)

__all__ = ["ArtifactError", "CachedState", "Installed", "ModuleCache"]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class ArtifactError(RuntimeError):
    """An artifact could not be fetched or failed verification; ``code`` says which."""

    def __init__(self, module: str, version: str, code: ErrorCode, reason: str) -> None:
        super().__init__(f"module {module}@{version}: {reason}")
        self.module = module
        self.version = version
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Installed:
    """A verified artifact in the cache, with the spec it was installed from."""

    spec: ModuleSpec
    path: Path

    @property
    def name(self) -> str:
        """Module name."""
        return self.spec.name

    @property
    def version(self) -> str:
        """Module version."""
        return self.spec.version

    @property
    def sha256(self) -> str:
        """Hex sha256 of the file."""
        return self.spec.sha256 or ""


@dataclass(frozen=True, slots=True)
class CachedState:
    """What ``state.json`` holds: the last applied desired state and its installs."""

    desired: DesiredState | None
    installed: dict[str, Installed]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ModuleCache:
    """Verified, atomically installed module artifacts under one directory.

    Example:
        >>> import tempfile
        >>> cache = ModuleCache(Path(tempfile.mkdtemp()), public_key=None)
        >>> cache.load_state().desired is None
        True
    """

    def __init__(
        self,
        root: Path,
        *,
        public_key: bytes | None,
        require_signature: bool = True,
        max_bytes: int = 256 * 1024 * 1024,
        timeout_s: float = 30.0,
    ) -> None:
        """Use ``root`` (created if missing) with the control plane's Ed25519 key."""
        self.root = root
        self._key = public_key
        self._require_signature = require_signature
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        #: Where damaged files of this cache were moved (by this process).
        self.quarantined: list[Path] = []
        (root / "modules").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        for stale in (root / "tmp").iterdir():  # left by a crash mid-download
            with contextlib.suppress(OSError):
                stale.unlink()

    @property
    def state_path(self) -> Path:
        """Where the applied desired state is kept."""
        return self.root / "state.json"

    def path_for(self, spec: ModuleSpec) -> Path:
        """Install path of a module version, confined to the cache's ``modules/``.

        Raises:
            ArtifactError: BAD_REQUEST when the name or version is not a plain file name.
        """
        assert spec.sha256 is not None
        try:
            check_name(spec.version, "module version")
            file = f"{spec.version}-{spec.sha256[:16]}.onnx"
            return confined(self.root / "modules", spec.name, file, what="module file")
        except ValueError as exc:
            raise ArtifactError(spec.name, spec.version, ErrorCode.BAD_REQUEST, str(exc)) from exc

    # -------------------------------------------------------------- verification

    def check_signature(self, spec: ModuleSpec) -> None:
        """Verify the Ed25519 signature of ``spec`` (name, version, sha256).

        Raises:
            ArtifactError: INTEGRITY when missing, malformed or wrong.
        """
        if self._key is None:
            if self._require_signature:
                raise ArtifactError(
                    spec.name, spec.version, ErrorCode.INTEGRITY, "no public key provisioned"
                )
            return
        try:
            sig = spec.signature_bytes()
        except ProtocolError as exc:
            raise ArtifactError(spec.name, spec.version, ErrorCode.INTEGRITY, exc.reason) from exc
        message = artifact_signing_message(spec.name, spec.version, spec.sha256 or "")
        if not _ed25519.verify(self._key, message, sig):
            raise ArtifactError(
                spec.name, spec.version, ErrorCode.INTEGRITY, "Ed25519 signature does not verify"
            )

    # -------------------------------------------------------------- install

    def install(self, spec: ModuleSpec) -> Installed:
        """Make sure ``spec``'s artifact is in the cache, downloading if needed.

        The signature is checked before anything is fetched, the sha256 while
        streaming; only a verified file is renamed into place.

        Raises:
            ArtifactError: INTEGRITY (signature/sha256/size) or DOWNLOAD (network, HTTP).
        """
        if not spec.has_artifact or spec.sha256 is None or spec.url is None:
            raise ArtifactError(spec.name, spec.version, ErrorCode.BAD_REQUEST, "no artifact")
        self.check_signature(spec)
        final = self.path_for(spec)
        if final.exists() and sha256_file(final) == spec.sha256:
            return Installed(spec, final)
        limit = min(self._max_bytes, spec.size) if spec.size is not None else self._max_bytes
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp", suffix=".onnx")
        tmp = Path(tmp_name)
        try:
            digest = self._download(spec, fd, limit)
            if digest != spec.sha256:
                raise ArtifactError(
                    spec.name,
                    spec.version,
                    ErrorCode.INTEGRITY,
                    f"sha256 mismatch: got {digest}, expected {spec.sha256}",
                )
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        logger.info("module %s@%s: installed %s", spec.name, spec.version, final.name)
        return Installed(spec, final)

    def _download(self, spec: ModuleSpec, fd: int, limit: int) -> str:
        assert spec.url is not None
        if not spec.url.startswith(("http://", "https://")):
            os.close(fd)
            raise ArtifactError(
                spec.name, spec.version, ErrorCode.DOWNLOAD, f"url {spec.url!r} is not http(s)"
            )
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(spec.url, timeout=self._timeout_s) as resp:
                    while chunk := resp.read(_CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise ArtifactError(
                                spec.name,
                                spec.version,
                                ErrorCode.INTEGRITY,
                                f"artifact is over {limit} bytes",
                            )
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise ArtifactError(
                    spec.name, spec.version, ErrorCode.DOWNLOAD, f"download failed: {exc}"
                ) from exc
            out.flush()
            os.fsync(out.fileno())
        return h.hexdigest()

    def remove(self, name: str, keep: Path | None = None) -> None:
        """Delete a module's cached files (all, or all but ``keep``)."""
        try:
            folder = confined(self.root / "modules", name, what="module name")
        except ValueError as exc:
            logger.warning("module %r: nothing removed: %s", name, exc)
            return
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for f in folder.glob("*.onnx"):
            if f != keep:
                with contextlib.suppress(OSError):
                    f.unlink()

    # -------------------------------------------------------------- state

    def save_state(self, desired: DesiredState | None, installed: dict[str, Installed]) -> None:
        """Persist the applied desired state and what is installed (atomically)."""
        doc: dict[str, Any] = {
            "desired": desired.model_dump(mode="json") if desired else None,
            "installed": {
                n: {"spec": i.spec.model_dump(mode="json"), "path": str(i.path)}
                for n, i in installed.items()
            },
        }
        atomic_write(self.state_path, json.dumps(doc, indent=1).encode(), mode=0o600)

    def load_state(self) -> CachedState:
        """Read ``state.json``; files that are missing or do not match their sha256 are skipped."""
        try:
            doc = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return CachedState(None, {})
        except OSError as exc:
            logger.warning("cache %s: unreadable state, starting empty: %s", self.root, exc)
            return CachedState(None, {})
        except ValueError as exc:
            doc = exc
        if not isinstance(doc, dict):
            reason = str(doc) if isinstance(doc, ValueError) else "not a JSON object"
            try:
                self.quarantined.append(quarantine(self.state_path, reason))
            except OSError as exc:
                logger.warning("cache %s: damaged state not moved aside: %s", self.root, exc)
            return CachedState(None, {})
        desired = None
        if doc.get("desired"):
            try:
                desired = DesiredState.model_validate(doc["desired"])
            except ValueError as exc:
                logger.warning("cache %s: cached desired state invalid: %s", self.root, exc)
        installed: dict[str, Installed] = {}
        for name, entry in (doc.get("installed") or {}).items():
            try:
                spec = ModuleSpec.model_validate(entry["spec"])
                path = Path(entry["path"])
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("module %s: cached entry invalid: %s", name, exc)
                continue
            if not path.exists() or sha256_file(path) != spec.sha256:
                logger.warning("module %s: cached file %s missing or corrupt", name, path)
                continue
            installed[name] = Installed(spec, path)
        return CachedState(desired, installed)
