"""Fresh data: the inputs agents sampled from live pipelines, their labels, and snapshots.

Agents upload some of each sampled module's pipeline inputs (:mod:`edge_agent._samples`);
ground truth for a frame arrives later and apart, on the module's ``drift.labels``
topic. :class:`FreshData` keeps both per module in
``<data>/datasets/<module>/samples.db`` (SQLite, WAL), each table bounded (the
oldest rows by capture time go first), and joins them on ``(site, source_ts
rounded to the millisecond)``. :meth:`FreshData.snapshot` writes the newest
labelled rows to a new ``.npz`` that a training function reads with numpy
alone (:func:`fresh_data` is the public entry for training functions, which run
as Ray tasks sharing ``MESH_DATA_DIR``). The newest few snapshots are kept.

The ``.npz`` layout (``np.load(path)``, no pickle), one row per labelled sample,
oldest first:

- ``inputs``: the sample's first input tensor in the dtype it was captured in,
  rows stacked on a new first axis; a leading batch axis of one is dropped, so
  frames of shape ``(1, C, H, W)`` give ``(rows, C, H, W)``, what a model with
  that input takes as a batch.
- ``labels``: ``float32 (rows, n)``, the label's ``values`` (the flattened true
  output).
- ``ts``: ``float64 (rows,)``, each sample's capture time; ``sites`` and
  ``versions``: str ``(rows,)``, its site and the module version that ran on it.

Rows whose input shape, dtype or label length differ from the newest row's are
left out (counted in :attr:`DataSnapshot.skipped`). Errors::

    MeshError
    └── FreshDataError                404  no labelled samples of the module (yet)
        └── InvalidSampleError        422  a sample or label is malformed

Example:
    >>> store = FreshData(tmp / "datasets")                                    # doctest: +SKIP
    >>> store.add_sample("counter", "j1", 12.5, "v3", [Tensor.from_numpy("x", frame)])
    >>> store.add_label("counter", "j1", 12.5, [4.0, 1.0])                     # doctest: +SKIP
    >>> snap = store.snapshot("counter", max_rows=1000)                        # doctest: +SKIP
    >>> np.load(snap.path)["labels"].shape                                     # doctest: +SKIP
    (1, 2)
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.protocol import ProtocolError, Tensor, decode_frame, encode_frame
from mesh.core._errors import MeshError
from mesh.core._settings import MeshSettings
from mesh.core._sqlite import Schema, open_sqlite, write_transaction

if TYPE_CHECKING:
    import sqlite3

    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DataSnapshot",
    "FreshData",
    "FreshDataError",
    "FreshStats",
    "InvalidSampleError",
    "fresh_data",
]

#: Samples kept per module, and labels (they arrive for every frame, sampled or not).
DEFAULT_MAX_SAMPLES = 5000
DEFAULT_MAX_LABELS = 20000
#: Snapshot files kept per module (the newest).
KEEP_SNAPSHOTS = 8
_MAX_VALUES = 4096
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:@-]{0,127}$")

_SCHEMA = Schema(
    "fresh-data",
    """
    CREATE TABLE IF NOT EXISTS fresh_samples (
        site TEXT NOT NULL, ts_ms INTEGER NOT NULL, ts REAL NOT NULL,
        version TEXT NOT NULL, received REAL NOT NULL, frame BLOB NOT NULL,
        PRIMARY KEY (site, ts_ms));
    CREATE INDEX IF NOT EXISTS fresh_samples_ts ON fresh_samples (ts);
    CREATE TABLE IF NOT EXISTS fresh_labels (
        site TEXT NOT NULL, ts_ms INTEGER NOT NULL, ts REAL NOT NULL,
        label TEXT NOT NULL, received REAL NOT NULL,
        PRIMARY KEY (site, ts_ms));
    CREATE INDEX IF NOT EXISTS fresh_labels_ts ON fresh_labels (ts);
    """,
)


class FreshDataError(MeshError, LookupError):
    """No labelled samples of a module (yet): HTTP 404."""

    http_status = 404


class InvalidSampleError(FreshDataError, ValueError):
    """A sample or label is malformed (names the field and what was expected): HTTP 422."""

    http_status = 422


@dataclass(frozen=True, slots=True)
class DataSnapshot:
    """One ``.npz`` of a module's labelled samples (the layout is in the module docstring).

    Attributes:
        id: names it in a version's lineage (``Lineage.data_id``).
        module: the module sampled.
        path: the ``.npz`` file.
        rows: labelled samples in it.
        sites: the sites they came from, sorted.
        skipped: labelled samples left out (shape, dtype or label length differ).
        created_ts: when it was written (Unix s).
    """

    id: str
    module: str
    path: Path
    rows: int
    sites: tuple[str, ...]
    skipped: int = 0
    created_ts: float = 0.0

    def arrays(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]:
        """``(inputs, labels)`` read from :attr:`path`."""
        import numpy as np

        with np.load(self.path) as data:
            return data["inputs"], data["labels"]


@dataclass(frozen=True, slots=True)
class FreshStats:
    """One module's rows now, and what was dropped since this store opened."""

    samples: int
    labels: int
    labelled: int
    samples_dropped: int
    labels_dropped: int


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidSampleError(
            f"{what}: expected 1-128 of [A-Za-z0-9_.:@-] (not starting with '.'), got {value!r}"
        )
    return value


def _check_ts(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSampleError(f"ts: expected a finite number of Unix seconds, got {value!r}")
    return float(value)


def _key(ts: float) -> int:
    """The join key: the capture time in whole milliseconds (round(ts, 3))."""
    return round(ts * 1000)


class FreshData:
    """Per-module stores of sampled inputs and labels under ``root``; thread-safe.

    Args:
        root: ``<data>/datasets``; each module gets a folder.
        max_samples: samples kept per module (the oldest dropped first).
        max_labels: labels kept per module.
        clock: Unix seconds (when a row arrived; snapshot ids).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_labels: int = DEFAULT_MAX_LABELS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open nothing yet: a module's file opens at its first use."""
        if max_samples < 1 or max_labels < 1:
            raise ValueError(f"max_samples ({max_samples}) and max_labels must be positive")
        self.root = Path(root)
        self._max = {"fresh_samples": max_samples, "fresh_labels": max_labels}
        self._clock = clock
        self._lock = threading.RLock()
        self._dbs: dict[str, sqlite3.Connection] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    @classmethod
    def open(cls, settings: MeshSettings | None = None, **options: Any) -> FreshData:
        """The store of a mesh: ``<data>/datasets``."""
        settings = settings or MeshSettings()
        return cls(settings.data_dir / "datasets", **options)

    def close(self) -> None:
        """Close every module's file."""
        with self._lock:
            for db in self._dbs.values():
                db.close()
            self._dbs.clear()

    def modules(self) -> list[str]:
        """The modules with a store under :attr:`root`, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "samples.db").is_file())

    def _db(self, module: str) -> sqlite3.Connection:
        db = self._dbs.get(module)
        if db is None:
            db = open_sqlite(str(self.root / module / "samples.db"), _SCHEMA, named_rows=False)
            self._dbs[module] = db
        return db

    def add_sample(
        self, module: str, site: str, ts: float, version: str, tensors: Sequence[Tensor]
    ) -> None:
        """Keep one sampled input (the same ``(site, ts)`` again replaces it).

        Raises:
            InvalidSampleError: a bad module, site, ts, version or no tensors;
                nothing is written.
        """
        _check_name(module, "module")
        _check_name(site, "site")
        ts = _check_ts(ts)
        if not isinstance(version, str) or not 0 < len(version) <= 128:
            raise InvalidSampleError(f"version: expected 1-128 characters, got {version!r}")
        if not tensors:
            raise InvalidSampleError("tensors: expected at least one input tensor, got none")
        try:
            frame = encode_frame({}, tensors)
        except ProtocolError as exc:
            raise InvalidSampleError(f"tensors: {exc.reason}") from exc
        row = (site, _key(ts), ts, version, self._clock(), frame)
        self._insert(module, "fresh_samples", "site, ts_ms, ts, version, received, frame", row)

    def add_label(self, module: str, site: str, ts: float, values: Sequence[float]) -> None:
        """Keep the label of the frame ``site`` captured at ``ts`` (the same again replaces it).

        Raises:
            InvalidSampleError: a bad module, site, ts, or values that are not
                1-4096 finite numbers; nothing is written.
        """
        import json

        _check_name(module, "module")
        _check_name(site, "site")
        ts = _check_ts(ts)
        if (
            isinstance(values, str | bytes)
            or not isinstance(values, Sequence)
            or not 0 < len(values) <= _MAX_VALUES
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            )
        ):
            raise InvalidSampleError(
                f"values: expected a list of 1 to {_MAX_VALUES} finite numbers, "
                f"got {str(values)[:80]}"
            )
        label = json.dumps([float(v) for v in values])
        row = (site, _key(ts), ts, label, self._clock())
        self._insert(module, "fresh_labels", "site, ts_ms, ts, label, received", row)

    def _insert(self, module: str, table: str, columns: str, row: tuple[Any, ...]) -> None:
        marks = ", ".join("?" * len(row))
        with self._lock:
            db = self._db(module)
            key = (module, table)
            with write_transaction(db, self._lock, f"fresh data of {module}") as tx:
                tx.execute(f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})", row)
                count = self._counts.get(key, -1) + 1
                if count <= 0 or count > self._max[table]:
                    count = tx.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                over = count - self._max[table]
                if over > 0:
                    tx.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} ORDER BY ts LIMIT ?)",
                        (over,),
                    )
                    self._dropped[key] = self._dropped.get(key, 0) + over
                    count -= over
            self._counts[key] = count

    def stats(self, module: str) -> FreshStats:
        """The module's samples, labels and labelled samples now, and the drops."""
        _check_name(module, "module")
        with self._lock:
            db = self._db(module)
            samples = db.execute("SELECT COUNT(*) FROM fresh_samples").fetchone()[0]
            labels = db.execute("SELECT COUNT(*) FROM fresh_labels").fetchone()[0]
            labelled = db.execute(
                "SELECT COUNT(*) FROM fresh_samples s JOIN fresh_labels l "
                "ON s.site = l.site AND s.ts_ms = l.ts_ms"
            ).fetchone()[0]
            return FreshStats(
                samples,
                labels,
                labelled,
                self._dropped.get((module, "fresh_samples"), 0),
                self._dropped.get((module, "fresh_labels"), 0),
            )

    def snapshot(
        self, module: str, *, max_rows: int = 2000, since: float | None = None
    ) -> DataSnapshot:
        """Write the newest ``max_rows`` labelled samples (captured at or after ``since``).

        Returns a new snapshot each call; the module's newest
        :data:`KEEP_SNAPSHOTS` files are kept.

        Raises:
            FreshDataError: no labelled sample matches (the message says how many
                samples and labels there are).
            InvalidSampleError: a bad module name or ``max_rows``.
        """
        _check_name(module, "module")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise InvalidSampleError(f"max_rows: expected a positive int, got {max_rows!r}")
        with self._lock:
            rows = (
                self._db(module)
                .execute(
                    "SELECT s.site, s.ts, s.version, s.frame, l.label FROM fresh_samples s "
                    "JOIN fresh_labels l ON s.site = l.site AND s.ts_ms = l.ts_ms "
                    "WHERE s.ts >= ? ORDER BY s.ts DESC LIMIT ?",
                    (-math.inf if since is None else float(since), max_rows),
                )
                .fetchall()
            )
        if not rows:
            stats = self.stats(module)
            raise FreshDataError(
                f"no labelled samples of module {module!r}"
                f"{f' since {since}' if since is not None else ''} in "
                f"{self.root / module / 'samples.db'} ({stats.samples} samples, {stats.labels} "
                "labels; a label joins the sample of its site whose source_ts it names, "
                "to the millisecond)"
            )
        return self._write(module, list(reversed(rows)))

    def _write(self, module: str, rows: list[tuple[Any, ...]]) -> DataSnapshot:
        import json

        import numpy as np

        inputs, labels, kept = [], [], []
        ref: tuple[str, tuple[int, ...], int] | None = None
        for site, ts, version, frame, label in reversed(rows):  # the newest sets the shape
            _, tensors = decode_frame(frame)
            x = tensors[0].to_numpy()
            y = json.loads(label)
            sig = (str(x.dtype), x.shape, len(y))
            if ref is None:
                ref = sig
            if sig != ref:
                continue
            inputs.append(x[0] if x.ndim >= 1 and x.shape[0] == 1 else x)
            labels.append(y)
            kept.append((site, ts, version))
        inputs.reverse()
        labels.reverse()
        kept.reverse()
        now = self._clock()
        snap_id = f"{module}-{int(now * 1000)}-{uuid.uuid4().hex[:8]}"
        folder = self.root / module / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{snap_id}.npz"
        tmp = folder / f".{snap_id}.tmp"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                inputs=np.stack(inputs),
                labels=np.asarray(labels, dtype=np.float32),
                ts=np.asarray([k[1] for k in kept], dtype=np.float64),
                sites=np.asarray([k[0] for k in kept], dtype=str),
                versions=np.asarray([k[2] for k in kept], dtype=str),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        old = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
        for stale in old[:-KEEP_SNAPSHOTS]:
            stale.unlink(missing_ok=True)
        return DataSnapshot(
            id=snap_id,
            module=module,
            path=path,
            rows=len(kept),
            sites=tuple(sorted({k[0] for k in kept})),
            skipped=len(rows) - len(kept),
            created_ts=now,
        )


def fresh_data(
    module: str,
    *,
    max_rows: int = 2000,
    since: float | None = None,
    settings: MeshSettings | None = None,
) -> DataSnapshot:
    """A new snapshot of ``module``'s labelled fresh samples, for a training function.

    Reads ``<data>/datasets/<module>/samples.db`` of the mesh ``settings`` names
    (default: ``MESH_DATA_DIR``, which function tasks share with the control plane).
    The ``.npz`` layout is in :mod:`mesh.models._fresh_data`'s docstring.

    Raises:
        FreshDataError: no labelled samples yet.

    Example:
        >>> snapshot = mesh.models.fresh_data("counter", max_rows=1000)        # doctest: +SKIP
        >>> inputs, labels = snapshot.arrays()                                 # doctest: +SKIP
        >>> Lineage(run_id, data_id=snapshot.id)                              # doctest: +SKIP
    """
    store = FreshData.open(settings)
    try:
        return store.snapshot(module, max_rows=max_rows, since=since)
    finally:
        store.close()
