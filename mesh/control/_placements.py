"""Where each module runs: the store's record, the one the manager and the controller follow.

A module's row in ``placement_deployments`` (:class:`~mesh.control._store.DeploymentRecord`)
is the one source of where it runs: its version, tier, site, agent or Ray
node, and an epoch that grows by one at each move. Its writers:

* the serving manager, through :meth:`RecordedPlacements.record_placement`
  (a :class:`~mesh.serving._deployment.PlacementRecorder`), before each
  route switch: a deploy, a restore, a standby's promotion; and
  :meth:`RecordedPlacements.forget_placement` before an undeploy's route goes;
* a migration's switch, with its phase in one transaction
  (:meth:`~mesh.control._store.PlacementStore.switch_migration`), and the
  roll-back of one a crash left (:mod:`mesh.control._migration_recovery`).

The gateway's route is published from what was recorded, never before it.
Each round the controller reads the rows (:meth:`RecordedPlacements._read_placed`:
no copy of them outlives the round) and holds the manager to them
(:meth:`RecordedPlacements._adopt`): a module served off its record, seen so
in two rounds running (a switch is recorded an instant before its route), is
moved back to the recorded node or agent by a migration; one whose recorded
node is down is recorded where it serves. A module served with no record is
recorded. Only the time each module came to its place is kept between rounds
(for the dwell and the SLO window), and the version seen last (a new one is
a trigger).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.control._migrations import MigrationExecutor, Target
from mesh.control._saturation import SaturationMarks
from mesh.control._snapshot import Snapshot
from mesh.control._store import DeploymentRecord, PlacementStore
from mesh.serving._deployment import DeploymentView

__all__ = ["Placed", "RecordedPlacements", "Seen"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a module serves this round (read from its record), since when, which version."""

    node: str
    since: float
    version: str
    epoch: int = 1


@dataclass(frozen=True, slots=True)
class Seen:
    """What a round read of a module's record: its epoch and version, and when the epoch began."""

    epoch: int
    version: str
    since: float


class RecordedPlacements:
    """Recording where modules run, and reading it back each round; a mixin of the controller."""

    # The controller's state, set in PlacementController.__init__.
    store: PlacementStore
    executor: MigrationExecutor
    _clock: Callable[[], float]
    _stop: threading.Event
    _lock: threading.Lock
    _saturated: SaturationMarks
    _seen: dict[str, Seen]
    _strayed: dict[str, tuple[int, str | None, str]]

    def _sources_of(self, view: DeploymentView) -> dict[str, float]:
        raise NotImplementedError

    def _primary_site(self, view: DeploymentView) -> str:
        raise NotImplementedError

    # -- the serving manager's recorder

    def record_placement(self, view: DeploymentView) -> None:
        """Record where ``view`` serves; the serving manager calls it before the route switches.

        Its Ray node is the one its replicas are pinned to, else the recorded
        one, while a replica serves there; else its first replica's; with none
        serving (lost, or scaled to zero), the pinned or recorded one stays.
        Nothing is written when the record says so already.
        """
        module = view.spec.name
        before = self.store.deployment(module)
        node: str | None = None
        if view.agent is None:
            known = [
                n for n in (view.pinned_node, before.node if before else None) if n is not None
            ]
            serving = [n for n in known if n in view.nodes] + list(view.nodes)
            node = serving[0] if serving else (known[0] if known else None)
        record = DeploymentRecord(
            module=module,
            spec_json=view.spec.model_dump_json(),
            version=view.artifact.version,
            tier=view.tier,
            site=view.site,
            agent=view.agent,
            sources=self._sources_of(view),
            node=node,
        )
        if (
            before is not None
            and before.same_place(record)
            and (before.version, before.spec_json) == (record.version, record.spec_json)
            and dict(before.sources) == dict(record.sources)
        ):
            return
        stored = self.store.put_deployment(record)
        logger.info(
            "%s %s recorded on %s (placement epoch %d)",
            module,
            record.version,
            stored.where or stored.tier,
            stored.epoch,
        )

    def forget_placement(self, module: str) -> None:
        """Forget ``module``'s record: it is undeployed (kept once the controller is closed)."""
        if not self._stop.is_set():
            self.store.remove_deployment(module)

    # -- each round

    def _adopt(self, views: Mapping[str, DeploymentView], snapshot: Snapshot) -> list[str]:
        """Hold what the manager serves to the records: record the unrecorded, move the strayed."""
        triggers = []
        rows = {r.module: r for r in self.store.deployments()}
        strayed: dict[str, tuple[int, str | None, str]] = {}
        for name, view in views.items():
            row = rows.get(name)
            live = view.agent or (view.nodes[0] if view.nodes else None)
            if live is None:
                # Every replica failed its health checks (its node died, say): mark
                # where it was unusable for it and re-place now, without waiting
                # for Ray to declare the node dead (~15 s).
                lost = row.where if row is not None else None
                if lost is not None and self._saturated.mark(name, lost, math.inf):
                    triggers.append(f"no serving replica: {name} on {lost[:8]}")
                continue
            try:
                trigger = self._hold(name, view, row, live, snapshot, strayed)
            except Exception:  # one module's record must not stop the round
                logger.exception("%s: could not hold it to its placement record", name)
                continue
            if trigger:
                triggers.append(trigger)
        self._strayed = strayed
        return triggers

    def _hold(
        self,
        name: str,
        view: DeploymentView,
        row: DeploymentRecord | None,
        live: str,
        snapshot: Snapshot,
        strayed: dict[str, tuple[int, str | None, str]],
    ) -> str | None:
        """Hold one served module to its record; returns a trigger, if it moves it back."""
        if row is None:
            logger.warning("%s serves on %s with no placement record: recorded", name, live)
            self.record_placement(view)
            return None
        here = row.agent is not None or row.node in view.nodes
        if row.agent == view.agent and row.tier == view.tier and here:
            if row.version != view.artifact.version:
                logger.warning(
                    "%s serves %s, recorded %s: recorded", name, view.artifact.version, row.version
                )
                self.record_placement(view)
            return None
        if self.executor.busy(name):
            return None  # its migration records its switch
        target = row.where
        state = snapshot.nodes.get(target) if target is not None else None
        if state is None or not state.alive:
            logger.warning(
                "%s serves on %s, recorded on %s, which is not up: recorded where it serves",
                name,
                live,
                target or "no node",
            )
            self.record_placement(view)
            return None
        key = (row.epoch, target, live)
        if self._strayed.get(name) != key:
            strayed[name] = key  # once: a switch is recorded an instant before its route
            return None
        why = f"serves on {live}, recorded on {target}"
        logger.warning("%s %s: moving it back", name, why)
        self.executor.start(
            name,
            Target(state.name, state.tier, state.site, state.kind),
            site=self._primary_site(view),
            reason=f"held to its record: {why}",
        )
        return f"off its record: {name} {why}"

    def _read_placed(self, views: Mapping[str, DeploymentView], now: float) -> dict[str, Placed]:
        """Where each served module runs, read from its record; notes new epochs and versions."""
        rows = {r.module: r for r in self.store.deployments()}
        placed = {}
        seen = {}
        for name, view in views.items():
            row = rows.get(name)
            if row is None:
                continue
            node = row.where or view.agent or (view.nodes[0] if view.nodes else None)
            if node is None:
                continue
            before = self._seen.get(name)
            since = before.since if before is not None and before.epoch == row.epoch else now
            seen[name] = Seen(row.epoch, row.version, since)
            placed[name] = Placed(node, since, row.version, max(1, row.epoch))
        with self._lock:
            self._seen = seen
        return placed

    def _new_versions(self, placed: Mapping[str, Placed], seen: Mapping[str, Seen]) -> list[str]:
        """``new version`` triggers: records whose version changed since the last round."""
        return [
            f"new version: {m} {p.version}"
            for m, p in sorted(placed.items())
            if m in seen and seen[m].version != p.version
        ]
