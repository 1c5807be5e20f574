"""What the drift service needs of the rest and hands out: its seams, score windows, metrics.

Seams of :class:`~mesh.runtime._drift.DriftService` (fakes stand behind them in
unit tests): the edge bus (:class:`~mesh.edge._bus.EdgeBus`), where each
version's reference is read (:class:`~mesh.models._registry.ModelRegistry`),
and what tells agents which modules to summarise
(:class:`~mesh.edge._install.EdgeInstaller`); what it gives: a version's score
over a window (:class:`ScoreWindow`, the canary's measure without labels) and
the ``/metrics`` gauge (:func:`expose_drift`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.protocol import Event
from mesh.control._drift import DriftScore
from mesh.core._metrics import MetricsRegistry

__all__ = [
    "CandidateSource",
    "DriftBus",
    "DriftStatsSwitch",
    "Handler",
    "ScoreSource",
    "ScoreWindow",
    "VersionSource",
    "expose_drift",
]

Handler = Callable[[str, bytes], None]


class DriftBus(Protocol):
    """What the service needs of the edge bus (:class:`~mesh.edge._bus.EdgeBus`)."""

    prefix: str

    def subscribe(
        self, pattern: str, handler: Handler, *, timeout_s: float = 5.0
    ) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for each message on ``pattern``."""
        ...

    def on_event(self, handler: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``handler(event)`` once per distinct event under the prefix."""
        ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish ``payload`` on ``topic``."""
        ...


class _Metric(Protocol):
    @property
    def value(self) -> float: ...
    @property
    def mode(self) -> str: ...


class _Lineage(Protocol):
    @property
    def extra(self) -> Mapping[str, Any]: ...


class _Version(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def metric(self) -> _Metric | None: ...
    @property
    def lineage(self) -> _Lineage: ...
    @property
    def stage(self) -> str: ...


class VersionSource(Protocol):
    """Where references come from (:class:`~mesh.models._registry.ModelRegistry`)."""

    def get(self, name: str, ref: str = ...) -> _Version:
        """The version ``ref`` (``v3``, ``production``) of model ``name``."""
        ...


class CandidateSource(Protocol):
    """Every version of a model with its stage (:meth:`ModelRegistry.versions`)."""

    def versions(self, name: str) -> Sequence[_Version]:
        """The versions of ``name``, oldest first."""
        ...


class DriftStatsSwitch(Protocol):
    """What turns agents' drift summaries on and off (``EdgeInstaller.set_drift_stats``)."""

    def set_drift_stats(self, module: str, on: bool) -> list[str]:
        """Have every agent holding ``module`` summarise its inferences (or stop)."""
        ...


class ScoreSource(Protocol):
    """Where the scores are read (:class:`~mesh.runtime._drift.DriftService`)."""

    def scores(self) -> list[DriftScore]:
        """Each tracked module's score per site now."""
        ...


@dataclass(frozen=True, slots=True)
class ScoreWindow:
    """A version's samples and drift score over a window (:meth:`DriftService.version_score`).

    Attributes:
        n: inferences summarised.
        mae: the score (named as a live-error window's, which the canary reads).
    """

    n: int
    mae: float | None


def expose_drift(metrics: MetricsRegistry, drift: ScoreSource) -> None:
    """``mesh_module_drift_score{module,site}``, read from ``drift`` at each scrape."""
    metrics.gauge_callback(
        "mesh_module_drift_score",
        "Each tracked module's drift score per site (absent while too few samples).",
        ("module", "site"),
        lambda: [
            ((s.module, s.site), s.score)
            for s in drift.scores()
            if s.score is not None and s.samples > 0
        ],
    )
