"""bench/lifecycle.py's scenario copies: the loop on or off, another seed, their own outputs."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.lifecycle import _copy

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
