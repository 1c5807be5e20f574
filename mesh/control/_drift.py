"""Drift scores and when they fire: pure, no clock read, no I/O.

A module's drift check (:class:`~mesh.sdk._specs.Drift`) watches one statistic
per site against the reference of the version serving there:

- ``outputs`` / ``inputs``: agents summarise each inference's mean output (or
  input) value per heartbeat (count, mean, ``m2``); the window's summaries merge
  (:class:`MomentWindow`) and the score is ``|mean - reference mean| /
  reference std``.
- ``error``: the window's live MAE against labels (:mod:`mesh.control._live_error`)
  divided by the reference error (the version's validation MAE).

The reference (:class:`DriftReference`) is what the registry recorded at
registration: ``lineage.extra["drift_reference"] = {"outputs": {"mean", "std"},
"inputs": {...}, "error": float | None}``, and for ``error`` the version's
selection metric when it is an error (mode ``min``).

:class:`DriftLatch` fires once when a site's score reaches the threshold with
enough samples, and re-arms when the score falls below 0.8 x threshold or the
version serving there changes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "REARM_RATIO",
    "DriftLatch",
    "DriftReference",
    "DriftScore",
    "MomentWindow",
    "Moments",
    "ReferenceStats",
    "drift_hold",
    "error_score",
    "moment_score",
]

#: A fired site re-arms when its score falls below this share of the threshold.
REARM_RATIO = 0.8

Statistic = Literal["outputs", "inputs", "error"]


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, mean and ``m2`` (sum of squared deviations) of some values.

    Example:
        >>> Moments(2, 2.0, 2.0).merge(Moments(1, 5.0, 0.0))
        Moments(count=3, mean=3.0, m2=8.0)
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def merge(self, other: Moments) -> Moments:
        """Both sets of values as one (Chan et al.'s parallel update)."""
        if other.count <= 0:
            return self
        if self.count <= 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        return Moments(
            total,
            self.mean + delta * other.count / total,
            self.m2 + other.m2 + delta * delta * self.count * other.count / total,
        )


@dataclass(frozen=True, slots=True)
class ReferenceStats:
    """The reference mean and standard deviation of a per-inference mean value."""

    mean: float
    std: float


@dataclass(frozen=True, slots=True)
class DriftReference:
    """What a version's live statistics are compared with.

    Attributes:
        outputs: per-inference mean output (the first output, or the one named).
        inputs: per-inference mean input.
        error: the validation error (MAE), None if unknown.
        by_output: each output by name, when the reference names them.
    """

    outputs: ReferenceStats | None = None
    inputs: ReferenceStats | None = None
    error: float | None = None
    by_output: Mapping[str, ReferenceStats] | None = None

    @classmethod
    def from_version(
        cls, extra: Mapping[str, Any], metric: tuple[float, str] | None = None
    ) -> DriftReference:
        """From a version's ``lineage.extra`` and its selection metric ``(value, mode)``.

        The error is ``drift_reference["error"]`` if given, else the metric's value
        when its mode is ``min`` (an error). A malformed part is left out.

        Example:
            >>> ref = DriftReference.from_version(
            ...     {"drift_reference": {"outputs": {"mean": 2.0, "std": 0.5}}}, (0.7, "min")
            ... )
            >>> ref.outputs, ref.error
            (ReferenceStats(mean=2.0, std=0.5), 0.7)
        """
        raw = extra.get("drift_reference")
        body: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        error = _number(body.get("error"))
        if error is None and metric is not None and metric[1] == "min":
            error = _number(metric[0])
        named = body.get("by_output")
        by_output = (
            {str(k): s for k, v in named.items() if (s := _stats(v)) is not None}
            if isinstance(named, Mapping)
            else None
        )
        return cls(_stats(body.get("outputs")), _stats(body.get("inputs")), error, by_output)

    def stats_for(self, statistic: Statistic, output: str | None) -> ReferenceStats | None:
        """The reference of ``inputs`` or ``outputs`` (``output`` by name when known)."""
        if statistic == "inputs":
            return self.inputs
        if output is not None and self.by_output and output in self.by_output:
            return self.by_output[output]
        return self.outputs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _stats(value: Any) -> ReferenceStats | None:
    if not isinstance(value, Mapping):
        return None
    mean, std = _number(value.get("mean")), _number(value.get("std"))
    if mean is None or std is None or std < 0:
        return None
    return ReferenceStats(mean, std)


def _floor(scale: float, around: float) -> float:
    """A scale never 0: a reference that did not vary still scores a change finitely."""
    return max(scale, 1e-6 * max(1.0, abs(around)))


def moment_score(window: Moments, reference: ReferenceStats) -> float | None:
    """``|window mean - reference mean| / reference std`` (None without samples).

    Example:
        >>> moment_score(Moments(10, 3.0, 1.0), ReferenceStats(2.0, 0.5))
        2.0
    """
    if window.count <= 0:
        return None
    return abs(window.mean - reference.mean) / _floor(reference.std, reference.mean)


def error_score(mae: float | None, reference_error: float) -> float | None:
    """Live MAE over the reference error (None without samples).

    Example:
        >>> error_score(1.5, 0.5)
        3.0
    """
    if mae is None:
        return None
    return mae / _floor(reference_error, 0.0)


@dataclass(frozen=True, slots=True)
class _Summary:
    at: float
    version: str | None
    inputs: Moments
    outputs: Mapping[str, Moments]


class MomentWindow:
    """Heartbeat summaries of one (module, site), newest last, bounded.

    Example:
        >>> w = MomentWindow()
        >>> w.add(10.0, "v1", Moments(4, 1.0, 0.0), {"y": Moments(4, 2.0, 0.0)})
        >>> w.add(20.0, "v1", Moments(4, 3.0, 0.0), {"y": Moments(4, 2.0, 0.0)})
        >>> w.moments("inputs", None, since=0.0, version="v1")
        Moments(count=8, mean=2.0, m2=8.0)
        >>> w.moments("outputs", "y", since=15.0, version="v1").count
        4
    """

    def __init__(self, max_summaries: int = 4096) -> None:
        """Empty; the oldest summary goes once ``max_summaries`` are held."""
        self._summaries: deque[_Summary] = deque(maxlen=max_summaries)

    def add(
        self, at: float, version: str | None, inputs: Moments, outputs: Mapping[str, Moments]
    ) -> None:
        """One heartbeat's summary, received at ``at``."""
        self._summaries.append(_Summary(at, version, inputs, dict(outputs)))

    def prune(self, before: float) -> None:
        """Forget summaries received before ``before``."""
        while self._summaries and self._summaries[0].at < before:
            self._summaries.popleft()

    def latest_version(self) -> str | None:
        """The version of the newest summary (None when none)."""
        return self._summaries[-1].version if self._summaries else None

    def moments(
        self, statistic: Statistic, output: str | None, *, since: float, version: str | None
    ) -> Moments:
        """The merged moments of ``statistic`` since ``since`` for ``version``.

        For ``outputs``, the output named ``output``, else each summary's first.
        """
        total = Moments()
        for s in reversed(self._summaries):
            if s.at < since:
                break
            if version is not None and s.version != version:
                continue
            if statistic == "inputs":
                total = total.merge(s.inputs)
            elif output is not None:
                total = total.merge(s.outputs.get(output, Moments()))
            elif s.outputs:
                total = total.merge(next(iter(s.outputs.values())))
        return total


@dataclass(frozen=True, slots=True)
class DriftScore:
    """A site's drift score now.

    Attributes:
        module: the module.
        site: the site.
        version: the version serving there (whose reference it is scored against).
        statistic: ``outputs``, ``inputs`` or ``error``.
        score: the score (None: too few samples or no reference).
        samples: samples in the window.
        threshold: the score at which drift is declared.
        drifting: whether the site is in drift (fired and not re-armed).
        reason: why there is no score, when there is none.
    """

    module: str
    site: str
    version: str | None
    statistic: str
    score: float | None
    samples: int
    threshold: float
    drifting: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the dashboard's ``drift`` list)."""
        return {
            "module": self.module,
            "site": self.site,
            "version": self.version,
            "statistic": self.statistic,
            "score": None if self.score is None else round(self.score, 4),
            "samples": self.samples,
            "threshold": self.threshold,
            "drifting": self.drifting,
            "reason": self.reason,
        }


class DriftLatch:
    """Fire once per drift at a site; re-arm below 0.8 x threshold or on a new version.

    Example:
        >>> latch = DriftLatch()
        >>> latch.update("j1", "v1", 3.0, samples=50, threshold=2.0, min_samples=20)
        True
        >>> latch.update("j1", "v1", 3.5, samples=60, threshold=2.0, min_samples=20)
        False
        >>> latch.update("j1", "v1", 1.0, samples=60, threshold=2.0, min_samples=20)
        False
        >>> latch.update("j1", "v1", 2.5, samples=60, threshold=2.0, min_samples=20)
        True
    """

    def __init__(self) -> None:
        """Every site armed."""
        self._fired: dict[str, str | None] = {}  # site -> the version it fired for

    def drifting(self, site: str) -> bool:
        """Whether ``site`` fired and has not re-armed."""
        return site in self._fired

    def update(
        self,
        site: str,
        version: str | None,
        score: float | None,
        *,
        samples: int,
        threshold: float,
        min_samples: int,
    ) -> bool:
        """Take the site's score now; True when this is the moment to fire."""
        if site in self._fired and self._fired[site] != version:
            del self._fired[site]  # a new version serves there: judge it afresh
        if score is None or samples < min_samples:
            return False
        if site in self._fired:
            if score < REARM_RATIO * threshold:
                del self._fired[site]
            return False
        if score >= threshold:
            self._fired[site] = version
            return True
        return False

    def release(self, site: str) -> None:
        """Arm ``site`` again (a fire that was held back: it fires once the hold lifts)."""
        self._fired.pop(site, None)

    def forget(self, keep: Iterable[str]) -> None:
        """Forget sites not in ``keep``."""
        wanted = set(keep)
        for site in [s for s in self._fired if s not in wanted]:
            del self._fired[site]


def drift_hold(
    versions: Iterable[tuple[str, str]], max_rollbacks: int, *, serving: str | None = None
) -> str | None:
    """Why a model's drift event must wait, from its versions' ``(version, stage)``; None: fire.

    A site ``serving`` a version older than production is still to be reached
    by the promotion (an agent installing, a replica redeploying): its drift is
    the old version's.
    A candidate newer than production is under trial: its canary answers the
    drift, and a retraining now would race it. Candidates newer than
    production that were archived were rolled back (or failed to install):
    after ``max_rollbacks`` of them, retraining stops until a version is
    promoted. Without a production version nothing holds.

    Example:
        >>> drift_hold([("v1", "production"), ("v2", "candidate")], 2)
        'candidate v2 is under trial: its canary answers this drift'
        >>> drift_hold([("v1", "production"), ("v2", "archived"), ("v3", "archived")], 2)[:49]
        '2 candidates after production v1 were rolled back'
        >>> drift_hold([("v1", "archived"), ("v2", "production"), ("v3", "archived")], 2) is None
        True
        >>> drift_hold([("v1", "archived"), ("v2", "production")], 2, serving="v1")
        'v1 is older than production v2: the promotion reaches this site'

    """
    listed = [(_version_number(v), v, stage) for v, stage in versions]
    production = max((n for n, _, stage in listed if stage == "production"), default=None)
    if production is None:
        return None
    if serving is not None and 0 <= _version_number(serving) < production:
        return f"{serving} is older than production v{production}: the promotion reaches this site"
    newer = sorted((n, v, stage) for n, v, stage in listed if n > production)
    trial = [v for _, v, stage in newer if stage == "candidate"]
    if trial:
        return f"candidate {trial[-1]} is under trial: its canary answers this drift"
    rolled_back = sum(1 for _, _, stage in newer if stage == "archived")
    if rolled_back >= max_rollbacks:
        return (
            f"{rolled_back} candidates after production v{production} were rolled back "
            f"(max_rollbacks {max_rollbacks}): no more drift events until a version is promoted"
        )
    return None


def _version_number(version: str) -> int:
    digits = version.removeprefix("v")
    return int(digits) if digits.isdigit() else -1
