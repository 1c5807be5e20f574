"""What the placement controller is configured with, reads and returns.

:class:`ControllerSettings` holds the reconcile loop's knobs; :class:`ServedModules`
and :class:`EdgeAgents` are the seams it reads the serving manager and the
edge agents through; :class:`RoundResult` is what one round did. They live
apart from :mod:`mesh.control._controller` so that its helpers
(:mod:`mesh.control._pipelines`) can use them without importing the controller.

Example:
    >>> ControllerSettings(dwell_s=30).period_s
    30.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from edge_agent.protocol import Heartbeat, ObservedState
from mesh.control._store import MigrationRecord
from mesh.serving._manager import DeploymentView
from placement import Plan as EnginePlan

if TYPE_CHECKING:
    from mesh.models._registry import ModelVersion

__all__ = [
    "AgentSnapshot",
    "ControllerSettings",
    "EdgeAgents",
    "ModelVersions",
    "RoundResult",
    "ServedModules",
]


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Knobs of the reconcile loop.

    Attributes:
        enabled: run the loop at all (pins and the REST API work either way).
        tick_s: how often a round looks for triggers.
        period_s: a full planning round runs at least this often.
        window_s: the window of observed latency a violation must last.
        min_samples: requests in the window before an observed p95 counts.
        dwell_s: a route that meets its SLO stays at least this long.
        relapse_backoff: a pipeline site that leaves its agent again within two
            holds of returning *relapses*: its next stay away lasts this many
            times longer (the first lasts ``dwell_s``), so a marginal agent does
            not flap.
        max_hold_s: the longest such stay away.
        slo_margin: hysteresis: a move targets ``slo * (1 - slo_margin)``.
        poll_s: how often node metrics and RTTs are read.
        canary_period_s: how often a saturated node is probed for recovery.
        saturation_ttl_s: a saturated mark is lifted after this long anyway.
        gateway_site: the site of the gateway's clients (modules' default source).
        default_rate_per_s: a source's rate before any request was observed.
        cost_per_h: price per hour of a node, by tier.
        default_rtt_ms: RTT of a node not probed, by tier.
        overhead_ms: per-request cost of the path to a tier, on top of the profile.
        default_service_ms: service time of a module without a profile.
        max_utilisation: a node busier than this is overloaded.
    """

    enabled: bool = True
    tick_s: float = 0.25
    period_s: float = 30.0
    window_s: float = 5.0
    min_samples: int = 20
    dwell_s: float = 60.0
    relapse_backoff: float = 2.0
    max_hold_s: float = 900.0
    slo_margin: float = 0.1
    poll_s: float = 1.0
    canary_period_s: float = 0.25
    saturation_ttl_s: float = 300.0
    gateway_site: str = "gateway"
    default_rate_per_s: float = 1.0
    cost_per_h: Mapping[str, float] = field(
        default_factory=lambda: {"edge": 0.01, "fog": 0.3, "cloud": 1.0}
    )
    default_rtt_ms: Mapping[str, float] = field(
        default_factory=lambda: {"edge": 2.0, "fog": 5.0, "cloud": 20.0}
    )
    overhead_ms: Mapping[str, float] = field(
        default_factory=lambda: {"edge": 1.0, "fog": 1.0, "cloud": 1.0}
    )
    default_service_ms: float = 2.0
    max_utilisation: float = 0.85


class ServedModules(Protocol):
    """What the controller reads of :class:`mesh.serving._manager.ServingManager`."""

    def deployments(self) -> list[DeploymentView]:
        """What serves each module now."""
        ...


class ModelVersions(Protocol):
    """Where the controller reads profiles (:class:`mesh.models._registry.ModelRegistry`)."""

    def get(self, name: str, ref: str = ...) -> ModelVersion:
        """One version of model ``name`` (``ref``: ``"v3"``, ``"production"``…)."""
        ...


class AgentSnapshot(Protocol):
    """What control reads of one agent's snapshot (:class:`mesh.edge._records.AgentView`)."""

    @property
    def agent_id(self) -> str:
        """The agent."""
        ...

    @property
    def state(self) -> str:
        """``online``, ``offline`` or ``unknown``."""
        ...

    @property
    def site(self) -> str | None:
        """Its site, once it said."""
        ...

    @property
    def last_heartbeat(self) -> Heartbeat | None:
        """Its last heartbeat, if any."""
        ...

    @property
    def last_heartbeat_at(self) -> float | None:
        """Local Unix time that heartbeat arrived."""
        ...

    @property
    def observed(self) -> ObservedState | None:
        """Its last observed state."""
        ...

    def health(self, now: float | None = None) -> str:
        """``online``, ``stale``, ``offline`` or ``unknown``."""
        ...


class EdgeAgents(Protocol):
    """What the controller reads of :class:`mesh.edge._bus.EdgeBus`."""

    def agent(self, agent_id: str) -> AgentSnapshot | None:
        """One agent's snapshot (its last observed state), or None if never heard of."""
        ...


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did (for tests and logs).

    Attributes:
        triggers: why it planned (empty: it did not).
        plan: the engine's plan, if it planned.
        plan_version: the stored desired-placement version, if a new one.
        migrations: the migrations that ended this round (done, failed or
            rolled back; module moves run on their own workers, so one that
            started in a round may end in a later one) and the pipeline
            route switches the round started.
    """

    triggers: tuple[str, ...] = ()
    plan: EnginePlan | None = None
    plan_version: int | None = None
    migrations: tuple[MigrationRecord, ...] = ()
