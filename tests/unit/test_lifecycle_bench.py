"""bench/lifecycle.py: its scenario copies (the loop on or off, another seed or length, their
own outputs) and its error windows."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.lifecycle import _copy, drift_figures

ROOT = Path(__file__).resolve().parents[2]


def test_a_copy_takes_the_seed_and_the_loop_and_writes_elsewhere(tmp_path: Path) -> None:
    scenario = ROOT / "scenarios" / "drift.yaml"
    copy = _copy(scenario, tmp_path, lifecycle=False, seed=12)
    try:
        data = yaml.safe_load(copy.read_text())
        assert copy.parent == scenario.parent  # relative paths in it still resolve
        assert data["lifecycle"] is False and data["seed"] == 12
        assert data["name"] == "drift-without-seed12"
        assert data["outputs"]["dir"] == str(tmp_path / "drift-without-seed12")
        assert data["faults"] == yaml.safe_load(scenario.read_text())["faults"]
    finally:
        copy.unlink()
    same = _copy(scenario, tmp_path, lifecycle=True, seed=None)
    try:
        data = yaml.safe_load(same.read_text())
        assert data["seed"] == yaml.safe_load(scenario.read_text())["seed"]
        assert data["name"] == "drift-with"
    finally:
        same.unlink()


def test_a_copy_takes_another_length(tmp_path: Path) -> None:
    scenario = ROOT / "scenarios" / "drift.yaml"
    copy = _copy(scenario, tmp_path, lifecycle=True, seed=None, duration_s=720)
    try:
        data = yaml.safe_load(copy.read_text())
        assert data["simulation"]["demand"]["duration_s"] == 720
        assert data["name"] == "drift-with-720s"
    finally:
        copy.unlink()


def test_error_windows_take_only_the_buckets_wholly_inside_them() -> None:
    # 30 s buckets; drift at 120 s, promotion at 422 s: the bucket [420, 450) still
    # holds two seconds of the old counter's misreads, so it is neither during nor after.
    series = {"A0": [[105.0, 0.5], [135.0, 9.0], [405.0, 9.0], [435.0, 2.0], [465.0, 0.6]]}
    report = {
        "summary": {
            "lifecycle": {"detect_s": 150.0, "candidate_s": 300.0, "promoted_s": 422.0},
            "count_error_drift": {"sites": ["A0"], "at_s": 120.0},
            "count_error_over_time": series,
            "count_error_undrifted_over_time": {"A0": [[435.0, 9.9], [465.0, 0.5]]},
            "count_error_bucket_s": 30.0,
        }
    }
    error = drift_figures(report)["error"]
    assert error["before"] == 0.5  # [90, 120) ends at the drift: wholly before it
    assert error["during"] == 9.0 and error["after"] == 0.6
    assert error["undrifted"] == 0.5 and error["after_ratio"] == 1.2
