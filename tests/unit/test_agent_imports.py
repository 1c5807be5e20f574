"""The agent runs on paho, onnxruntime, psutil, pydantic and the stdlib alone."""

from __future__ import annotations

import json
import subprocess
import sys

import edge_agent

FORBIDDEN = ("ray", "torch", "fastapi", "mesh", "cryptography", "uvicorn", "httpx")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys, json\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_agent_imports_nothing_heavy_in_a_fresh_interpreter() -> None:
    loaded = _modules_after(
        "import edge_agent, edge_agent.__main__\n"
        "from edge_agent import Agent, MqttTransport, MemoryTransport, register_source\n"
        "from edge_agent import _agent, _runtime, _cache, _outbox, _pipelines, _heartbeat"
    )
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert {"paho", "onnxruntime", "psutil", "pydantic"} <= loaded


def test_protocol_alone_is_pure() -> None:
    loaded = _modules_after("import edge_agent.protocol")
    assert not loaded & {"paho", "onnxruntime", "psutil", "numpy", *FORBIDDEN}


def test_public_names_resolve() -> None:
    for name in edge_agent.__all__:
        assert getattr(edge_agent, name) is not None, name


def test_cli_help_and_bad_settings() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--help"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "--broker" in ok.stdout and "EDGE_AGENT_" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--id", "a/b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "topic level" in bad.stderr
