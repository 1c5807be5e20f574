"""One concept per module: no source module over 600 lines (the project's habit, checked)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mesh", "placement", "edge_agent", "functions")
LIMIT = 600


def test_no_module_is_over_600_lines() -> None:
    over = sorted(
        f"{path.relative_to(ROOT)}: {n} lines"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > LIMIT
    )
    assert over == [], "split these by concept: " + "; ".join(over)
