"""README examples that need a running cluster, run as a reader runs them.

Each test takes the blocks tagged with its own id (:mod:`tests.support.docs`)
and runs them in document order, in subprocesses, with the repository's venv
on ``PATH``: Python blocks with ``python``, bash blocks with ``bash -eu``; what
a bash block exports (``TOKEN``) reaches the blocks after it. One substitution,
and only one: the gateway listens on a free port here, so ``127.0.0.1:8080``
(the default the README shows) becomes that port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.cli import env  # noqa: F401  (the CLI environment fixture)
from tests.support.docs import ROOT, Block, blocks_for

if TYPE_CHECKING:
    from mesh.ray._backend import RayBackend

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_DEFAULT_GATEWAY = "127.0.0.1:8080"


def _reader_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` with this venv's ``mesh`` and ``python`` first on PATH and the checkout importable."""
    return {
        **base,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _run_block(
    block: Block, cwd: Path, environ: dict[str, str], timeout_s: float
) -> tuple[str, dict[str, str]]:
    """Run ``block``; returns its stdout and the environment the next block sees."""
    port = environ.get("MESH_GATEWAY_PORT")
    code = block.code.replace(_DEFAULT_GATEWAY, f"127.0.0.1:{port}") if port else block.code
    exported = cwd / ".docs-env"
    if block.lang == "python":
        argv = [sys.executable, "-c", block.padded().replace(block.code, code)]
    else:
        assert block.lang == "bash", f"{block.where}: a ```{block.lang} block cannot run"
        argv = ["bash", "-euo", "pipefail", "-c", f'{code}\nenv -0 > "{exported}"\n']
    result = subprocess.run(
        argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, (
        f"{block.where} ({block.lang}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    if block.lang == "bash":
        pairs = (item.split("=", 1) for item in exported.read_text().split("\0") if "=" in item)
        environ = dict(pairs)
        exported.unlink()
    return result.stdout, environ


@contextlib.contextmanager
def _removed_after(path: Path) -> Iterator[None]:
    """Remove ``path`` afterwards if it did not exist before (a README example writes it)."""
    existed = path.exists()
    try:
        yield
    finally:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(600)
def test_python_api(
    request: pytest.FixtureRequest, ray_backend: RayBackend, tmp_path: Path
) -> None:
    """The decorator example and running it: a task, a Ray Data batch, a Tune search."""
    events = tmp_path / "events"
    events.mkdir()
    for site in ("j1", "j2"):
        rows = [f"{site},{hour},{count}" for hour in (6, 7, 8) for count in (3, 5)]
        (events / f"{site}.csv").write_text("site,hour,count\n" + "\n".join(rows) + "\n")
    blocks = blocks_for(request.node.nodeid)
    assert [b.lang for b in blocks] == ["python", "python"], [b.where for b in blocks]
    script = tmp_path / "example.py"
    script.write_text("\n".join(f"# {b.where}\n{b.code}" for b in blocks))
    environ = _reader_env(
        {
            **os.environ,
            "MESH_DATA_DIR": str(tmp_path / "data"),
            "MESH_RAY_ADDRESS": ray_backend.address,
        }
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "'dataset': '/data/x'" in out and "BatchResult" in out and "TuneResult" in out, out


@pytest.mark.timeout(600)
def test_serving_walkthrough(
    request: pytest.FixtureRequest,
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Train the counter, `mesh up`, register, deploy on fog, tritonclient, undeploy, down."""
    blocks = blocks_for(request.node.nodeid)
    assert [b.lang for b in blocks] == ["python", "bash", "python", "bash"]
    assert sum(_DEFAULT_GATEWAY in b.code for b in blocks) == 1, "the tritonclient URL moved"
    work = tmp_path / "work"
    work.mkdir()
    environ = _reader_env(env)
    outputs = []
    for block in blocks:
        out, environ = _run_block(block, work, environ, timeout_s=300)
        outputs.append(out)
    assert "deployed vehicle-counter v1 on fog" in outputs[1], outputs[1]
    assert environ.get("TOKEN", "").startswith("mesh_"), "the token did not reach the example"
    assert "[[" in outputs[2], outputs[2]  # the counts tritonclient got back
    assert "stopped the cluster process" in outputs[3], outputs[3]


@pytest.mark.timeout(600)
def test_cli_walkthrough(
    request: pytest.FixtureRequest,
    env: dict[str, str],  # noqa: F811
) -> None:
    """`mesh up`, deploy the demo functions, invoke two, list the runs, `mesh down`."""
    (block,) = blocks_for(request.node.nodeid)
    with _removed_after(Path("/tmp/counts")):  # where the example writes its counts
        out, _ = _run_block(block, ROOT, _reader_env(env), timeout_s=540)
    assert out.count("succeeded") >= 2 and "stopped the cluster process" in out, out
