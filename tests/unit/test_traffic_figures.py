"""The traffic bench's figures: paired ratios to the best SUMO program, intervals, targets."""

from __future__ import annotations

from typing import Any

import pytest

from bench.traffic_figures import check_targets, ci95, summarise


def _rows(level: str, adaptive: list[float], others: dict[str, list[float]], **kw: Any) -> list:
    out = []
    for ctl, waits in {"adaptive": adaptive, **others}.items():
        for seed, wait in enumerate(waits):
            out.append(
                {"level": level, "seed": seed, "controller": ctl, "mean_wait_s": wait,
                 "mean_time_loss_s": wait * 2, "mean_trip_s": 60.0 + wait,
                 "mean_depart_delay_s": 0.0, "arrivals": kw.get("arrivals", {}).get(ctl, 100),
                 "teleports": kw.get("teleports", {}).get(ctl, 0), "vehicles": 100,
                 "count_mae": 0.1, "switches": 5}
            )  # fmt: skip
    return out


def test_the_best_program_is_picked_per_measure_and_fixed_never_is() -> None:
    rows = _rows("peak", [9, 10, 11], {"fixed": [1, 1, 1], "actuated": [10, 12, 14],
                 "delay_based": [11, 11, 11]}, arrivals={"adaptive": 99, "actuated": 100,
                 "delay_based": 98, "fixed": 200})  # fmt: skip
    ratios = summarise(rows, ["peak"])["peak"]["ratios"]
    assert ratios["mean_wait_s"]["best"] == "delay_based"  # mean 11 < actuated's 12
    assert ratios["mean_wait_s"]["ratio"] == pytest.approx(10 / 11, abs=1e-3)
    assert ratios["arrivals"]["best"] == "actuated"  # the most arrivals; fixed is no contender
    assert ratios["arrivals"]["ratio"] == pytest.approx(0.99)


def test_the_interval_is_paired_by_seed() -> None:
    # Adaptive is 10 % better on every seed, though the seeds differ a lot: a tight interval.
    rows = _rows("peak", [9, 18, 27], {"actuated": [10, 20, 30]})
    r = summarise(rows, ["peak"])["peak"]["ratios"]["mean_wait_s"]
    assert r["ci95"] == [0.9, 0.9] and r["seeds"] == 3
    assert ci95([1.0]) is None
    lo, hi = ci95([0.8, 1.0, 1.2]) or [0.0, 0.0]
    assert lo < 0.8 and hi > 1.2  # t with 2 degrees of freedom is wide


def test_targets_tighten_up_to_the_peak_and_ask_for_no_worse_beyond_it() -> None:
    peak = _rows("peak", [9.5, 9.5], {"actuated": [10, 10]})  # 0.95: misses <= 0.9
    over = _rows("peak+10", [9.5, 9.5], {"actuated": [10, 10]})  # 0.95: meets <= 1.0
    fewer = _rows("peak+20", [9, 9], {"actuated": [10, 10]}, arrivals={"adaptive": 90})
    jammed = _rows("medium", [5, 5], {"actuated": [10, 10]}, teleports={"adaptive": 1})
    levels = summarise(peak + over + fewer + jammed, ["peak", "peak+10", "peak+20", "medium"])
    targets = check_targets(levels)
    assert not targets["peak"]["met"] and not targets["peak"]["checks"]["mean_wait_s"]["met"]
    assert targets["peak+10"]["met"]
    assert not targets["peak+20"]["met"] and not targets["peak+20"]["checks"]["arrivals"]["met"]
    assert not targets["medium"]["met"] and not targets["medium"]["checks"]["teleports"]["met"]
