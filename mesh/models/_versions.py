"""Model version records: what the registry knows of each version, and its stored form.

:class:`ModelVersion` (name, number, code version, sha256, stage, signature,
selection metric, lineage, profile, artifact signature) and
:class:`ModelSummary` are what :class:`~mesh.models._registry.ModelRegistry`
hands out (re-exported there). The registry keeps them in two tables of the
mesh's SQLite file (:data:`SCHEMA`, versioned like every store):
:func:`dumps_json` writes their JSON columns, :func:`version_from_row` reads a
version back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from mesh.core._sqlite import Schema
from mesh.models._export import ModelSignature
from mesh.models._profile import ModelProfile

__all__ = [
    "SCHEMA",
    "Lineage",
    "ModelSummary",
    "ModelVersion",
    "SelectionMetric",
    "Stage",
    "dumps_json",
    "lineage_dict",
    "metric_dict",
    "version_from_row",
]


# The registry's tables. Version 1 is the tables as they were before versions; a change
# is a new migration step (2: the lifecycle steps).
SCHEMA = Schema(
    "models",
    """
CREATE TABLE IF NOT EXISTS model_versions (
    model TEXT NOT NULL,
    number INTEGER NOT NULL,
    code_version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    stage TEXT NOT NULL,
    signature_json TEXT NOT NULL,
    metric_json TEXT,
    lineage_json TEXT NOT NULL,
    profile_json TEXT NOT NULL,
    artifact_signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (model, number),
    UNIQUE (model, code_version, sha256)
);
CREATE INDEX IF NOT EXISTS model_versions_by_sha ON model_versions(sha256);
CREATE TABLE IF NOT EXISTS model_stage_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    action TEXT NOT NULL,
    number INTEGER NOT NULL,
    previous INTEGER,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS model_stage_events_by_model ON model_stage_events(model, id);
""",
    migrations=(
        # 1 -> 2: the lifecycle's steps (mesh.models._steps): canary, promote, roll back.
        """
CREATE TABLE IF NOT EXISTS model_lifecycle_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    step TEXT NOT NULL,
    at REAL NOT NULL,
    detail_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS model_lifecycle_steps_by_model ON model_lifecycle_steps(model, id);
""",
    ),
)


def _jsonable(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def dumps_json(value: Any) -> str:
    """``value`` as the registry stores JSON (sorted keys; numpy scalars and paths too)."""
    return json.dumps(value, sort_keys=True, default=_jsonable)


class Stage(StrEnum):
    """Where a version is in its life."""

    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"


@dataclass(frozen=True, slots=True)
class SelectionMetric:
    """The metric a version was selected by, e.g. ``SelectionMetric("val_mae", 0.71, "min")``."""

    name: str
    value: float
    mode: Literal["min", "max"] = "min"


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a version came from.

    Attributes:
        run_id: the mesh run that trained it.
        data_id: the data set it was trained on.
        hyperparameters: the configuration it was trained with.
        extra: anything else (parity error, exporter, tune trial, ...).
    """

    run_id: str | None = None
    data_id: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version of a model.

    Attributes:
        name: the model.
        number: its sequence number within the model (``version`` is ``f"v{number}"``).
        code_version: the code that produced the weights.
        sha256: digest of the ONNX file (the weights version and the artifact's address).
        size_bytes: size of the ONNX file.
        stage: candidate, production or archived.
        signature: inputs, outputs and opset.
        metric: the metric it was selected by, if any.
        lineage: run id, data id, hyperparameters.
        profile: measured at registration.
        artifact_signature: base64 Ed25519 signature over (name, version, sha256).
        key_id: id of the signing key (agents hold its public half).
        created_at: Unix seconds.
    """

    name: str
    number: int
    code_version: str
    sha256: str
    size_bytes: int
    stage: Stage
    signature: ModelSignature
    metric: SelectionMetric | None
    lineage: Lineage
    profile: ModelProfile
    artifact_signature: str
    key_id: str
    created_at: float

    @property
    def version(self) -> str:
        """The readable version id, ``v<number>``."""
        return f"v{self.number}"

    @property
    def identity(self) -> str:
        """The full identity: ``<code_version>+<sha256>``."""
        return f"{self.code_version}+{self.sha256}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (what the REST API and ``mesh models show --json`` print)."""
        return {
            "name": self.name,
            "version": self.version,
            "number": self.number,
            "identity": self.identity,
            "code_version": self.code_version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "stage": self.stage.value,
            "signature": self.signature.to_dict(),
            "metric": metric_dict(self.metric) if self.metric else None,
            "lineage": lineage_dict(self.lineage),
            "profile": self.profile.to_dict(),
            "artifact_signature": self.artifact_signature,
            "key_id": self.key_id,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A model and where its versions stand."""

    name: str
    versions: int
    latest: str
    production: str | None
    updated_at: float


def metric_dict(metric: SelectionMetric) -> dict[str, Any]:
    """A metric as JSON-able fields."""
    return {"name": metric.name, "value": metric.value, "mode": metric.mode}


def lineage_dict(lineage: Lineage) -> dict[str, Any]:
    """A lineage as JSON-able fields."""
    return {
        "run_id": lineage.run_id,
        "data_id": lineage.data_id,
        "hyperparameters": dict(lineage.hyperparameters),
        "extra": dict(lineage.extra),
    }


def version_from_row(row: sqlite3.Row) -> ModelVersion:
    """A version as the registry stored it (a ``model_versions`` row)."""
    metric = json.loads(row["metric_json"]) if row["metric_json"] else None
    lineage = json.loads(row["lineage_json"])
    return ModelVersion(
        name=row["model"],
        number=int(row["number"]),
        code_version=row["code_version"],
        sha256=row["sha256"],
        size_bytes=int(row["size_bytes"]),
        stage=Stage(row["stage"]),
        signature=ModelSignature.from_dict(json.loads(row["signature_json"])),
        metric=SelectionMetric(**metric) if metric else None,
        lineage=Lineage(**lineage),
        profile=ModelProfile.from_dict(json.loads(row["profile_json"])),
        artifact_signature=row["artifact_signature"],
        key_id=row["key_id"],
        created_at=float(row["created_at"]),
    )
