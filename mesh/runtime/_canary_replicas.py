"""The replica side of a canary: a candidate replica beside production's on cloud/fog.

Where a tracked module is served by replicas (the serving manager's
deployment of it, not an agent), the canary service
(:mod:`mesh.runtime._canary`) starts one replica of the candidate on the same
tier and site through a :class:`ReplicaTrials`
(:class:`~mesh.serving._canary_replicas.ReplicaCanary`): ready first, then
weighed into the route to take :func:`replica_share` of the module's requests.
Both versions' figures on this side are what the gateway counted for each
since the candidate took traffic (:meth:`ReplicaRun.window`: requests, 5xx
failures and a p95), which the service adds to the agents' side before
:func:`~mesh.control._canary.decide` judges.

Example:
    >>> run = start_beside(trials, view, artifact, production="v1", share=0.25)  # doctest: +SKIP
    >>> run.window(trials, "v2", skip_nodes=agent_ids).requests                  # doctest: +SKIP
    31
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mesh.sdk._specs import ModuleSpec
from mesh.serving._canary_replicas import CandidateReplica, VersionTally
from mesh.serving._contract import ModelArtifact
from mesh.serving._deployment import DeploymentView
from mesh.serving._routes import ModuleRoute

if TYPE_CHECKING:
    from mesh.models._registry import ModelVersion

__all__ = [
    "MAX_SHARE",
    "ReplicaDeployer",
    "ReplicaRun",
    "ReplicaTrials",
    "redeploy",
    "replica_share",
    "replicas_serving",
    "start_beside",
]

#: The most of a module's requests the candidate replica takes: production keeps a side.
MAX_SHARE = 0.5


class ReplicaDeployer(Protocol):
    """Redeploys a module's replicas (:class:`~mesh.serving._manager.ServingManager`)."""

    def deployments(self) -> list[DeploymentView]:
        """What serves each module now."""
        ...

    def deploy(
        self,
        spec: ModuleSpec,
        version: str | ModelVersion | ModelArtifact = "production",
        *,
        tier: str | None = None,
        site: str | None = None,
        node: str | None = None,
    ) -> ModuleRoute:
        """Serve ``version`` on ``tier``, make-before-break."""
        ...


class ReplicaTrials(Protocol):
    """Candidate replicas beside production's.

    :class:`~mesh.serving._canary_replicas.ReplicaCanary` is the real one.
    """

    def start(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        *,
        tier: str,
        site: str | None,
        share: float,
        node: str | None = None,
    ) -> CandidateReplica:
        """Start it, then route ``share`` of the module's requests to it."""
        ...

    def stop(self, candidate: CandidateReplica) -> bool:
        """Out of the route, drained, stopped; whether it drained in time."""
        ...

    def is_down(self, candidate: CandidateReplica) -> bool:
        """Whether the gateway found it refusing or resetting connections."""
        ...

    def tally(self, module: str, version: str, *, skip_nodes: Iterable[str] = ()) -> VersionTally:
        """What the gateway counted for ``version`` of ``module`` so far."""
        ...


def replica_share(fraction: float) -> float:
    """The share of requests a candidate replica takes: ``fraction``, at most :data:`MAX_SHARE`."""
    return min(fraction, MAX_SHARE)


@dataclass(slots=True)
class ReplicaRun:
    """A candidate replica under way, and both versions' tallies when it took traffic."""

    candidate: CandidateReplica
    production: str
    base: dict[str, VersionTally] = field(default_factory=dict)

    def mark(self, trials: ReplicaTrials, *, skip_nodes: Iterable[str] = ()) -> None:
        """Count both versions from now (the canary's window starts)."""
        skip = frozenset(skip_nodes)
        module = self.candidate.module
        self.base = {
            v: trials.tally(module, v, skip_nodes=skip)
            for v in (self.candidate.version, self.production)
        }

    def window(
        self, trials: ReplicaTrials, version: str, *, skip_nodes: Iterable[str] = ()
    ) -> VersionTally:
        """What the gateway counted for ``version`` since :meth:`mark`."""
        now = trials.tally(self.candidate.module, version, skip_nodes=skip_nodes)
        base = self.base.get(version)
        return now.minus(base) if base is not None else now

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (lifecycle steps, ``active()``)."""
        return {**self.candidate.describe(), "production": self.production}

    def stop(self, trials: ReplicaTrials) -> dict[str, Any]:
        """The candidate replica out of the route, drained and stopped; what happened."""
        try:
            drained = trials.stop(self.candidate)
        except Exception as exc:  # recorded; production serves all the same
            return {**self.describe(), "stopped": f"failed: {exc}"}
        return {**self.describe(), "stopped": "drained" if drained else "not drained"}


def replicas_serving(deployments: Iterable[DeploymentView], module: str) -> DeploymentView | None:
    """The replica deployment serving ``module`` (None when none, or an agent serves it)."""
    return next(
        (v for v in deployments if v.spec.name == module and v.agent is None and v.nodes),
        None,
    )


def start_beside(
    trials: ReplicaTrials,
    view: DeploymentView,
    artifact: ModelArtifact,
    *,
    production: str,
    share: float,
) -> ReplicaRun:
    """Start the candidate's replica where ``view``'s serve, weighed in at ``share``.

    Raises:
        MeshError: it could not start (the route is unchanged).
    """
    candidate = trials.start(view.spec, artifact, tier=view.tier, site=view.site, share=share)
    return ReplicaRun(candidate, production)


def redeploy(
    manager: ReplicaDeployer | None, module: str, version: str, failures: dict[str, str]
) -> list[str]:
    """Serve ``version`` on every replica deployment of ``module`` (make-before-break).

    Returns where it serves now (``tier@site``); where it failed goes in ``failures``.
    """
    done: list[str] = []
    if manager is None:
        return done
    for view in manager.deployments():
        if view.spec.name != module or view.agent is not None:
            continue
        where = f"{view.tier}{f'@{view.site}' if view.site else ''}"
        try:
            manager.deploy(
                view.spec, version, tier=view.tier, site=view.site, node=view.pinned_node
            )
            done.append(where)
        except Exception as exc:  # recorded; production is the candidate already
            failures[where] = str(exc)
    return done
