"""The canary's pure decision: which agents try a candidate, and the verdict table."""

from __future__ import annotations

import pytest

from mesh.control._canary import SideFigures, canary_agents, decide
from mesh.sdk._specs import Canary

POLICY = Canary(fraction=0.25, window_s=60, min_samples=30, error_margin=0.1, p95_ratio=1.5,
                max_wait_s=300)  # fmt: skip


def side(
    version: str,
    *,
    samples: int = 100,
    mae: float | None = 1.0,
    p95_ms: float | None = 10.0,
    requests: int = 100,
    failures: int = 0,
) -> SideFigures:
    return SideFigures(version, samples, mae, p95_ms, requests, failures)


PROD = side("v1")


# ---------------------------------------------------------------- which agents


def test_a_quarter_of_eight_agents_is_two_spread_over_them() -> None:
    assert canary_agents([f"a{i}" for i in range(8)], 0.25) == ["a0", "a4"]


def test_at_least_one_and_production_keeps_a_side() -> None:
    assert canary_agents(["b", "a"], 0.01) == ["a"]
    assert canary_agents(["a", "b", "c"], 1.0) == ["a", "b"]  # one left for production
    assert canary_agents(["solo"], 1.0) == ["solo"]
    assert canary_agents([], 0.5) == []


def test_the_choice_is_the_same_whatever_the_order() -> None:
    agents = ["c", "a", "e", "b", "d"]
    assert canary_agents(agents, 0.4) == canary_agents(sorted(agents), 0.4) == ["a", "c"]


def test_a_fraction_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        canary_agents(["a"], 0)


# ---------------------------------------------------------------- the verdict table


def test_before_the_window_it_waits_even_with_figures() -> None:
    verdict = decide(POLICY, candidate=side("v2", mae=0.1), production=PROD, elapsed_s=59)
    assert verdict.action == "wait"


def test_a_better_candidate_is_promoted() -> None:
    verdict = decide(POLICY, candidate=side("v2", mae=0.5), production=PROD, elapsed_s=60)
    assert verdict.action == "promote"
    assert "live error 0.5 vs 1" in verdict.reason


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        (side("v2", mae=0.95), "live error 0.95 is above production's 1 x 0.9"),
        (side("v2", mae=3.0), "live error 3 is above"),
        (side("v2", mae=0.5, p95_ms=15.1), "p95 15.1 ms is above production's 10 ms x 1.5"),
        (side("v2", mae=0.5, failures=5), "5 of 100 requests failed, production 0 of 100"),
    ],
)
def test_a_worse_candidate_is_never_promoted(candidate: SideFigures, why: str) -> None:
    for elapsed in (60.0, 200.0, 10_000.0):
        verdict = decide(POLICY, candidate=candidate, production=PROD, elapsed_s=elapsed)
        assert verdict.action == "roll_back"
        assert why in verdict.reason


def test_equal_error_passes_only_without_a_margin() -> None:
    same = side("v2", mae=1.0)
    assert decide(POLICY, candidate=same, production=PROD, elapsed_s=60).action == "roll_back"
    lenient = POLICY.model_copy(update={"error_margin": 0.0})
    assert decide(lenient, candidate=same, production=PROD, elapsed_s=60).action == "promote"


@pytest.mark.parametrize(
    ("candidate", "production", "missing"),
    [
        (side("v2", samples=29, mae=0.1), PROD, "candidate has 29 samples"),
        (side("v2", mae=0.1), side("v1", samples=3), "production has 3 samples"),
        (side("v2", mae=None), PROD, "candidate has 100 samples, no live error"),
        (side("v2", mae=0.1, p95_ms=None), PROD, "candidate has 100 samples, no p95"),
    ],
)
def test_not_enough_samples_waits_then_rolls_back_at_max_wait(
    candidate: SideFigures, production: SideFigures, missing: str
) -> None:
    waiting = decide(POLICY, candidate=candidate, production=production, elapsed_s=299)
    assert waiting.action == "wait" and missing in waiting.reason
    late = decide(POLICY, candidate=candidate, production=production, elapsed_s=300)
    assert late.action == "roll_back"
    assert late.reason.startswith("not enough to compare after 300 s: ") and missing in late.reason


def test_a_few_ms_of_p95_noise_on_a_fast_model_is_no_reason_to_roll_back() -> None:
    """p95 6.43 ms against production's 2.91 ms rolled a good candidate back in the drift run."""
    fast = side("v1", p95_ms=2.91)
    ok = decide(POLICY, candidate=side("v2", mae=0.5, p95_ms=6.43), production=fast, elapsed_s=60)
    assert ok.action == "promote"
    slow = decide(POLICY, candidate=side("v2", mae=0.5, p95_ms=8.0), production=fast, elapsed_s=60)
    assert slow.action == "roll_back" and "x 1.5 (or + 5 ms)" in slow.reason
    strict = POLICY.model_copy(update={"p95_slack_ms": 0.0})
    verdict = decide(
        strict, candidate=side("v2", mae=0.5, p95_ms=6.43), production=fast, elapsed_s=60
    )
    assert verdict.action == "roll_back"


def test_without_live_errors_p95_and_failures_decide() -> None:
    cand, prod = side("v2", mae=None), side("v1", mae=None)
    verdict = decide(POLICY, candidate=cand, production=prod, elapsed_s=60, scored=False)
    assert verdict.action == "promote" and "live error not scored" in verdict.reason
    slow = side("v2", mae=None, p95_ms=20.0)
    assert decide(POLICY, candidate=slow, production=prod, elapsed_s=60, scored=False).action == (
        "roll_back"
    )


def test_figures_are_json_ready() -> None:
    assert side("v2", failures=2).to_dict() == {
        "version": "v2",
        "samples": 100,
        "mae": 1.0,
        "p95_ms": 10.0,
        "requests": 100,
        "failures": 2,
    }
    assert side("v2", failures=2).failure_share == 0.02
    assert side("v2", requests=0).failure_share == 0.0
