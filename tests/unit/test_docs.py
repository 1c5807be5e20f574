"""Every code block of README.md and ARCHITECTURE.md is run or checked by a named test.

A block's tag (the comment before it, see :mod:`tests.support.docs`) names the
tests that cover it. The ones here need nothing running: the decorator example
runs as written, cheap commands run in a throwaway data dir, and commands too
long to run here (the demo, benchmarks, the device's agent) are checked for
what a typo would break: the program, the subcommands, the flags and the files
they name. The rest run in tests/integration/test_docs_examples.py and tests/e2e.

The prose is checked too, where a rename would make it lie: every repository
path the two documents name in backticks exists, and every
``file.py · Class.method`` they name is defined there.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import Mesh
from tests.support.docs import ROOT, Block, all_blocks, blocks_for, parse, problems

_COMMAND_TIMEOUT_S = 120
_FILE_ARG = re.compile(r"^[\w./-]+\.(?:ya?ml|py)$")
_TOP = "mesh|placement|edge_agent|functions|tests|scripts|bench|deploy|scenarios"
#: A path in backticks, e.g. `mesh/serving/replica/` or `deploy/mosquitto.conf`.
_PATH_REF = re.compile(rf"`((?:{_TOP})/[\w/.-]*)`")
#: Code named in backticks: `mesh/serving/_gateway.py · Gateway.infer, count_error`.
_CODE_REF = re.compile(rf"`((?:{_TOP})/[\w/]*\.py) · ([^`]+)`")
#: Backticked words that look like paths and are not: the MQTT topic prefix.
_NOT_PATHS = frozenset({"mesh/v1"})


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment a user has in the repository's venv, with a throwaway data dir."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "MESH_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }


def test_every_block_names_a_test_that_exists() -> None:
    found = all_blocks()
    assert problems(found) == []
    assert [b for b in found if b.lang != "text"], "no code blocks found: is the parser broken?"


def test_an_untagged_or_mistagged_block_is_a_problem() -> None:
    doc = "\n".join(
        [
            "```python",
            "print(1)",
            "```",
            "<!-- doctest: tests/unit/test_docs.py::test_no_such_test -->",
            "```bash",
            "mesh --help",
            "```",
            "<!-- doctest: tests/unit/test_docs.py::test_decorator_api -->",
            "",
            "```python",
            "pass",
            "```",
            "```",
            "x",
            "```",
        ]
    )
    blocks = parse("DOC.md", doc)
    assert [(b.line, b.lang, b.tests) for b in blocks] == [
        (2, "python", ()),
        (6, "bash", ("tests/unit/test_docs.py::test_no_such_test",)),
        (11, "python", ("tests/unit/test_docs.py::test_decorator_api",)),
        (14, "", ()),
    ]
    found = problems(blocks)
    assert len(found) == 3, found
    assert found[0].startswith("DOC.md:2: a ```python block no test covers")
    assert "defines no function test_no_such_test" in found[1]
    assert found[2].startswith("DOC.md:14: a ```(no language) block")


def _undefined(source: str, names: list[str]) -> list[str]:
    """The ``names`` that ``source`` does not define.

    A name is ``f``, ``C`` or ``C.m``; a bare ``m`` after ``C`` or ``C.x`` may also be ``C.m``.
    """
    tree = ast.parse(source)
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

    def members(body: list[ast.stmt]) -> dict[str, ast.stmt]:
        out: dict[str, ast.stmt] = {}
        for node in body:
            if isinstance(node, defs):
                out[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                out.update({t.id: node for t in targets if isinstance(t, ast.Name)})
        return out

    top = members(tree.body)
    missing, owner = [], None
    for name in names:
        head, _, attr = name.rpartition(".")
        if head:
            owner = top.get(head)
            inside = members(owner.body) if isinstance(owner, ast.ClassDef) else {}
            found = attr in inside
        else:
            inside = members(owner.body) if isinstance(owner, ast.ClassDef) else {}
            found = name in top or name in inside
            if isinstance(top.get(name), ast.ClassDef):
                owner = top[name]
        if not found:
            missing.append(name)
    return missing


def _stale_names(doc: str, text: str) -> list[str]:
    out = []
    for path in sorted(set(_PATH_REF.findall(text)) - _NOT_PATHS):
        if not (ROOT / path).exists():
            out.append(f"{doc}: no {path}")
    for path, names in _CODE_REF.findall(text):
        file = ROOT / path
        if not file.is_file():
            out.append(f"{doc}: no {path}")
            continue
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        out += [f"{doc}: {path} defines no {n}" for n in _undefined(file.read_text(), wanted)]
    return out


def test_named_code_exists() -> None:
    stale = [
        why
        for doc in ("README.md", "ARCHITECTURE.md", "SECURITY.md")
        for why in _stale_names(doc, (ROOT / doc).read_text())
    ]
    assert stale == []


def test_a_renamed_file_or_method_is_caught() -> None:
    text = (
        "`mesh/serving/_gateway.py · Gateway.infer, count_error, Gateway.nope, FORWARDED_HEADERS`"
        " `mesh/no_such_dir/` `mesh/serving/_nope.py · X`"
    )
    assert _stale_names("DOC.md", text) == [
        "DOC.md: no mesh/no_such_dir/",
        "DOC.md: mesh/serving/_gateway.py defines no Gateway.nope",
        "DOC.md: no mesh/serving/_nope.py",
    ]


def test_decorator_api(request: pytest.FixtureRequest) -> None:
    for block in blocks_for(request.node.nodeid):
        namespace: dict[str, object] = {"__name__": "docs_example"}
        exec(compile(block.padded(), block.doc, "exec"), namespace)
        app = namespace.get("app")
        assert isinstance(app, Mesh), f"{block.where}: the example defines no Mesh app"
        assert app.functions, f"{block.where}: the example registers no function"


def test_commands_run(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    for block in blocks_for(request.node.nodeid):
        assert block.lang == "bash", f"{block.where}: only bash blocks run as commands"
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=ROOT,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
        )
        assert result.returncode == 0, f"{block.where}:\n{result.stdout}\n{result.stderr}"


@functools.cache
def _help(argv: tuple[str, ...]) -> str:
    """``ARGV --help``'s output (help touches no data dir)."""
    result = subprocess.run(
        [*argv, "--help"],
        cwd=ROOT,
        env=_env(Path("/nonexistent")),
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{' '.join(argv)} --help failed:\n{result.stderr}"
    return result.stdout


def _subcommands(help_text: str) -> set[str]:
    """The commands a typer help page lists in its Commands panel."""
    _, _, panel = help_text.partition("─ Commands ─")
    return set(re.findall(r"^│ ([a-z][\w-]*) ", panel, flags=re.MULTILINE))


def _check_command(words: list[str]) -> list[str]:
    """What in one documented command would fail before it did any work."""
    program, args = words[0], words[1:]
    if program == "sudo" and args:  # root for the test bed: the command itself is checked
        return _check_command(args)
    if program.startswith("./scripts/"):
        script = ROOT / program
        if not (script.is_file() and os.access(script, os.X_OK)):
            return [f"{program} is not an executable file"]
        if args and '"$@"' not in script.read_text():
            return [f"{program} does not pass its arguments on"]
        return []
    if program == "mesh":
        argv: tuple[str, ...] = (sys.executable, "-m", "mesh.cli")
        while args and args[0] in _subcommands(_help(argv)):
            argv, args = (*argv, args[0]), args[1:]
    elif program == "mesh-edge-agent":
        argv = (sys.executable, "-m", "edge_agent")
    elif program in ("python", ".venv/bin/python") and args and args[0].endswith(".py"):
        if not (ROOT / args[0]).is_file():
            return [f"no file {args[0]}"]
        argv, args = (sys.executable, args[0]), args[1:]
    else:
        return [f"no rule to check {program!r}: run the block or add one here"]
    usage = _help(argv)
    out = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage):
            out.append(f"{' '.join(words[:3])}: {flag} is not an option")
        elif _FILE_ARG.match(arg) and not (ROOT / arg).exists():
            out.append(f"{' '.join(words[:3])}: no file {arg}")
    return out


def test_commands_parse(request: pytest.FixtureRequest) -> None:
    wrong = []
    for block in blocks_for(request.node.nodeid):
        assert block.lang == "bash", f"{block.where}: only bash blocks hold commands"
        for words in block.commands():
            wrong += [f"{block.where}: {why}" for why in _check_command(words)]
    assert wrong == []


def test_a_wrong_flag_or_file_is_caught() -> None:
    block = Block(
        "DOC.md",
        1,
        "bash",
        "mesh run scenarios/nope.yaml --fast\nmesh-edge-agent --id a --colour red\nmake all\n",
        (),
        None,
    )
    wrong = [why for words in block.commands() for why in _check_command(words)]
    assert wrong == [
        "mesh run scenarios/nope.yaml: no file scenarios/nope.yaml",
        "mesh run scenarios/nope.yaml: --fast is not an option",
        "mesh-edge-agent --id a: --colour is not an option",
        "no rule to check 'make': run the block or add one here",
    ]
