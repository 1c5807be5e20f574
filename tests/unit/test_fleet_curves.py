"""The fleet sweep's growth: log-log slopes against N, flags, and the curves' PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench._fleet_curves import growth, plot, points, table
from bench.fleet import SizeFailed, parse_sizes, sweep


def _rows(power: float, sizes: tuple[int, ...] = (100, 1000, 5000)) -> list[dict[str, Any]]:
    return [
        {"agents": n, "cp_cpu_cores": 0.001 * n, "rollout_s": 1e-4 * n**power, "cp_rss_mb": 300.0}
        for n in sizes
    ]


def test_slopes_are_right_on_synthetic_curves() -> None:
    grown = growth(_rows(2.0))
    assert grown["cp_cpu_cores"]["top"] == pytest.approx(1.0)
    assert grown["cp_cpu_cores"]["overall"] == pytest.approx(1.0)
    assert not grown["cp_cpu_cores"]["superlinear"]
    assert grown["cp_rss_mb"]["top"] == pytest.approx(0.0)  # flat
    assert grown["rollout_s"]["top"] == pytest.approx(2.0)
    assert grown["rollout_s"]["superlinear"]
    assert "why" in grown["rollout_s"]


def test_the_reason_given_follows_how_the_broker_saved() -> None:
    every = [dict(row, broker_autosave="every-change") for row in _rows(2.0)]
    each = [dict(row, broker_autosave="each-second") for row in _rows(2.0)]
    assert "saves its whole database" in growth(every)["rollout_s"]["why"]
    assert "simulator's installs" in growth(each)["rollout_s"]["why"]


def test_the_top_slope_is_between_the_two_largest_sizes() -> None:
    rows = [
        {"agents": 100, "rollout_s": 1.0},
        {"agents": 1000, "rollout_s": 10.0},  # linear up to here
        {"agents": 2000, "rollout_s": 40.0},  # quadratic from here
    ]
    entry = growth(rows)["rollout_s"]
    assert entry["top"] == pytest.approx(2.0)
    assert 1.0 < entry["overall"] < 2.0
    assert entry["superlinear"]


def test_unusable_values_are_left_out_of_the_fit() -> None:
    rows = [
        *_rows(1.0),
        {"agents": 20000, "error": "MemoryError: "},
        {"agents": 10000, "cp_cpu_cores": float("nan")},
        {"agents": 30000, "cp_cpu_cores": None},
    ]
    entry = growth(rows)["cp_cpu_cores"]
    assert entry["sizes"] == [100, 1000, 5000]
    assert entry["top"] == pytest.approx(1.0)
    assert points(rows, "cp_cpu_cores")[-1] == (5000.0, 5.0)


def test_a_size_that_failed_part_way_keeps_what_it_measured() -> None:
    rows = [*_rows(1.0), {"agents": 10000, "error": "AssertionError: late", "cp_cpu_cores": 40.0}]
    entry = growth(rows)["cp_cpu_cores"]
    assert entry["sizes"] == [100, 1000, 5000, 10000]
    assert entry["top"] == pytest.approx(3.0) and entry["superlinear"]


def test_one_size_has_no_slope_and_is_not_flagged() -> None:
    entry = growth(_rows(2.0, sizes=(100,)))["rollout_s"]
    assert entry["top"] is None and entry["overall"] is None
    assert not entry["superlinear"]
    assert "rollout_s" in table(growth(_rows(2.0, sizes=(100,))))


def test_the_table_marks_superlinear_measures() -> None:
    text = table(growth(_rows(2.0)))
    assert next(line for line in text.splitlines() if line.startswith("rollout_s")).count(
        "SUPERLINEAR"
    )
    assert "SUPERLINEAR" not in next(
        line for line in text.splitlines() if line.startswith("cp_cpu_cores")
    )


def test_the_plot_is_a_non_empty_png(tmp_path: Path) -> None:
    path = tmp_path / "curves" / "fleet-sweep.png"
    plot([*_rows(1.3), {"agents": 9000, "error": "boom"}], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_a_sweep_records_a_failed_size_and_goes_on(tmp_path: Path) -> None:
    def measure(agents: int) -> dict[str, object]:
        if agents == 40:
            raise MemoryError("no room for 40")
        if agents == 60:
            raise SizeFailed({"agents": 60, "rollout_s": 9.0}, AssertionError("not back"))
        return {"agents": agents, "cp_cpu_cores": 0.01 * agents}

    out = tmp_path / "sweep.json"
    sweep([20, 40, 60, 80], out, measure)
    written = json.loads(out.read_text())
    assert [row["agents"] for row in written["sweep"]] == [20, 40, 60, 80]
    assert written["sweep"][1]["error"] == "MemoryError: no room for 40"
    assert written["sweep"][2] == {
        "agents": 60,
        "rollout_s": 9.0,
        "error": "AssertionError: not back",
    }
    assert math.isclose(written["growth"]["cp_cpu_cores"]["top"], 1.0)
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("text", ["100,x", "0", "100,-5", ""])
def test_bad_sizes_are_refused_with_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match="--sweep"):
        parse_sizes(text)


def test_sizes_parse() -> None:
    assert parse_sizes("100, 1_000,5000") == [100, 1000, 5000]
