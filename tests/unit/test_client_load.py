"""The multi-host tests' load client (tests/support/client_load.py) counts what fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mesh.edge.broker._broker import free_port
from tests.support.client_load import load_argv, read_samples

ROOT = Path(__file__).resolve().parents[2]


def test_a_refused_connection_is_a_failed_request_not_a_missing_one(tmp_path: Path) -> None:
    out = tmp_path / "load.jsonl"
    argv = load_argv(f"127.0.0.1:{free_port()}", "m", "", "x:1,4", rate_hz=50, seconds=0.2,
                     timeout_s=2, out=out)  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    samples = read_samples(out)
    assert len(samples) == 10
    assert {s["status"] for s in samples} == {0}
    assert all("Error" in str(s["error"]) for s in samples), samples[0]
    assert json.loads(done.stdout) == {"sent": 10, "ok": 0, "failed": 10}


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--rate", "0", "--rate must be"), ("--seconds", "9999", "--seconds must be")],
)
def test_bad_arguments_get_a_clear_error(tmp_path: Path, flag: str, value: str, says: str) -> None:
    argv = load_argv("127.0.0.1:1", "m", "", "x:1,4", rate_hz=1, seconds=1, timeout_s=1,
                     out=tmp_path / "o")  # fmt: skip
    argv[argv.index(flag) + 1] = value
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_a_stop_file_ends_the_load_before_its_seconds(tmp_path: Path) -> None:
    out, stop = tmp_path / "load.jsonl", tmp_path / "stop"
    stop.touch()  # there from the start: nothing is sent
    argv = load_argv(f"127.0.0.1:{free_port()}", "m", "", "x:1,4", rate_hz=50, seconds=600,
                     timeout_s=2, out=out)  # fmt: skip
    done = subprocess.run([*argv, "--stop-file", str(stop)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == {"sent": 0, "ok": 0, "failed": 0}
    assert read_samples(out) == []
