"""The canary's decision: which agents try a candidate, and whether it is promoted.

Pure: figures in, a verdict out; no clock read, no I/O. The service that
installs, watches and acts is :mod:`mesh.runtime._canary`.

A candidate serves on ``ceil(fraction x agents)`` agents (at least one, and one
fewer than all where there are two or more, so production keeps a side to be
compared with), spread evenly over the agents in id order
(:func:`canary_agents`). Each side's figures over the window
(:class:`SideFigures`) are compared by :func:`decide`:

=====================================================  ==========================
condition                                              verdict
=====================================================  ==========================
before ``window_s``                                    wait
a side under ``min_samples`` (scored samples, or       wait; roll back from
requests when live errors are not scored), or no p95   ``max_wait_s`` on
live error (or drift score) above production x         roll back
(1 - ``error_margin``)
p95 above production x ``p95_ratio`` (+ slack)         roll back
failed requests' share above production's + 1 point   roll back
otherwise                                              promote
=====================================================  ==========================

So a candidate that is worse on any count is never promoted, and one that
cannot be judged is rolled back at ``max_wait_s``.

Example:
    >>> from mesh.sdk._specs import Canary
    >>> cand = SideFigures("v2", samples=40, mae=0.5, p95_ms=2.0, requests=40, failures=0)
    >>> prod = SideFigures("v1", samples=90, mae=0.8, p95_ms=1.9, requests=90, failures=0)
    >>> decide(Canary(window_s=30), candidate=cand, production=prod, elapsed_s=31).action
    'promote'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mesh.sdk._specs import Canary

__all__ = ["FAILURE_SLACK", "SideFigures", "Verdict", "canary_agents", "decide"]

#: How much more of its requests the candidate may fail than production (a share).
FAILURE_SLACK = 0.01


@dataclass(frozen=True, slots=True)
class SideFigures:
    """One side of the comparison (candidate or production) over the canary's window.

    Attributes:
        version: the version on this side.
        samples: scored samples (outputs joined with labels), or, when live
            errors are not scored, the requests served.
        mae: the mean absolute error of those samples (None when not scored).
        p95_ms: the side's p95 latency (median over its agents' heartbeats).
        requests: requests (pipeline inputs included) served in the window.
        failures: of those, how many failed.
    """

    version: str
    samples: int
    mae: float | None
    p95_ms: float | None
    requests: int
    failures: int

    @property
    def failure_share(self) -> float:
        """Failed requests' share (0 with no requests)."""
        return self.failures / self.requests if self.requests > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``compared`` step's figures)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do now: ``wait``, ``promote`` or ``roll_back``, and why."""

    action: Literal["wait", "promote", "roll_back"]
    reason: str


def canary_agents(agents: Sequence[str], fraction: float) -> list[str]:
    """The agents that try the candidate: ``ceil(fraction x n)``, spread over ``agents``.

    At least one; with two or more agents, at most all but one (production keeps a side).

    Raises:
        ValueError: ``fraction`` is not in (0, 1].

    Example:
        >>> canary_agents(["a", "b", "c", "d", "e", "f", "g", "h"], 0.25)
        ['a', 'e']
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(set(agents))
    n = len(ordered)
    if n == 0:
        return []
    count = max(1, math.ceil(fraction * n - 1e-9))
    if n >= 2:
        count = min(count, n - 1)
    step = n / count
    return [ordered[int(i * step)] for i in range(count)]


def _enough(side: SideFigures, policy: Canary, scored: bool) -> bool:
    if side.samples < policy.min_samples or side.p95_ms is None:
        return False
    return side.mae is not None or not scored


def decide(
    policy: Canary,
    *,
    candidate: SideFigures,
    production: SideFigures,
    elapsed_s: float,
    scored: bool = True,
    measure: str = "live error",
) -> Verdict:
    """The verdict on ``candidate`` after ``elapsed_s`` of its canary.

    Args:
        policy: the module's canary policy.
        candidate: the candidate's figures (its canary agents).
        production: production's figures (the other agents).
        elapsed_s: seconds since the canary started serving.
        scored: whether live errors are scored (else p95 and failures alone decide).
        measure: what ``mae`` holds, for the reasons: ``live error`` (against
            labels) or ``drift score`` (against each version's own reference).
    """
    if elapsed_s < policy.window_s:
        return Verdict("wait", f"{elapsed_s:.0f} of {policy.window_s:g} s")
    short = [
        f"{name} has {side.samples} samples"
        + ("" if side.p95_ms is not None else ", no p95")
        + ("" if side.mae is not None or not scored else f", no {measure}")
        for name, side in (("candidate", candidate), ("production", production))
        if not _enough(side, policy, scored)
    ]
    if short:
        if elapsed_s >= policy.max_wait_s:
            return Verdict(
                "roll_back",
                f"not enough to compare after {policy.max_wait_s:g} s: {'; '.join(short)} "
                f"(each side needs {policy.min_samples} samples and a p95)",
            )
        return Verdict("wait", "; ".join(short))
    assert candidate.p95_ms is not None and production.p95_ms is not None  # _enough
    if scored:
        assert candidate.mae is not None and production.mae is not None
        bound = production.mae * (1 - policy.error_margin)
        if candidate.mae > bound:
            return Verdict(
                "roll_back",
                f"{measure} {candidate.mae:.4g} is above production's {production.mae:.4g}"
                + (f" x {1 - policy.error_margin:g}" if policy.error_margin else ""),
            )
    p95_bound = max(production.p95_ms * policy.p95_ratio, production.p95_ms + policy.p95_slack_ms)
    if candidate.p95_ms > p95_bound:
        return Verdict(
            "roll_back",
            f"p95 {candidate.p95_ms:.3g} ms is above production's {production.p95_ms:.3g} ms "
            f"x {policy.p95_ratio:g} (or + {policy.p95_slack_ms:g} ms)",
        )
    if candidate.failure_share > production.failure_share + FAILURE_SLACK:
        return Verdict(
            "roll_back",
            f"{candidate.failures} of {candidate.requests} requests failed, production "
            f"{production.failures} of {production.requests}",
        )
    error = (
        f"{measure} {candidate.mae:.4g} vs {production.mae:.4g}, "
        if scored
        else "live error not scored, "
    )
    return Verdict(
        "promote",
        f"{error}p95 {candidate.p95_ms:.3g} vs {production.p95_ms:.3g} ms, failures "
        f"{candidate.failures}/{candidate.requests} vs {production.failures}/{production.requests}",
    )
