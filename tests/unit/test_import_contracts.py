"""The import contracts in pyproject.toml fail when broken (`lint-imports`, scripts/check).

Each test lays out a skeleton of our packages (every layer of ``mesh``, plus
``placement``, ``edge_agent`` and ``functions``, importing nothing they may
not), checks that the real configuration keeps every contract on it, then adds
one forbidden import and checks that ``lint-imports`` exits non-zero naming
the broken contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
NAMES = {c["id"]: c["name"] for c in CONFIG["contracts"]}

LAYERS = [
    "cli",
    "scenario",
    "runtime",
    "dashboard",
    "ray",
    "edge",
    "control",
    "serving",
    "serving/replica",
    "models",
    "security",
    "compute",
    "sdk",
    "core",
]

# contract id -> (a module of the skeleton, what it imports that breaks the contract)
VIOLATIONS = {
    "layers": ("mesh/core/_bad.py", "import mesh.sdk._app\n"),
    "ray": ("mesh/compute/_bad.py", "import ray\n"),
    "paho": ("mesh/control/_bad.py", "import paho.mqtt.client\n"),
    "placement": ("placement/_bad.py", "import mesh.core._errors\n"),
    "edge-agent": ("edge_agent/_bad.py", "import mesh.core._errors\n"),
    "functions": ("mesh/sdk/_bad.py", "import functions.demo\n"),
    "acyclic": ("placement/_a.py", "import placement._b\n"),
}


def _skeleton(root: Path) -> None:
    def module(path: str, text: str = "") -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    module("mesh/__init__.py")
    for layer in LAYERS:
        module(f"mesh/{layer}/__init__.py")
    # What the contracts allow, so that every contract has something to check.
    module("mesh/sdk/_app.py", "import mesh.core._errors\n")
    module("mesh/core/_errors.py")
    module("mesh/ray/_backend.py", "import ray\nimport mesh.compute\n")
    module("mesh/edge/_bus.py", "import paho.mqtt.client\nimport mesh.serving\n")
    module("mesh/serving/replica/_mqtt.py", "import paho.mqtt.client\n")
    module("placement/__init__.py")
    module("placement/_b.py", "import placement._a\n")
    module("placement/_a.py")
    module("edge_agent/__init__.py", "import paho.mqtt.client\n")
    module("functions/__init__.py")
    module("functions/demo.py", "import mesh.sdk._app\nimport ray\n")
    # The real configuration, nothing else of pyproject.toml.
    (root / "pyproject.toml").write_text(_toml_section())


def _toml_section() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return text[text.index("[tool.importlinter]") :]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}  # the skeleton, not the real packages
    return subprocess.run(
        [str(lint), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_contract_has_a_violation_here() -> None:
    assert set(VIOLATIONS) == set(NAMES)


def test_the_skeleton_keeps_every_contract(tmp_path: Path) -> None:
    _skeleton(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in NAMES.values():
        assert f"{name} KEPT" in result.stdout


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, contract: str) -> None:
    _skeleton(tmp_path)
    path, text = VIOLATIONS[contract]
    (tmp_path / path).write_text(text)
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert f"{NAMES[contract]} BROKEN" in result.stdout, result.stdout + result.stderr


def test_ray_and_edge_do_not_import_each_other(tmp_path: Path) -> None:
    _skeleton(tmp_path)
    (tmp_path / "mesh/ray/_bad.py").write_text("import mesh.edge._bus\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert f"{NAMES['layers']} BROKEN" in result.stdout
    assert "mesh.ray is not allowed to import mesh.edge" in result.stdout
