"""The model registry: versions of ONNX models, their profiles, and their stages.

A version is a code version plus the weights: the sha256 of the ONNX file. It
gets a readable id per model (``v1``, ``v2``, ...) and keeps the full identity
(``<code_version>+<sha256>``); registering the same pair again returns the
existing version. Each version records its input/output signature, the metric
it was selected by, its lineage (run id, data id, hyperparameters) and a
profile measured at registration with ONNX Runtime (p50/p95 latency at batch
1/8/32 on the CPU provider with one thread, the session's RSS growth, and the
CUDA provider when there is one).

The file is stored content-addressed (:class:`ArtifactStore`) and signed for
the edge agents (:meth:`ArtifactSigner.sign_module` over name, version and
sha256). A version starts as ``candidate``; :meth:`ModelRegistry.promote` makes
it ``production`` and :meth:`ModelRegistry.rollback` returns to the previous
production version; superseded ones are ``archived``. State lives in the
mesh's SQLite file (WAL) in tables of its own; the version records are
:mod:`mesh.models._versions` (re-exported here). Errors::

    MeshError
    ├── InvalidModelError             not a valid, runnable, self-contained ONNX model
    ├── ProfileError                  onnxruntime is missing (mesh.models._profile)
    └── RegistryError                 the registry's store failed
        ├── ModelNotFoundError        no such model, version or stage
        ├── InvalidRegistrationError  a bad name, code version, metric or lineage
        └── StageError                e.g. a rollback with no previous production version

Bad input changes nothing: an upload is parsed, checked and profiled before a
row or an artifact is written.

Example:
    >>> registry = ModelRegistry.open(MeshSettings(data_dir=tmp))        # doctest: +SKIP
    >>> v = registry.register("vehicle-counter", Path("counter.onnx"),
    ...                       code_version="traffic-1a2b3c4d5e6f",
    ...                       metric=SelectionMetric("val_mae", 0.71, "min"))  # doctest: +SKIP
    >>> registry.promote("vehicle-counter", v.version).stage              # doctest: +SKIP
    <Stage.PRODUCTION: 'production'>
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent._files import check_name
from mesh.core._errors import MeshError
from mesh.core._settings import MeshSettings
from mesh.core._sqlite import open_sqlite
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.models._export import InvalidModelError, load_checked, signature_of
from mesh.models._profile import CPU, measure_profile
from mesh.models._steps import ModelLifecycle
from mesh.models._versions import (
    SCHEMA,
    Lineage,
    ModelSummary,
    ModelVersion,
    SelectionMetric,
    Stage,
    dumps_json,
    lineage_dict,
    metric_dict,
    version_from_row,
)

__all__ = [
    "InvalidRegistrationError",
    "Lineage",
    "ModelNotFoundError",
    "ModelRegistry",
    "ModelSummary",
    "ModelVersion",
    "RegistryError",
    "SelectionMetric",
    "Stage",
    "StageError",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,62}$")
_VERSION = re.compile(r"^v?(\d{1,9})$")
_SHA_PREFIX = re.compile(r"^[0-9a-f]{8,64}$")
#: Uploads larger than this are refused before parsing.
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024


class RegistryError(MeshError):
    """The model registry could not do what was asked (its store failed: HTTP 503)."""

    http_status = 503


class ModelNotFoundError(RegistryError, LookupError):
    """No model, version or stage matches.

    Attributes:
        name: the model asked for.
        ref: the version or stage asked for, if any.
    """

    http_status = 404

    def __init__(self, name: str, ref: str | None = None, *, known: Sequence[str] = ()) -> None:
        self.name = name
        self.ref = ref
        listing = ", ".join(known) if known else "none"
        if ref is None:
            message = f"no model named {name!r} is registered (models: {listing})"
        elif ref == Stage.PRODUCTION:
            message = (
                f"model {name!r} has no production version; promote one with "
                f"`mesh models promote {name} VERSION` (versions: {listing})"
            )
        else:
            message = f"model {name!r} has no version {ref!r} (versions: {listing})"
        super().__init__(message)


class InvalidRegistrationError(RegistryError, ValueError):
    """A registration's name, code version, metric or lineage is malformed (HTTP 422)."""

    http_status = 422


class StageError(RegistryError):
    """A stage change that cannot be made, e.g. a rollback with nothing to roll back to (409)."""

    http_status = 409


# -- the registry ---------------------------------------------------------------------


def _check_name(name: str) -> str:
    try:
        check_name(name, "model name")  # the one file-name check (edge_agent._files)
    except ValueError as exc:
        raise InvalidRegistrationError(str(exc)) from exc
    if not _NAME.match(name):
        raise InvalidRegistrationError(
            f"invalid model name {name!r}: use letters, digits, '_' or '-', starting with a "
            "letter (at most 63 characters)"
        )
    return name


class ModelRegistry:
    """Model versions, artifacts and stages over one SQLite file and one artifact store.

    Thread-safe: one connection behind a lock, as :class:`mesh.SQLiteStore`.

    Example:
        >>> registry = ModelRegistry.open(MeshSettings(data_dir=tmp))  # doctest: +SKIP
        >>> [m.name for m in registry.list_models()]                   # doctest: +SKIP
        ['vehicle-counter']
    """

    def __init__(
        self,
        db_path: str | Path,
        artifacts: ArtifactStore,
        signer: ArtifactSigner,
        *,
        batch_sizes: Sequence[int] = (1, 8, 32),
        profile_budget_s: float = 0.25,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating its tables) the registry in ``db_path``."""
        self.path = str(db_path)
        self.artifacts = artifacts
        self.signer = signer
        self.batch_sizes = tuple(batch_sizes)
        self.profile_budget_s = profile_budget_s
        self.max_model_bytes = max_model_bytes
        self._clock = clock
        try:
            self._db = open_sqlite(self.path, SCHEMA)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open the model registry at {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        self.lifecycle = ModelLifecycle(self.path, clock=clock)  # canary steps, archive

    @classmethod
    def open(cls, settings: MeshSettings | None = None, **options: Any) -> ModelRegistry:
        """The registry of a mesh: its store file, ``<data>/artifacts`` and its signing key."""
        settings = settings or MeshSettings()
        return cls(
            settings.store_path,
            ArtifactStore(settings.data_dir / "artifacts"),
            ArtifactSigner.load_or_create(settings.data_dir),
            **options,
        )

    def __repr__(self) -> str:
        return f"ModelRegistry({self.path!r})"

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
        self.lifecycle.close()

    @property
    def key_id(self) -> str:
        """Id of the key artifacts are signed with."""
        return self.signer.key_id

    def public_key_b64(self) -> str:
        """The verification key agents need (raw Ed25519, base64)."""
        return self.signer.public_key_b64()

    # -- SQL helpers --

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise RegistryError(f"model registry busy ({self.path}): {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise RegistryError(f"model registry write failed ({self.path}): {exc}") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise RegistryError(f"model registry read failed ({self.path}): {exc}") from exc

    # -- reading --

    def list_models(self) -> list[ModelSummary]:
        """Every model, by name."""
        rows = self._rows(
            "SELECT model, COUNT(*) AS versions, MAX(number) AS latest, "
            "MAX(created_at) AS updated_at, "
            "MAX(CASE WHEN stage = 'production' THEN number END) AS production "
            "FROM model_versions GROUP BY model ORDER BY model"
        )
        return [
            ModelSummary(
                name=row["model"],
                versions=int(row["versions"]),
                latest=f"v{row['latest']}",
                production=f"v{row['production']}" if row["production"] is not None else None,
                updated_at=float(row["updated_at"]),
            )
            for row in rows
        ]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first.

        Raises:
            ModelNotFoundError: no such model.
        """
        rows = self._rows("SELECT * FROM model_versions WHERE model = ? ORDER BY number", (name,))
        if not rows:
            raise ModelNotFoundError(name, known=[m.name for m in self.list_models()])
        return [version_from_row(row) for row in rows]

    def get(self, name: str, ref: str = Stage.PRODUCTION) -> ModelVersion:
        """One version of ``name`` by ``ref``.

        Args:
            name: the model.
            ref: ``"v3"`` (or ``"3"``), ``"production"``, ``"candidate"`` (the newest
                one), ``"latest"``, or a sha256 prefix of at least 8 hex digits.

        Raises:
            ModelNotFoundError: no such model, or nothing matches ``ref``.
        """
        versions = self.versions(name)
        ref = str(ref).strip()
        match: list[ModelVersion]
        if ref == "latest":
            match = versions[-1:]
        elif ref in (Stage.PRODUCTION, Stage.CANDIDATE, Stage.ARCHIVED):
            match = [v for v in versions if v.stage == ref][-1:]
        elif (number := _VERSION.match(ref)) is not None:
            match = [v for v in versions if v.number == int(number.group(1))]
        elif _SHA_PREFIX.match(ref.lower()):
            match = [v for v in versions if v.sha256.startswith(ref.lower())]
            if len(match) > 1:
                raise ModelNotFoundError(
                    name, ref, known=[f"{v.version}={v.sha256[:12]}" for v in match]
                )
        else:
            match = []
        if not match:
            raise ModelNotFoundError(
                name, ref, known=[f"{v.version} ({v.stage})" for v in versions]
            )
        return match[0]

    def find(self, name: str, code_version: str, sha256: str) -> ModelVersion | None:
        """The version of ``name`` with exactly this code version and weights, if any."""
        rows = self._rows(
            "SELECT * FROM model_versions WHERE model = ? AND code_version = ? AND sha256 = ?",
            (name, code_version, sha256.lower()),
        )
        return version_from_row(rows[0]) if rows else None

    def artifact_path(self, name: str, ref: str = Stage.PRODUCTION) -> tuple[ModelVersion, Path]:
        """A version and the path of its ONNX file in the artifact store."""
        version = self.get(name, ref)
        return version, self.artifacts.path(version.sha256)

    def sign_for(self, version: ModelVersion, name: str | None = None) -> str:
        """Sign ``version``'s artifact under another module ``name`` (default: the model's)."""
        return self.signer.sign_module(name or version.name, version.version, version.sha256)

    def history(self, name: str) -> list[dict[str, Any]]:
        """Stage changes of ``name``, oldest first: action, version, previous, at."""
        rows = self._rows(
            "SELECT action, number, previous, at FROM model_stage_events WHERE model = ? "
            "ORDER BY id",
            (name,),
        )
        return [
            {
                "action": row["action"],
                "version": f"v{row['number']}",
                "previous": f"v{row['previous']}" if row["previous"] is not None else None,
                "at": row["at"],
            }
            for row in rows
        ]

    # -- writing --

    def register(
        self,
        name: str,
        onnx: bytes | str | Path,
        *,
        code_version: str,
        metric: SelectionMetric | Mapping[str, Any] | None = None,
        lineage: Lineage | Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Register an ONNX model as a new candidate version of ``name``.

        The file is parsed, checked, its signature read and its profile measured
        before anything is written; registering the same ``code_version`` and
        weights again returns the version already there.

        Args:
            name: the model (letters, digits, ``_``, ``-``).
            onnx: the ONNX file's bytes or path.
            code_version: the code that produced it (a git commit, a source digest).
            metric: the metric it was selected by.
            lineage: run id, data id, hyperparameters.

        Raises:
            InvalidModelError: not a valid, runnable, self-contained ONNX model
                (nothing is registered, nothing is stored).
            RegistryError: a bad name or code version, or the store failed.

        Example:
            >>> registry.register("vehicle-counter", "counter.onnx", code_version="abc",
            ...                   metric={"name": "val_mae", "value": 0.7, "mode": "min"})
            ... # doctest: +SKIP
        """
        _check_name(name)
        if not isinstance(code_version, str) or not code_version.strip() or len(code_version) > 200:
            raise InvalidRegistrationError(
                f"code_version must be a non-empty string of at most 200 characters, got "
                f"{code_version!r}"
            )
        code_version = code_version.strip()
        selection = _metric(metric)
        origin = _lineage(lineage)
        data = self._read_model(onnx)
        proto = load_checked(data)
        signature = signature_of(proto)
        del proto
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self.find(name, code_version, sha256)
        if existing is not None:
            logger.info(
                "model %s %s already registered as %s", name, existing.identity, existing.version
            )
            return existing
        profile = measure_profile(
            data, signature, batch_sizes=self.batch_sizes, budget_s=self.profile_budget_s
        )
        stored_before = self.artifacts.has(sha256)
        try:
            with self._write() as db:
                row = db.execute(
                    "SELECT number FROM model_versions WHERE model = ? AND code_version = ? "
                    "AND sha256 = ?",
                    (name, code_version, sha256),
                ).fetchone()
                if row is not None:  # registered meanwhile by another process
                    number = int(row["number"])
                else:
                    number = int(
                        db.execute(
                            "SELECT COALESCE(MAX(number), 0) + 1 FROM model_versions "
                            "WHERE model = ?",
                            (name,),
                        ).fetchone()[0]
                    )
                    self.artifacts.put_bytes(data)
                    db.execute(
                        "INSERT INTO model_versions (model, number, code_version, sha256, "
                        "size_bytes, stage, signature_json, metric_json, lineage_json, "
                        "profile_json, artifact_signature, key_id, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            name,
                            number,
                            code_version,
                            sha256,
                            len(data),
                            Stage.CANDIDATE.value,
                            dumps_json(signature.to_dict()),
                            dumps_json(metric_dict(selection)) if selection else None,
                            dumps_json(lineage_dict(origin)),
                            dumps_json(profile.to_dict()),
                            self.signer.sign_module(name, f"v{number}", sha256),
                            self.signer.key_id,
                            self._clock(),
                        ),
                    )
        except BaseException:
            if not stored_before:
                self.artifacts.delete(sha256)
            raise
        version = self.get(name, f"v{number}")
        cpu = profile.provider(CPU)
        at1 = cpu.at(1) if cpu else None
        logger.info(
            "registered model %s %s (%s, %d bytes, p50 %.3f ms at batch 1)",
            name,
            version.version,
            version.identity,
            len(data),
            at1.p50_ms if at1 else -1.0,
        )
        return version

    def _read_model(self, onnx: bytes | str | Path) -> bytes:
        if isinstance(onnx, bytes | bytearray | memoryview):
            data = bytes(onnx)
        else:
            path = Path(onnx)
            try:
                size = path.stat().st_size
                if size > self.max_model_bytes:
                    raise InvalidModelError(
                        f"{path} is {size} bytes, over the {self.max_model_bytes}-byte limit"
                    )
                data = path.read_bytes()
            except OSError as exc:
                raise InvalidModelError(f"cannot read the model file {path}: {exc}") from exc
        if len(data) > self.max_model_bytes:
            raise InvalidModelError(
                f"the model is {len(data)} bytes, over the {self.max_model_bytes}-byte limit"
            )
        return data

    def _stack(self, db: sqlite3.Connection, name: str) -> list[int]:
        """Production history as a stack: promote pushes, rollback pops."""
        stack: list[int] = []
        for row in db.execute(
            "SELECT action, number FROM model_stage_events WHERE model = ? ORDER BY id", (name,)
        ):
            if row["action"] == "promote":
                if not stack or stack[-1] != row["number"]:
                    stack.append(int(row["number"]))
            elif row["action"] == "rollback" and stack:
                stack.pop()
        return stack

    def _set_stage(self, db: sqlite3.Connection, name: str, number: int, stage: Stage) -> None:
        db.execute(
            "UPDATE model_versions SET stage = ? WHERE model = ? AND number = ?",
            (stage.value, name, number),
        )

    def promote(self, name: str, version: str) -> ModelVersion:
        """Make ``version`` the production version of ``name`` (idempotent).

        The version it replaces becomes ``archived`` and is where :meth:`rollback` returns.

        Raises:
            ModelNotFoundError: no such model or version.
        """
        target = self.get(name, version)
        with self._write() as db:
            stack = self._stack(db, name)
            current = stack[-1] if stack else None
            if current == target.number:
                logger.info("model %s %s is already in production", name, target.version)
            else:
                if current is not None:
                    self._set_stage(db, name, current, Stage.ARCHIVED)
                self._set_stage(db, name, target.number, Stage.PRODUCTION)
                db.execute(
                    "INSERT INTO model_stage_events (model, action, number, previous, at) "
                    "VALUES (?, 'promote', ?, ?, ?)",
                    (name, target.number, current, self._clock()),
                )
                logger.info(
                    "promoted model %s %s to production (was %s)",
                    name,
                    target.version,
                    f"v{current}" if current is not None else "none",
                )
        return self.get(name, target.version)

    def rollback(self, name: str) -> ModelVersion:
        """Return ``name`` to its previous production version; returns that version.

        Raises:
            ModelNotFoundError: no such model.
            StageError: no production version, or none before it.
        """
        self.versions(name)  # raises ModelNotFoundError
        with self._write() as db:
            stack = self._stack(db, name)
            if len(stack) < 2:
                current = f"v{stack[-1]}" if stack else "none"
                raise StageError(
                    f"cannot roll back model {name!r}: no earlier production version "
                    f"(production: {current})"
                )
            current_number, previous = stack[-1], stack[-2]
            self._set_stage(db, name, current_number, Stage.ARCHIVED)
            self._set_stage(db, name, previous, Stage.PRODUCTION)
            db.execute(
                "INSERT INTO model_stage_events (model, action, number, previous, at) "
                "VALUES (?, 'rollback', ?, ?, ?)",
                (name, previous, current_number, self._clock()),
            )
        logger.info("rolled back model %s from v%d to v%d", name, current_number, previous)
        return self.get(name, f"v{previous}")


def _metric(value: SelectionMetric | Mapping[str, Any] | None) -> SelectionMetric | None:
    if value is None or isinstance(value, SelectionMetric):
        metric = value
    else:
        try:
            metric = SelectionMetric(
                name=str(value["name"]),
                value=float(value["value"]),
                mode=value.get("mode", "min"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRegistrationError(
                f"metric must look like {{'name': 'val_mae', 'value': 0.7, 'mode': 'min'}}, "
                f"got {value!r}"
            ) from exc
    if metric is not None and (metric.mode not in ("min", "max") or not metric.name):
        raise InvalidRegistrationError(
            f"metric needs a name and mode 'min' or 'max', got {metric!r}"
        )
    return metric


def _lineage(value: Lineage | Mapping[str, Any] | None) -> Lineage:
    if value is None:
        return Lineage()
    if isinstance(value, Lineage):
        return value
    known = {"run_id", "data_id", "hyperparameters", "extra"}
    unknown = set(value) - known
    if unknown:
        raise InvalidRegistrationError(
            f"unknown lineage fields {sorted(unknown)}; expected {sorted(known)}"
        )
    return Lineage(
        run_id=value.get("run_id"),
        data_id=value.get("data_id"),
        hyperparameters=dict(value.get("hyperparameters") or {}),
        extra=dict(value.get("extra") or {}),
    )
