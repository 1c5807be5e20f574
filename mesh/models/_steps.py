"""A model's lifecycle steps: what the automatic loop did with each version, and when.

The canary service (:mod:`mesh.runtime._canary`) records each step it takes
with a candidate version here: ``candidate_seen``, ``canary_started``,
``canary_sites``, ``compared`` (both sides' figures), then ``promoted`` or
``rolled_back`` (with the reason); :meth:`ModelLifecycle.archive` retires a
candidate (``archived``, with the reason). The steps live beside the
registry's tables in the mesh's SQLite file (table ``model_lifecycle_steps``,
the models schema's version 2), read by ``mesh models show NAME``,
``GET /v1/models/{name}`` (its ``lifecycle`` list) and the dashboard.

Example:
    >>> lifecycle = registry.lifecycle                                  # doctest: +SKIP
    >>> lifecycle.record("vehicle-counter", "v4", "candidate_seen", {"production": "v3"})
    ... # doctest: +SKIP
    >>> [s.step for s in lifecycle.steps("vehicle-counter")]           # doctest: +SKIP
    ['candidate_seen']
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.core._sqlite import open_sqlite
from mesh.models._versions import SCHEMA, Stage, dumps_json

__all__ = ["STEPS", "LifecycleStep", "ModelLifecycle"]

logger = logging.getLogger(__name__)

#: The steps the lifecycle records, in the order a canary takes them.
STEPS = (
    "candidate_seen",
    "canary_started",
    "canary_sites",
    "compared",
    "promoted",
    "rolled_back",
    "archived",
    "note",
)

#: The most steps one read returns.
MAX_STEPS = 1000


@dataclass(frozen=True, slots=True)
class LifecycleStep:
    """One step of a version's lifecycle.

    Attributes:
        model: the model.
        version: the version the step is about (``v4``).
        step: one of :data:`STEPS`.
        at: Unix seconds.
        detail: the step's figures and reasons (JSON-able).
    """

    model: str
    version: str
    step: str
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``/v1/models/{name}`` lists under ``lifecycle``)."""
        return {
            "model": self.model,
            "version": self.version,
            "step": self.step,
            "at": self.at,
            "detail": dict(self.detail),
        }


class ModelLifecycle:
    """The lifecycle steps of every model in one registry file (its own connection).

    Args:
        path: the registry's SQLite file (``mesh.db``).
        clock: Unix seconds (injected in tests).
    """

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        """Open the file at the registry's schema (which holds the steps' table)."""
        self.path = path
        self._clock = clock
        self._db = open_sqlite(path, SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def record(
        self, model: str, version: str, step: str, detail: Mapping[str, Any] | None = None
    ) -> LifecycleStep:
        """Append one step; returns it.

        Raises:
            ValueError: ``step`` is not one of :data:`STEPS` (nothing is written).
        """
        if step not in STEPS:
            raise ValueError(f"unknown lifecycle step {step!r}; expected one of {list(STEPS)}")
        entry = LifecycleStep(model, version, step, self._clock(), dict(detail or {}))
        with self._lock:
            self._db.execute(
                "INSERT INTO model_lifecycle_steps (model, version, step, at, detail_json) "
                "VALUES (?, ?, ?, ?, ?)",
                (model, version, step, entry.at, dumps_json(entry.detail)),
            )
        logger.info("model %s %s: %s %s", model, version, step, dumps_json(entry.detail))
        return entry

    def steps(
        self, model: str, *, version: str | None = None, limit: int = MAX_STEPS
    ) -> list[LifecycleStep]:
        """The newest ``limit`` steps of ``model`` (of one ``version``), oldest first."""
        limit = max(1, min(int(limit), MAX_STEPS))
        sql = "SELECT * FROM model_lifecycle_steps WHERE model = ?"
        params: tuple[Any, ...] = (model,)
        if version is not None:
            sql += " AND version = ?"
            params += (version,)
        with self._lock:
            rows = self._db.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_step(row) for row in reversed(rows)]

    def recent(self, limit: int = 50) -> list[LifecycleStep]:
        """The newest ``limit`` steps of every model, oldest first (the dashboard's list)."""
        limit = max(1, min(int(limit), MAX_STEPS))
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM model_lifecycle_steps ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_step(row) for row in reversed(rows)]

    def archive(self, model: str, version: str, *, reason: str) -> bool:
        """Retire candidate ``version`` of ``model`` (stage ``archived``), saying why.

        Returns False (and changes nothing) when it is not a candidate: production
        and archived versions keep their stage.

        Raises:
            ValueError: ``version`` is not ``v<number>`` (nothing changes).
        """
        digits = version.removeprefix("v")
        if not (version.startswith("v") and digits.isdigit()):
            raise ValueError(f"version: expected v<number> (e.g. v4), got {version!r}")
        number = int(digits)
        with self._lock:
            try:
                changed = self._db.execute(
                    "UPDATE model_versions SET stage = ? WHERE model = ? AND number = ? "
                    "AND stage = ?",
                    (Stage.ARCHIVED.value, model, number, Stage.CANDIDATE.value),
                ).rowcount
            except sqlite3.Error as exc:
                logger.error("model %s %s: cannot archive: %s", model, version, exc)
                return False
        if changed:
            self.record(model, version, "archived", {"reason": reason})
        return bool(changed)


def _step(row: sqlite3.Row) -> LifecycleStep:
    return LifecycleStep(
        model=row["model"],
        version=row["version"],
        step=row["step"],
        at=float(row["at"]),
        detail=json.loads(row["detail_json"]),
    )
