"""Pointing one site's agent pipeline at a node: the one-step migration of a pipeline route.

A migration of one site's pipeline (:meth:`PipelineRouting.route_pipeline`)
is one step: the module already serves at both ends (installed on the agent,
replicas on the Ray node), so only the agent's route switches (``set_route``,
the agent's route epoch + 1); the agent keeps the module installed. It is
recorded ``planned``, then ``done`` or ``failed`` (kind ``pipeline``); one
left ``planned`` by a crash is resolved by
:func:`mesh.control._migration_recovery.recover_migrations`: the agent's
reported route stands.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from mesh.control._store import MigrationRecord
from mesh.serving._leases import PipelineSource

__all__ = ["PipelineRouter", "PipelineRouting", "Target"]

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


class PipelineRouting:
    """:meth:`route_pipeline`; a mixin of :class:`~mesh.control._migrations.MigrationExecutor`."""

    # The executor's state, set in MigrationExecutor.__init__.
    _installer: PipelineRouter | None
    _requests: Any  # a RequestCounter; pipeline_since is optional
    _agent_timeout_s: float
    _clock: Callable[[], float]
    _monotonic: Callable[[], float]
    _lock: threading.Lock
    _routing: dict[str, MigrationRecord]
    _spawn: Callable[[Callable[[], None], str], None]
    _tally: Counter[str]

    def _save(self, record: MigrationRecord) -> None:
        raise NotImplementedError

    def routing(self, module: str, site: str) -> bool:
        """Whether a route switch of ``module``'s pipeline at ``site`` is under way."""
        with self._lock:
            return f"{module}@{site}" in self._routing

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
        on_end: Callable[[MigrationRecord], None] | None = None,
    ) -> MigrationRecord:
        """Point ``agent``'s pipelines of ``module`` at ``target``, on the migration's worker.

        Returns the record as it is on return: ``planned`` while the worker
        waits for the agent's acknowledgement (up to ``agent_timeout_s``), or
        ended when the worker ran at once (:func:`run_inline`); ``on_end`` is
        called with the ended record, on the worker.

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
            status="planned",
            plan_version=plan_version,
            decided_at=self._clock(),
            kind="pipeline",
            agent=agent,
            to_site=target.site,
            to_kind=target.kind,
        )
        key = f"{module}@{site}"
        with self._lock:
            if key in self._routing:
                raise ValueError(f"{key}: a pipeline route switch is under way")
            self._routing[key] = record
        self._save(record)
        ended: list[MigrationRecord] = []

        def work() -> None:
            try:
                done = self._switch_route(record, source, target, replica, source_topic)
            finally:
                with self._lock:
                    self._routing.pop(key, None)
            with self._lock:
                self._tally[done.status] += 1
            ended.append(done)
            if on_end is not None:
                on_end(done)

        self._spawn(work, f"mesh-route-{key}")
        return ended[0] if ended else record

    def _switch_route(
        self,
        record: MigrationRecord,
        source: Target,
        target: Target,
        replica: str | None,
        source_topic: PipelineSource | None,
    ) -> MigrationRecord:
        """Switch the agent's route (waits for its acknowledgement); record the end."""
        module, site, agent = record.module, record.site, record.agent or ""
        reason = record.reason
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
            record = replace(record, status="failed", error=error, finished_at=self._clock())
        else:
            requests, slowest = 0, 0.0
            counter = getattr(self._requests, "pipeline_since", None)
            if counter is not None:
                requests, slowest = counter(module, agent, t0)
            now = self._clock()
            record = replace(
                record,
                status="done",
                ready_at=ready,
                switched_at=now,
                requests=requests,
                max_ms=slowest if requests else None,
                finished_at=now,
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
        self._save(record)
        return record
