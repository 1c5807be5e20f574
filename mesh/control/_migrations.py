"""Carrying out the placement engine's moves, make-before-break, and recording each.

A migration of a gateway-routed module goes through the serving manager,
which already switches a module's one route make-before-break:

1. **install and warm at the target**: replicas on the target's tier and site
   start and warm up (a Ray node), or the agent downloads, verifies and loads
   the model (an edge agent); -> ``ready``
2. **switch** the route in one step (route epoch + 1); the gateway's next
   request goes to the target; -> ``switched``
3. **drain** the source: the gateway counts its requests there out; -> ``drained``
4. **remove** the source's replicas (an agent keeps the module installed as
   its pipelines' local fallback); -> ``removed``

When the source or the target is an edge agent and the installer can set an
agent's pipeline route (``set_route``), the agent's pipelines follow: they
offload to the Ray node the module moved to, or run locally again when it
came back (``EdgeInstaller.set_route``: the agent's route epoch + 1; replicas
answer offloaded requests on ``{p}/modules/{module}/infer/{replica_id}``).

A migration of one site's pipeline (:meth:`MigrationExecutor.route_pipeline`)
is one step: the module already serves at both ends (installed on the agent,
replicas on the Ray node), so only the agent's route switches (``set_route``,
the agent's route epoch + 1); the agent keeps the module installed.

Every migration is a :class:`~mesh.control._store.MigrationRecord` in the
placement store: module, from, to, the reason and the engine's explanation,
the timings of each step, requests answered and lost during the move and the
slowest of them. If the target fails to start, nothing changed (the source
keeps serving) and the record says ``failed`` with the error.

Example:
    >>> executor = MigrationExecutor(manager, store, requests=monitors)       # doctest: +SKIP
    >>> executor.migrate("counter", Target("f" * 56, "fog", "fog-0", "ray"),
    ...                  site="int-1", reason="p95 31 ms > SLO 20 ms")        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

from mesh.control._store import MigrationRecord, PlacementStore
from mesh.serving._contract import ModelArtifact
from mesh.serving._leases import PipelineSource
from mesh.serving._manager import DeploymentView, PhaseHook
from mesh.serving._routes import ModuleRoute, ReplicaEndpoint

if TYPE_CHECKING:
    from mesh.models._registry import ModelVersion
    from mesh.sdk._specs import ModuleSpec

__all__ = [
    "MigrationExecutor",
    "ModuleDeployer",
    "PipelineRouter",
    "RequestCounter",
    "Target",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a module goes.

    Attributes:
        node: Ray node id or agent id.
        tier: ``cloud``, ``fog`` or ``edge``.
        site: the node's site.
        kind: ``ray`` or ``agent``.
    """

    node: str
    tier: str
    site: str
    kind: str


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


class PipelineRouter(Protocol):
    """Points agents' pipelines at a node (:class:`mesh.edge._install.EdgeInstaller`)."""

    def set_route(
        self,
        agent_id: str,
        module: str,
        route_mode: Literal["local", "offload", "remote"],
        target: str | None,
        timeout_s: float,
        *,
        source: PipelineSource | None = ...,
    ) -> int:
        """Switch where ``agent_id``'s pipelines run ``module``; returns the new route epoch."""
        ...


class MigrationExecutor:
    """Moves modules make-before-break through the serving manager; records every move.

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
    ) -> None:
        """Nothing moves until :meth:`migrate`."""
        self._deployer = deployer
        self._store = store
        self._requests = requests
        self._installer = installer
        self._agent_timeout_s = agent_timeout_s
        self._settle_s = settle_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._running: dict[str, MigrationRecord] = {}

    def running(self) -> list[MigrationRecord]:
        """Migrations under way."""
        with self._lock:
            return list(self._running.values())

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
    ) -> MigrationRecord:
        """Move ``module`` to ``target`` make-before-break; returns the finished record.

        Never raises for a failed move: the record says ``failed`` and why, and the
        source keeps serving.

        Raises:
            KeyError: the module is not deployed.
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
            plan_version=plan_version,
            decided_at=self._clock(),
        )
        t0 = self._monotonic()
        times: dict[str, float] = {}

        def on_phase(phase: str) -> None:
            times[phase] = self._clock()

        with self._lock:
            self._running[module] = record
        self._save(record)
        logger.info(
            "migrating %s@%s %s (%s) -> %s (%s): %s",
            module,
            site,
            source,
            record.from_tier,
            target.node,
            target.tier,
            reason,
        )
        error: str | None = None
        route: ModuleRoute | None = None
        try:
            if target.kind == "agent":
                route = self._deployer.deploy_to_agent(
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
                route = self._deployer.deploy(
                    view.spec,
                    view.artifact,
                    tier=target.tier,
                    site=label,
                    on_phase=on_phase,
                    node=target.node,
                )
        except Exception as exc:  # the source keeps serving; the record says why
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("migration of %s to %s failed: %s", module, target.node, error)
        if route is not None:
            self._follow_on_agents(module, view, target, route)
        if self._settle_s > 0:
            time.sleep(self._settle_s)
        requests = lost = 0
        slowest: float | None = None
        if self._requests is not None:
            requests, lost, worst = self._requests.requests_since(module, t0)
            slowest = worst if requests else None
        record = replace(
            record,
            status="failed" if error else "done",
            error=error,
            ready_at=times.get("ready"),
            switched_at=times.get("switched"),
            drained_at=times.get("drained"),
            removed_at=times.get("removed"),
            requests=requests,
            lost=lost,
            max_ms=slowest,
        )
        with self._lock:
            self._running.pop(module, None)
        self._save(record)
        if error is None:
            logger.info(
                "migrated %s to %s in %.2f s (epoch %d): %d requests, %d lost, slowest %.1f ms",
                module,
                target.node,
                record.switch_s or 0.0,
                route.epoch if route else 0,
                requests,
                lost,
                slowest or 0.0,
            )
        return record

    def route_pipeline(
        self,
        module: str,
        agent: str,
        *,
        site: str,
        source: Target,
        target: Target,
        replica: str | None,
        reason: str,
        explanation: str = "",
        plan_version: int | None = None,
        source_topic: PipelineSource | None = None,
    ) -> MigrationRecord:
        """Point ``agent``'s pipelines of ``module`` at ``target``; returns the finished record.

        ``target`` is the agent itself (run locally) or a Ray node, reached through
        ``replica`` (the replica id answering offloaded requests there). With
        ``source_topic`` (a :class:`~mesh.serving._leases.PipelineSource`), the
        replica takes the pipeline's source too (route ``remote``). Never
        raises for a failed switch: the record says ``failed`` and why, and the
        agent keeps the route it had.

        Example:
            >>> executor.route_pipeline("counter", "cam-07", site="int-1",
            ...                         source=Target("cam-07", "edge", "int-1", "agent"),
            ...                         target=Target("f" * 56, "fog", "fog-0", "ray"),
            ...                         replica="counter-v1-3f2a1b",
            ...                         reason="p95 31 ms > SLO 20 ms")  # doctest: +SKIP
        """
        record = MigrationRecord(
            id=uuid.uuid4().hex[:12],
            module=module,
            site=site,
            from_node=source.node,
            to_node=target.node,
            from_tier=source.tier,
            to_tier=target.tier,
            reason=reason,
            explanation=explanation,
            plan_version=plan_version,
            decided_at=self._clock(),
        )
        key = f"{module}@{site}"
        with self._lock:
            self._running[key] = record
        self._save(record)
        t0 = self._monotonic()
        local = target.kind == "agent"
        logger.info(
            "routing %s@%s (agent %s) %s (%s) -> %s (%s): %s",
            module,
            site,
            agent,
            source.node,
            source.tier,
            target.node,
            target.tier,
            reason,
        )
        error: str | None = None
        set_route = self._installer.set_route if self._installer is not None else None
        if set_route is None:
            error = "the edge installer cannot set pipeline routes"
        elif not local and not replica:
            error = f"no replica of {module} on {target.node} to offload to"
        else:
            ready = self._clock()  # both ends already serve the module
            remote = not local and source_topic is not None
            try:
                if remote:
                    set_route(
                        agent, module, "remote", replica, self._agent_timeout_s, source=source_topic
                    )
                else:
                    set_route(
                        agent,
                        module,
                        "local" if local else "offload",
                        None if local else replica,
                        self._agent_timeout_s,
                    )
            except Exception as exc:  # the agent keeps its route; the record says why
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            logger.warning(
                "%s@%s: pipeline route to %s failed: %s", module, site, target.node, error
            )
            record = replace(record, status="failed", error=error)
        else:
            requests, slowest = 0, 0.0
            counter = getattr(self._requests, "pipeline_since", None)
            if counter is not None:
                requests, slowest = counter(module, agent, t0)
            record = replace(
                record,
                status="done",
                ready_at=ready,
                switched_at=self._clock(),
                requests=requests,
                max_ms=slowest if requests else None,
            )
            logger.info(
                "%s@%s: agent %s's pipelines now %s",
                module,
                site,
                agent,
                "run locally"
                if local
                else f"{'hand the source' if source_topic else 'offload'} to {replica} "
                f"on {target.node}",
            )
        with self._lock:
            self._running.pop(key, None)
        self._save(record)
        return record

    def _follow_on_agents(
        self, module: str, view: DeploymentView, target: Target, route: ModuleRoute
    ) -> None:
        """Point agents' pipelines at the module's new node (when the installer can)."""
        set_route = self._installer.set_route if self._installer is not None else None
        if set_route is None:
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
