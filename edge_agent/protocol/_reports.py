"""What an agent reports: its observed state, its status (and last will), its heartbeat."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._envelope import Envelope, TensorSpec
from ._frames import ErrorCode

__all__ = [
    "AgentFaults",
    "AgentStatus",
    "DriftSummary",
    "Heartbeat",
    "HostMetrics",
    "InstalledModule",
    "ModuleError",
    "ModuleStats",
    "ObservedState",
    "OutboxStats",
    "ValueMoments",
]


class InstalledModule(BaseModel):
    """A module an agent serves (or offloads)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    sha256: str | None = None
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    provider: str | None = None
    route_mode: Literal["local", "offload", "remote"] = "local"
    route_epoch: int = 0
    ready_ts: float | None = None


class ModuleError(BaseModel):
    """Why a desired module is not (or not at the desired version) installed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    module: str
    version: str | None = None
    code: ErrorCode
    message: str


class ObservedState(Envelope):
    """What an agent runs (retained, on ``observed``); ``version`` = desired version acted on."""

    kind: Literal["observed"] = "observed"
    agent: str
    version: int = Field(ge=0)
    installed: list[InstalledModule] = Field(default_factory=list)
    errors: list[ModuleError] = Field(default_factory=list)
    pipelines: list[str] = Field(default_factory=list)


class AgentStatus(Envelope):
    """Retained liveness; the agent's last will carries ``state="offline"``."""

    kind: Literal["status"] = "status"
    agent: str
    state: Literal["online", "offline"]
    site: str | None = None
    agent_version: str | None = None
    reason: str | None = None


class HostMetrics(BaseModel):
    """psutil metrics of the device."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cpu_percent: float
    mem_percent: float
    mem_available_mb: float
    rss_mb: float
    load1: float
    load5: float
    load15: float
    temperature_c: float | None = None


class ValueMoments(BaseModel):
    """Count, mean and sum of squared deviations (Welford's ``m2``) of some values."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    count: int = Field(0, ge=0)
    mean: float = 0.0
    m2: float = Field(0.0, ge=0)


class DriftSummary(BaseModel):
    """Since the last heartbeat: each inference's mean input and mean output value.

    One sample per row of the batch axis; ``outputs`` by output name. The control
    plane compares them with the version's reference (drift detection).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str | None = None
    inputs: ValueMoments = Field(default_factory=ValueMoments)
    outputs: dict[str, ValueMoments] = Field(default_factory=dict)


class ModuleStats(BaseModel):
    """Per-module counters since start, and latency over the recent window."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str | None = None
    requests: int = 0
    errors: int = 0
    expired: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    queue_depth: int = 0
    summary: DriftSummary | None = Field(
        None, description="What it computed since the last heartbeat (None: nothing)."
    )


class OutboxStats(BaseModel):
    """The disk buffer of outgoing events."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    depth: int = 0
    dropped: int = 0
    delivered: int = 0
    in_memory: int = Field(
        0, description="Events held in memory (in depth) because the disk would not take them."
    )
    full: bool = Field(False, description="The disk would not take the last write.")


class AgentFaults(BaseModel):
    """What went wrong on the device since the agent started, and how it coped."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    quarantined: list[str] = Field(
        default_factory=list,
        description="Damaged files moved aside (kept for inspection); the agent started afresh.",
    )
    thread_failures: dict[str, int] = Field(
        default_factory=dict, description="Background threads that raised (and were restarted)."
    )
    clock_offset_s: float = Field(
        0.0, description="Control plane's clock minus this device's, as the agent estimates it."
    )


class Heartbeat(Envelope):
    """Periodic metrics, not retained."""

    kind: Literal["heartbeat"] = "heartbeat"
    agent: str
    site: str | None = None
    seq: int = 0
    uptime_s: float = 0.0
    period_s: float = 0.0
    host: HostMetrics
    modules: dict[str, ModuleStats] = Field(default_factory=dict)
    outbox: OutboxStats = Field(default_factory=OutboxStats)
    faults: AgentFaults = Field(default_factory=AgentFaults)
