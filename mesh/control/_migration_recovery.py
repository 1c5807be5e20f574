"""Resolving the migrations a crash left unfinished: resume them or roll them back.

A migration is recorded phase by phase (:class:`~mesh.control._store.MigrationRecord`).
After a crash or a restart, :func:`recover_migrations` resolves every record
that did not end (``planned`` to ``draining``, and ``running`` rows from
before phases), before the controller plans anything:

* **not switched** (``planned``, ``starting``, ``ready``): ``rolled_back``.
  The route never left the source, and the recorded deployment still names
  it (it changes with the switch, in the same transaction), so the restore
  serves the source. Target replicas started by the old process are not
  orphaned: Ray actors share their driver's fate (they are not detached),
  so they ended with it, their ports with them; an agent target keeps the
  module installed, as a source agent does.
* **switched** (``switched``, ``draining``): the route and the recorded
  deployment name the target. If the target still answers (``alive``), the
  migration is resumed to ``done`` (the source's replicas ended with the
  old process, an agent source stays installed as its pipelines' fallback).
  If not, it is ``rolled_back``: the recorded deployment names the source
  again (same transaction), and the controller re-plans.
* a **pipeline route** (kind ``pipeline``) not acknowledged: ``rolled_back``;
  the agent reports the route it follows, which the pipeline placer adopts.

Example:
    >>> from mesh.control._store import PlacementStore
    >>> recover_migrations(PlacementStore(":memory:"), alive=lambda node: True)
    []
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import replace

from mesh.control._store import DeploymentRecord, MigrationRecord, PlacementStore

__all__ = ["recover_migrations"]

logger = logging.getLogger(__name__)

_SWITCHED = frozenset({"switched", "draining"})


def recover_migrations(
    store: PlacementStore,
    *,
    alive: Callable[[str], bool],
    skip: Collection[str] = (),
    clock: Callable[[], float] = time.time,
) -> list[MigrationRecord]:
    """Resume or roll back every unfinished migration in ``store``; returns them, ended.

    Args:
        store: the placement store.
        alive: whether a node (Ray node id or agent id) answers now.
        skip: ids of migrations this process is carrying out (not left by a crash).
        clock: Unix seconds, for ``finished_at``.
    """
    out = []
    for record in store.unfinished_migrations():
        if record.id in skip:
            continue
        try:
            ended = _resolve(store, record, alive, clock())
        except Exception:
            logger.exception("migration %s of %s: could not resolve it", record.id, record.module)
            continue
        logger.warning(
            "migration %s of %s (%s -> %s), left %s by a restart: %s (%s)",
            record.id,
            record.module,
            record.from_node,
            record.to_node,
            record.status,
            ended.status,
            ended.error or "resumed",
        )
        out.append(ended)
    return out


def _resolve(
    store: PlacementStore, record: MigrationRecord, alive: Callable[[str], bool], now: float
) -> MigrationRecord:
    was = record.status
    switched = was in _SWITCHED or (was == "running" and record.switched_at is not None)
    if record.kind == "pipeline":
        ended = replace(
            record,
            status="rolled_back",
            error=f"interrupted by a restart ({was}); the agent's reported route stands",
            finished_at=now,
        )
        store.put_migration(ended)
        return ended
    if not switched:
        ended = replace(
            record,
            status="rolled_back",
            error=f"interrupted by a restart before the switch ({was}); the source keeps serving",
            finished_at=now,
        )
        store.put_migration(ended)
        return ended
    if alive(record.to_node):
        ended = replace(record, status="done", error=None, finished_at=now)
        store.put_migration(ended)
        return ended
    ended = replace(
        record,
        status="rolled_back",
        error=f"interrupted by a restart after the switch ({was}); target {record.to_node} "
        "does not answer: the deployment names the source again",
        finished_at=now,
    )
    store.switch_migration(ended, _back_at_source(store, record, now))
    return ended


def _back_at_source(
    store: PlacementStore, record: MigrationRecord, now: float
) -> DeploymentRecord | None:
    """The module's recorded deployment, naming the migration's source again."""
    current = store.deployment(record.module)
    if current is None or record.from_tier is None or record.from_node is None:
        return None
    agent = record.from_tier == "edge"
    return replace(
        current,
        tier=record.from_tier,
        site=None,
        agent=record.from_node if agent else None,
        node=None if agent else record.from_node,
        updated_at=now,
    )
