from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesh import ConfigError, Mesh
from mesh.cli import app as cli
from mesh.cli import parse_cli_args
from mesh.sdk._loader import load_apps

USER_FILE = textwrap.dedent(
    """
    from mesh import Mesh

    app = Mesh("user")

    @app.function(tier="fog")
    def greet(name: str, times: int = 1) -> str:
        return " ".join(["hi " + name] * times)
    """
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "userfns.py"
    path.write_text(USER_FILE)
    return path


def test_load_apps_from_a_file_and_a_module(user_file: Path) -> None:
    [app] = load_apps(str(user_file))
    assert app.name == "user" and "greet" in app.functions
    [demo] = load_apps("functions.demo")
    assert {"collect_counts", "demand_profiles", "tune_forecaster", "signal_plan"} <= set(
        demo.functions
    )


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.py: no such file"):
        load_apps(str(tmp_path / "nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("import does_not_exist_zz\n")
    with pytest.raises(ConfigError, match=r"broken.py: import failed: ModuleNotFoundError"):
        load_apps(str(broken))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no mesh app"):
        load_apps(str(empty))


def test_cli_args_keep_strings_and_parse_json() -> None:
    app = Mesh("t")

    @app.function()
    def f(name: str, n: int, xs: list[float]) -> None: ...

    assert parse_cli_args(app.get("f"), ["name=007", "n=3", "xs=[1, 2.5]"]) == {
        "name": "007",
        "n": 3,
        "xs": [1, 2.5],
    }


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_deploy_then_list(user_file: Path, cli_env: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["deploy", str(user_file)])
    assert result.exit_code == 0, result.output
    assert "greet" in result.output
    listed = runner.invoke(cli, ["functions"])
    assert listed.exit_code == 0 and "greet" in listed.output and "fog" in listed.output
    again = runner.invoke(cli, ["deploy", str(user_file)])
    assert "updated" in again.output


def test_invoke_unknown_function_is_a_clear_error(cli_env: Path) -> None:
    result = CliRunner().invoke(cli, ["invoke", "nothing_here"])
    assert result.exit_code == 1
    assert "unknown function 'nothing_here'" in result.output
    assert not (cli_env / "cluster.json").exists()


def test_deploy_bad_file_changes_nothing(tmp_path: Path, cli_env: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from mesh import Mesh\napp = Mesh('b')\n@app.function(tier='moon')\ndef f(): pass\n"
    )
    result = CliRunner().invoke(cli, ["deploy", str(bad)])
    assert result.exit_code == 1
    assert "unknown tier 'moon'" in result.output
    assert "no functions deployed" in CliRunner().invoke(cli, ["functions"]).output


def test_runs_and_down_without_a_cluster(cli_env: Path) -> None:
    assert "no runs recorded yet" in CliRunner().invoke(cli, ["runs"]).output
    result = CliRunner().invoke(cli, ["down"])
    assert result.exit_code == 1 and "no cluster is up" in result.output


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("up", "down", "status", "deploy", "functions", "invoke", "runs", "demo"):
        assert command in result.output


def test_import_mesh_does_not_import_ray() -> None:
    code = "import sys, mesh, mesh.cli; print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
