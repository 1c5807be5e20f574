"""Carrying out the placement engine's moves, make-before-break, as persisted state machines.

A migration of a gateway-routed module goes through the serving manager,
which switches a module's one route make-before-break. Each is a
:class:`~mesh.control._store.MigrationRecord` in the placement store whose
``status`` is its phase, written as it changes, with the time of each:

1. ``planned`` (:meth:`MigrationExecutor.start`, in the reconcile round);
2. ``starting``: the round's :meth:`~MigrationExecutor.advance` hands it to its
   own worker: replicas on the target's tier and site start and warm up (a
   Ray node; when the module's warm standby serves on the target node, it is
   promoted instead: :mod:`mesh.serving._promotion`), or the agent downloads,
   verifies and loads the model;
3. ``ready``: the target serves;
4. ``switched``: the phase and the recorded deployment naming the target
   (placement epoch + 1) are written in one transaction, just before the
   route switches in one step (route epoch + 1); agents' pipelines are
   re-pointed once it has, before the source drains (below);
5. ``draining``: the gateway counts the source's requests out, then its
   replicas stop (an agent keeps the module installed as its pipelines'
   local fallback);
6. ``done``; or ``failed`` with the reason (before the switch the source keeps
   serving: nothing changed); or ``rolled_back`` by
   :func:`~mesh.control._migration_recovery.recover_migrations` after a crash.

The round never waits: the blocking parts (a replica's start, up to the
manager's ``start_timeout_s``; a drain; an agent's acknowledgement) run on the
migration's worker, and each round only reads how far it got. One migration
per module at a time (:class:`MigrationBusyError`), modules in parallel.

When the source or the target is an edge agent and the installer can set an
agent's pipeline route (``set_route``), the agent's pipelines follow: they
offload to the Ray node the module moved to, or run locally again when it
came back (``EdgeInstaller.set_route``: the agent's route epoch + 1; replicas
answer offloaded requests on ``{p}/modules/{module}/infer/{replica_id}``).
A pipeline route alone moves in one step (:mod:`mesh.control._pipeline_routing`).

Example:
    >>> executor = MigrationExecutor(manager, store, requests=monitors)       # doctest: +SKIP
    >>> executor.start("counter", Target("f" * 56, "fog", "fog-0", "ray"),
    ...                site="int-1", reason="p95 31 ms > SLO 20 ms").status  # doctest: +SKIP
    'planned'
    >>> executor.advance()  # each round: starts it; later rounds return it ended  # doctest: +SKIP
    []
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mesh.control._migration_recovery import recover_migrations
from mesh.control._pipeline_routing import PipelineRouter, PipelineRouting, Target
from mesh.control._store import PHASES, DeploymentRecord, MigrationRecord, PlacementStore
from mesh.core._errors import MeshError
from mesh.serving._contract import ModelArtifact
from mesh.serving._manager import DeploymentView, PhaseHook
from mesh.serving._routes import ModuleRoute, ReplicaEndpoint

if TYPE_CHECKING:
    from mesh.models._registry import ModelVersion
    from mesh.sdk._specs import ModuleSpec

__all__ = [
    "MigrationBusyError",
    "MigrationExecutor",
    "ModuleDeployer",
    "PipelineRouter",
    "RequestCounter",
    "Spawn",
    "Target",
    "run_inline",
    "spawn_thread",
]

logger = logging.getLogger(__name__)


class ModuleDeployer(Protocol):
    """What migrations need of :class:`mesh.serving._manager.ServingManager`."""

    def deploy(
        self,
        spec: ModuleSpec,
        version: str | ModelVersion | ModelArtifact = ...,
        *,
        tier: str | None = ...,
        site: str | None = ...,
        on_phase: PhaseHook | None = ...,
        node: str | None = ...,
    ) -> ModuleRoute:
        """Serve ``version`` on ``tier`` (and ``site``) nodes or one ``node``, make-before-break."""
        ...

    def deploy_to_agent(
        self,
        spec: ModuleSpec,
        agent_id: str,
        version: str | ModelVersion | ModelArtifact = ...,
        *,
        timeout_s: float = ...,
        on_phase: PhaseHook | None = ...,
    ) -> ModuleRoute:
        """Serve the module on an agent, make-before-break."""
        ...

    def deployments(self) -> list[DeploymentView]:
        """What serves each module now."""
        ...


class RequestCounter(Protocol):
    """Requests seen since a time (:class:`mesh.control._monitors.Monitors`)."""

    def requests_since(self, module: str, t0: float) -> tuple[int, int, float]:
        """Requests, failures and the slowest (ms) of ``module`` since ``t0`` (monotonic)."""
        ...


Spawn = Callable[[Callable[[], None], str], None]
"""Runs a migration's blocking work (``work``) apart from the reconcile loop; ``name`` names it."""


def spawn_thread(work: Callable[[], None], name: str) -> None:
    """Run ``work`` on its own daemon thread (the default :data:`Spawn`)."""
    threading.Thread(target=work, name=name, daemon=True).start()


def run_inline(work: Callable[[], None], name: str) -> None:
    """Run ``work`` at once, on the caller's thread (tests: a round moves to the end)."""
    del name
    work()


class MigrationBusyError(MeshError, ValueError):
    """A module already has a migration under way (one per module at a time)."""

    http_status = 409


@dataclass(slots=True)
class _Run:
    """A module migration under way: its record now, where it goes, what it moves."""

    record: MigrationRecord
    target: Target
    view: DeploymentView
    spawned: bool = False
    ended: threading.Event = field(default_factory=threading.Event)


class MigrationExecutor(PipelineRouting):
    """Moves modules make-before-break through the serving manager; records every move.

    A module migration is a state machine persisted in the store, phase by
    phase: ``planned`` (:meth:`start`) -> ``starting`` (:meth:`advance` hands
    it to a worker: the target's replicas start, or the agent installs) ->
    ``ready`` -> ``switched`` (the route and the recorded deployment name the
    target, in one transaction; agents' pipelines are re-pointed) ->
    ``draining`` -> ``done``; or ``failed`` (the source keeps serving) or
    ``rolled_back`` (:meth:`recover`, after a crash). The reconcile round never
    waits: :meth:`start` and :meth:`advance` return at once, the blocking
    work (a replica's start, a drain, an agent's acknowledgement) runs on the
    migration's own worker, one per module, modules in parallel.

    Args:
        deployer: the serving manager.
        store: where migrations are recorded.
        requests: counts requests and failures during a move (the monitors).
        installer: the edge installer; its ``set_route`` points agents'
            pipelines at the module's new node (None: pipelines are not moved).
        agent_timeout_s: how long an agent may take to install the module.
        settle_s: how long after the removal requests still count for the move
            (answers of requests sent just before the switch).
        clock: Unix seconds, for the records.
        monotonic: monotonic seconds, for request counting.
        spawn: runs a migration's work apart from the loop (default a thread
            each; :func:`run_inline` runs it in the round, for tests).
        routes: a module's route now (default the deployer's ``routes.get``),
            to find the replica agents' pipelines offload to.
    """

    def __init__(
        self,
        deployer: ModuleDeployer,
        store: PlacementStore,
        *,
        requests: RequestCounter | None = None,
        installer: PipelineRouter | None = None,
        agent_timeout_s: float = 60.0,
        settle_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        spawn: Spawn = spawn_thread,
        routes: Callable[[str], ModuleRoute | None] | None = None,
    ) -> None:
        """Nothing moves until :meth:`start` and :meth:`advance` (or :meth:`migrate`)."""
        self._deployer = deployer
        self._store = store
        self._requests = requests
        self._installer = installer
        self._agent_timeout_s = agent_timeout_s
        self._settle_s = settle_s
        self._clock = clock
        self._monotonic = monotonic
        self._spawn = spawn
        table = getattr(deployer, "routes", None)
        self._route_of = routes or (table.get if table is not None else lambda _m: None)
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}  # by module: one migration per module
        self._routing: dict[str, MigrationRecord] = {}  # pipeline routes, by module@site
        self._ended: list[MigrationRecord] = []  # ended since the last advance()
        self._tally: Counter[str] = Counter()  # ended migrations by status, since start

    # -- observing

    def running(self) -> list[MigrationRecord]:
        """Migrations under way (module migrations and pipeline routes), as recorded now."""
        with self._lock:
            return self._under_way()

    def counts(self) -> dict[str, int]:
        """Migrations by phase: those under way now, and those ended since this process started.

        Every phase is a key (``planned`` ... ``rolled_back``), so a count of 0 shows.
        """
        out = dict.fromkeys(PHASES, 0)
        with self._lock:
            for record in self._under_way():
                out[record.status] = out.get(record.status, 0) + 1
            for status, n in self._tally.items():
                out[status] = out.get(status, 0) + n
        return out

    def _under_way(self) -> list[MigrationRecord]:
        """Module migrations and pipeline routes under way; the caller holds ``_lock``."""
        return [r.record for r in self._runs.values()] + list(self._routing.values())

    def busy(self, module: str) -> bool:
        """Whether ``module`` has a migration under way."""
        with self._lock:
            return module in self._runs

    # -- the state machine

    def start(
        self,
        module: str,
        target: Target,
        *,
        site: str,
        reason: str,
        explanation: str = "",
        plan_version: int | None = None,
        from_tier: str | None = None,
    ) -> MigrationRecord:
        """Plan a move of ``module`` to ``target``: recorded ``planned``; returns at once.

        :meth:`advance` starts it.

        Raises:
            KeyError: the module is not deployed.
            MigrationBusyError: a migration of the module is under way.
        """
        view = next((d for d in self._deployer.deployments() if d.spec.name == module), None)
        if view is None:
            raise KeyError(module)
        source = view.agent or (view.nodes[0] if view.nodes else None)
        record = MigrationRecord(
            id=uuid.uuid4().hex[:12],
            module=module,
            site=site,
            from_node=source,
            to_node=target.node,
            from_tier=from_tier or view.tier,
            to_tier=target.tier,
            reason=reason,
            explanation=explanation,
            status="planned",
            plan_version=plan_version,
            decided_at=self._clock(),
            to_site=target.site,
            to_kind=target.kind,
        )
        with self._lock:
            under_way = self._runs.get(module)
            if under_way is not None:
                raise MigrationBusyError(
                    f"{module}: migration {under_way.record.id} to "
                    f"{under_way.record.to_node} is {under_way.record.status}"
                )
            self._runs[module] = _Run(record, target, view)
        self._save(record)
        logger.info(
            "migration %s planned: %s@%s %s (%s) -> %s (%s): %s",
            record.id,
            module,
            site,
            source,
            record.from_tier,
            target.node,
            target.tier,
            reason,
        )
        return record

    def advance(self) -> list[MigrationRecord]:
        """Start planned migrations on their workers; returns those that ended since last time.

        Never waits: each check is of state the workers keep.
        """
        with self._lock:
            planned = [r for r in self._runs.values() if not r.spawned]
            for run in planned:
                run.spawned = True
        for run in planned:
            try:
                self._spawn(partial(self._carry_out, run), f"mesh-migration-{run.record.module}")
            except Exception as exc:  # no worker (threads exhausted): it ends, not hangs
                error = f"could not start its worker: {type(exc).__name__}: {exc}"
                self._end(run, replace(run.record, status="failed", error=error))
        with self._lock:
            ended, self._ended = self._ended, []
        return ended

    def recover(self, alive: Callable[[str], bool]) -> list[MigrationRecord]:
        """Resume or roll back the migrations a crash left unfinished; returns them, ended.

        See :func:`mesh.control._migration_recovery.recover_migrations`.
        """
        with self._lock:
            ours = {r.record.id for r in self._runs.values()}
            ours |= {r.id for r in self._routing.values()}
        resolved = recover_migrations(self._store, alive=alive, skip=ours, clock=self._clock)
        with self._lock:
            self._tally.update(r.status for r in resolved)
        return resolved

    def wait(self, module: str, timeout_s: float) -> bool:
        """Wait until ``module``'s migration ended (or none is under way); False on timeout."""
        with self._lock:
            run = self._runs.get(module)
        return run is None or run.ended.wait(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no module migration is under way; False if one still is at ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                runs = [r for r in self._runs.values() if r.spawned]
            if not runs:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or not runs[0].ended.wait(left):
                return False

    def migrate(
        self,
        module: str,
        target: Target,
        *,
        site: str,
        reason: str,
        explanation: str = "",
        plan_version: int | None = None,
        from_tier: str | None = None,
        timeout_s: float = 600.0,
    ) -> MigrationRecord:
        """Move ``module`` to ``target`` and wait for the end; returns the ended record.

        :meth:`start`, :meth:`advance`, then wait (at most ``timeout_s``): for
        callers outside the reconcile loop (tests, benches). Never raises for a
        failed move: the record says ``failed`` and why, and the source keeps serving.

        Raises:
            KeyError: the module is not deployed.
            MigrationBusyError: a migration of the module is under way.
            TimeoutError: it did not end within ``timeout_s`` (it goes on).
        """
        record = self.start(
            module,
            target,
            site=site,
            reason=reason,
            explanation=explanation,
            plan_version=plan_version,
            from_tier=from_tier,
        )
        with self._lock:
            run = self._runs[module]
        self.advance()
        if not run.ended.wait(timeout_s):
            raise TimeoutError(f"migration {record.id} of {module} still under way")
        with self._lock:
            self._ended = [r for r in self._ended if r.id != record.id]
            return run.record

    def _carry_out(self, run: _Run) -> None:
        """The worker's body; whatever happens, the migration ends (never busy for good)."""
        try:
            self._steps(run)
        except BaseException as exc:
            if not run.ended.is_set():
                logger.exception("migration %s of %s broke", run.record.id, run.record.module)
                error = f"worker broke: {type(exc).__name__}: {exc}"
                self._end(run, replace(run.record, status="failed", error=error))
            if not isinstance(exc, Exception):
                raise

    def _steps(self, run: _Run) -> None:
        """Install and warm, switch, re-point agents, drain, remove; record each."""
        module, target, view = run.record.module, run.target, run.view
        self._phase(run, status="starting", started_at=self._clock())
        t0 = self._monotonic()

        def on_phase(phase: str) -> None:
            now = self._clock()
            if phase == "ready":
                self._phase(run, status="ready", ready_at=now)
            elif phase == "switching":  # before the route: the record leads it
                self._switched(run, now)
            elif phase == "switched":
                if run.record.switched_at is None:  # a deployer that never says switching
                    self._switched(run, now)
                self._follow_on_agents(module, view, target, self._route_of(module))
                self._phase(run, status="draining")
            elif phase == "drained":
                self._phase(run, drained_at=now)
            elif phase == "removed":
                self._phase(run, removed_at=now)

        error: str | None = None
        try:
            if target.kind == "agent":
                self._deployer.deploy_to_agent(
                    view.spec,
                    target.node,
                    view.artifact,
                    timeout_s=self._agent_timeout_s,
                    on_phase=on_phase,
                )
            else:
                # A Ray node without a mesh.site label stands for its tier's site
                # in the engine; deploying there must not ask for that label.
                label = None if target.site == target.tier else target.site
                self._deployer.deploy(
                    view.spec,
                    view.artifact,
                    tier=target.tier,
                    site=label,
                    on_phase=on_phase,
                    node=target.node,
                )
        except Exception as exc:  # the source keeps serving; the record says why
            error = f"{type(exc).__name__}: {exc}"
            if run.record.switched_at is not None:
                error += f" (after the switch: {target.node} serves)"
            logger.warning(
                "migration %s of %s to %s failed: %s", run.record.id, module, target.node, error
            )
        if self._settle_s > 0 and error is None:
            time.sleep(self._settle_s)  # on the worker: the loop goes on
        requests = lost = 0
        slowest: float | None = None
        if self._requests is not None:
            requests, lost, worst = self._requests.requests_since(module, t0)
            slowest = worst if requests else None
        record = replace(
            run.record,
            status="failed" if error else "done",
            error=error,
            requests=requests,
            lost=lost,
            max_ms=slowest,
        )
        self._end(run, record)
        if error is None:
            logger.info(
                "migration %s done: %s on %s in %.2f s: %d requests, %d lost, slowest %.1f ms",
                record.id,
                module,
                target.node,
                record.switch_s or 0.0,
                requests,
                lost,
                slowest or 0.0,
            )

    def _phase(self, run: _Run, **changes: Any) -> None:
        with self._lock:
            run.record = replace(run.record, **changes)
            record = run.record
        self._save(record)

    def _switched(self, run: _Run, now: float) -> None:
        """Record the switch and the module's new deployment in one transaction."""
        with self._lock:
            run.record = replace(run.record, status="switched", switched_at=now)
            record = run.record
        deployment = self._deployment_at(run)
        try:
            self._store.switch_migration(record, deployment)
        except Exception:
            logger.exception("could not record the switch of migration %s", record.id)

    def _deployment_at(self, run: _Run) -> DeploymentRecord | None:
        """The module's deployment record, now naming the target."""
        view, target = run.view, run.target
        try:
            before = self._store.deployment(view.spec.name)
        except Exception:
            logger.exception("%s: could not read the recorded deployment", view.spec.name)
            before = None
        agent = target.kind == "agent"
        return DeploymentRecord(
            module=view.spec.name,
            spec_json=view.spec.model_dump_json(),
            version=view.artifact.version,
            tier=target.tier,
            site=None if agent or target.site == target.tier else target.site,
            agent=target.node if agent else None,
            sources=before.sources if before is not None else {},
            updated_at=self._clock(),
            node=None if agent else target.node,
        )

    def _end(self, run: _Run, record: MigrationRecord) -> None:
        record = replace(record, finished_at=self._clock())
        self._save(record)
        with self._lock:
            run.record = record
            if self._runs.get(record.module) is run:
                del self._runs[record.module]
            self._ended.append(record)
            self._tally[record.status] += 1
        run.ended.set()

    def _follow_on_agents(
        self, module: str, view: DeploymentView, target: Target, route: ModuleRoute | None
    ) -> None:
        """Point agents' pipelines at the module's new node (when the installer can).

        Called as the route switches, before the source drains: an agent
        offloading to a source replica moves off it while it still answers.
        """
        set_route = self._installer.set_route if self._installer is not None else None
        if set_route is None or route is None:
            return
        # Replicas answer offloaded requests on their own replica id's infer topic.
        replica = next((e for e in route.endpoints if isinstance(e, ReplicaEndpoint)), None)
        changes: list[tuple[str, Literal["local", "offload"], str | None]] = []
        if view.agent is not None and target.kind != "agent" and replica is not None:
            changes.append((view.agent, "offload", replica.replica_id))
        if target.kind == "agent":
            changes.append((target.node, "local", None))
        for agent, mode, node in changes:
            try:
                set_route(agent, module, mode, node, self._agent_timeout_s)
            except Exception:
                logger.warning(
                    "%s: could not set the pipeline route of agent %s to %s",
                    module,
                    agent,
                    mode,
                    exc_info=True,
                )

    def _save(self, record: MigrationRecord) -> None:
        try:
            self._store.put_migration(record)
        except Exception:
            logger.exception("could not record migration %s of %s", record.id, record.module)
