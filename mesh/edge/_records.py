"""What the edge bus hands out: its errors, snapshots of agents, stats and results.

Plain records with no MQTT client behind them, so the registry and the callers
of :class:`~mesh.edge._bus.EdgeBus` can use them without paho installed.

Errors (all :class:`~mesh.core._errors.MeshError`; HTTP statuses as declared)::

    EdgeBusError              the bus could not do what was asked (502)
    ├── EdgeConnectionError       the broker refused or could not be reached (502)
    ├── EdgeRequestTimeoutError   no reply within timeout_s (504; also a TimeoutError)
    └── EdgeInferenceError        the node answered with an error code (502); the gateway
                                  answers clients with the serving error its code maps to
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.protocol import AgentStatus, Heartbeat, InferReply, ObservedState
from mesh.core._errors import MeshError
from mesh.edge._flood import FloodReport

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "AgentView",
    "EdgeBusError",
    "EdgeBusStats",
    "EdgeConnectionError",
    "EdgeInferenceError",
    "EdgeRequestTimeoutError",
    "HealthSink",
    "HeartbeatSample",
    "InferResult",
]


class EdgeBusError(MeshError, RuntimeError):
    """The edge bus could not do what was asked (HTTP 502)."""

    http_status = 502


class EdgeConnectionError(EdgeBusError, ConnectionError):
    """The broker refused the bus or could not be reached (HTTP 502)."""


class EdgeRequestTimeoutError(EdgeBusError, TimeoutError):
    """No reply to an inference request within its timeout (HTTP 504)."""

    http_status = 504

    def __init__(self, *, module: str, node: str, correlation_id: str, timeout_s: float) -> None:
        self.module = module
        self.node = node
        self.correlation_id = correlation_id
        self.timeout_s = timeout_s
        super().__init__(
            f"no reply from {module} on {node} within timeout_s={timeout_s:g} "
            f"(correlation id {correlation_id})"
        )


class EdgeInferenceError(EdgeBusError):
    """The node answered an inference request with an error.

    Attributes:
        code: the protocol's error code (e.g. ``bad_input``, ``unknown_module``).
        expected: for ``bad_input``, the module's input signature as text.
    """

    def __init__(
        self, *, module: str, node: str, code: str, message: str, expected: list[str] | None = None
    ) -> None:
        self.module = module
        self.node = node
        self.code = code
        self.expected = expected or []
        detail = f"; expected {', '.join(self.expected)}" if self.expected else ""
        super().__init__(f"{module} on {node} failed ({code}): {message}{detail}")


class HealthSink(Protocol):
    """Where the gateway records agent health (the enrolment store does)."""

    def record_health(
        self,
        agent_id: str,
        *,
        state: str | None = None,
        seen_at: float | None = None,
        heartbeat_at: float | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Remember what was last seen of an agent."""
        ...


@dataclass(frozen=True, slots=True)
class HeartbeatSample:
    """One heartbeat in an agent's metrics ring.

    Attributes:
        received_at: local Unix time it arrived.
        heartbeat: the message.
    """

    received_at: float
    heartbeat: Heartbeat

    @property
    def cpu_percent(self) -> float:
        """Host CPU use."""
        return self.heartbeat.host.cpu_percent

    @property
    def mem_percent(self) -> float:
        """Host memory use."""
        return self.heartbeat.host.mem_percent


@dataclass(frozen=True, slots=True)
class AgentView:
    """A snapshot of one agent in the registry.

    Attributes:
        agent_id: the agent.
        state: ``online``, ``offline`` (status or last will) or ``unknown``.
        site: from its status or heartbeat.
        status: its last status message.
        status_received_at: local Unix time that status arrived.
        last_heartbeat: its last heartbeat, if any.
        last_heartbeat_at: local Unix time that heartbeat arrived.
        observed: its last observed state.
        desired_version: the last desired version this gateway published or saw.
        flood: what it sent over its rates (:mod:`mesh.edge._flood`), if it did.
    """

    agent_id: str
    state: str
    site: str | None
    status: AgentStatus | None
    status_received_at: float | None
    last_heartbeat: Heartbeat | None
    last_heartbeat_at: float | None
    observed: ObservedState | None
    desired_version: int | None
    flood: FloodReport | None = None

    def heartbeat_age_s(self, now: float | None = None) -> float | None:
        """Seconds since the last heartbeat arrived, or None."""
        if self.last_heartbeat_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_heartbeat_at)

    def health(self, now: float | None = None) -> str:
        """``online``, ``stale`` (online, 3 heartbeat periods silent), ``offline``, ``unknown``."""
        if self.state != "online":
            return self.state
        age = self.heartbeat_age_s(now)
        period = self.last_heartbeat.period_s if self.last_heartbeat is not None else 0.0
        if age is not None and period > 0 and age > 3 * period:
            return "stale"
        return "online"


@dataclass(frozen=True, slots=True)
class EdgeBusStats:
    """Counters since the gateway started."""

    messages: int = 0
    malformed: int = 0
    events: int = 0
    duplicate_events: int = 0
    requests: int = 0
    replies: int = 0
    unmatched_replies: int = 0
    timeouts: int = 0
    handler_errors: int = 0
    resent: int = 0


@dataclass(frozen=True, slots=True)
class InferResult:
    """A successful inference reply.

    Attributes:
        outputs: output tensors as (read-only) numpy arrays, by name.
        reply: the reply header (node, version, queue/compute times).
        latency_ms: round trip measured by the gateway.
    """

    outputs: dict[str, npt.NDArray[Any]]
    reply: InferReply
    latency_ms: float


@dataclass(slots=True)
class _Counters:
    # The mutable twin of EdgeBusStats; each owner (gateway, registry) keeps its
    # own under its own lock and the gateway adds them up in stats().
    messages: int = 0
    malformed: int = 0
    events: int = 0
    duplicate_events: int = 0
    requests: int = 0
    replies: int = 0
    unmatched_replies: int = 0
    timeouts: int = 0
    handler_errors: int = 0
    resent: int = 0

    def stats(self, *others: _Counters) -> EdgeBusStats:
        """These counters plus ``others``, as a frozen snapshot."""
        return EdgeBusStats(
            **{
                f.name: getattr(self, f.name) + sum(getattr(o, f.name) for o in others)
                for f in fields(EdgeBusStats)
            }
        )
