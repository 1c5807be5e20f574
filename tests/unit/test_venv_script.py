"""scripts/_venv.sh installs once: check, test and demo one after the other run no pip.

A fake venv whose ``bin/python`` only logs its arguments stands in for the real
one, so the test sees every pip call the script makes and installs nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "_venv.sh"
# The extras each entry point asks for (scripts/check, scripts/test, scripts/demo).
CHECK, TEST, DEMO = "cloud,edge,dev", "cloud,edge,sim,dev", "cloud,edge,sim"


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    python.chmod(0o755)
    return tmp_path / "venv"


def _source(venv: Path, extras: str) -> str:
    result = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}" {extras}'],
        env={**os.environ, "MESH_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def _installs(venv: Path) -> list[str]:
    calls = venv.parent / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line.rsplit("[", 1)[1].rstrip("]") for line in lines if " -e " in line]


def test_test_then_check_then_demo_install_once(venv: Path) -> None:
    first = _source(venv, TEST)
    assert "first time" in first  # the first run says what it does
    assert _source(venv, CHECK) == ""
    assert _source(venv, DEMO) == ""
    assert _installs(venv) == ["cloud,dev,edge,sim"]


def test_more_extras_install_the_union_once(venv: Path) -> None:
    _source(venv, DEMO)
    assert "adding dev" in _source(venv, CHECK)
    _source(venv, TEST)
    _source(venv, DEMO)
    assert _installs(venv) == ["cloud,edge,sim", "cloud,dev,edge,sim"]


def test_a_changed_pyproject_reinstalls(venv: Path) -> None:
    _source(venv, CHECK)
    stamp = venv / ".fogmesh-installed"
    stamp.write_text("0" * 64 + " cloud,dev,edge\n")  # as if pyproject.toml had changed since
    assert "pyproject.toml changed" in _source(venv, CHECK)
    assert _installs(venv) == ["cloud,dev,edge", "cloud,dev,edge"]
