"""Tearing the test bed down leaves nothing: no namespace, no link, no process, no file.

The ways out: the ``with`` block ends; the block raises; the owner gets SIGTERM
or Ctrl-C; the owner ends without closing (atexit); the owner is killed with ``kill -9`` (nothing of its own runs), after which
``python -m tests.support.testbed down`` (or the next test bed's own sweep)
removes what it left. Both commands are run as README documents them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.support.docs import blocks_for
from tests.support.testbed import TestBed, _netns, links_of, sweep
from tests.support.testbed._bed import ROOT

TRAFFIC = ROOT / "scenarios" / "traffic.yaml"
# A parent that leaves its child behind: the harness must find the child by namespace.
ORPHANING = ["sh", "-c", "sleep 600 & sleep 600"]


def _running_bed(bed: TestBed) -> list[int]:
    """Start two processes in hosts; return every pid in the test bed (delay router included)."""
    bed.spawn("cloud", ["sleep", "600"])
    bed.spawn("edge-1", ORPHANING)
    for _ in range(100):  # until sh has forked its background sleep (bounded)
        if len(_netns.pids(bed.namespace("edge-1"))) >= 2:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    pids = bed.pids()
    assert len(pids) >= 4, pids  # cloud's sleep, sh and its sleep, the delay router
    assert len(bed.namespaces()) == 1 + len(bed.plan.hosts)
    return pids


def test_leaving_the_block_removes_everything() -> None:
    with TestBed(links=links_of(TRAFFIC)) as bed:
        pids = _running_bed(bed)
        assert bed.leftovers(pids) != []  # the check sees a running bed
    assert bed.leftovers(pids) == []
    assert bed.router_counts is not None and bed.router_counts["forwarded"] >= 0


def test_a_failing_block_removes_everything() -> None:
    pids: list[int] = []
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        TestBed(links=links_of(TRAFFIC)) as bed,
    ):
        pids = _running_bed(bed)
        raise RuntimeError("the test failed")
    assert bed.leftovers(pids) == []


def _documented(request: pytest.FixtureRequest, verb: str) -> list[str]:
    """README's command ``sudo .venv/bin/python -m tests.support.testbed VERB ...``, as run here."""
    for block in blocks_for(request.node.nodeid):
        for command in block.commands():
            words = command[1:] if command[0] == "sudo" else command  # the tests run as root
            if words[0].endswith("python") and words[1:4] == ["-m", "tests.support.testbed", verb]:
                return [sys.executable, *words[1:]]
    raise AssertionError(f"README documents no `python -m tests.support.testbed {verb}`")


def _up(request: pytest.FixtureRequest) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        _documented(request, "up"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"`up` printed nothing: {proc.stderr.read() if proc.stderr else ''}"
    return proc, json.loads(line)


def _remains(tag: str) -> list[str]:
    left = [f"namespace {n}" for n in _netns.list_namespaces(tag)]
    left += [f"directory {p}" for p in _netns.workdirs(tag)]
    left += [f"link {x}" for x in _netns.ip("-o", "link").splitlines() if tag in x]
    return left


def test_sigterm_to_the_owner_removes_everything(request: pytest.FixtureRequest) -> None:
    proc, info = _up(request)
    tag = str(info["tag"])
    pids = [p for ns in _netns.list_namespaces(tag) for p in _netns.pids(ns)]
    assert pids and _remains(tag) != []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == -signal.SIGTERM  # handled, torn down, then passed on
    assert _remains(tag) == []
    assert [p for p in pids if _netns.alive(p)] == []


def test_after_kill_9_down_removes_what_was_left(request: pytest.FixtureRequest) -> None:
    proc, info = _up(request)
    tag = str(info["tag"])
    proc.kill()  # SIGKILL: no handler, no atexit
    proc.wait(30)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    left = _remains(tag)
    assert len([x for x in left if x.startswith("namespace")]) == 8, left  # kill -9: nothing ran
    pids = [p for ns in _netns.list_namespaces(tag) for p in _netns.pids(ns)]
    assert pids, "the delay router outlives its owner until the sweep"
    down = subprocess.run(
        _documented(request, "down"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    removed = {line.removeprefix("removed ") for line in down.stdout.splitlines()}
    assert {f"namespace {n}" for n in removed} >= {x for x in left if x.startswith("namespace")}
    assert _remains(tag) == []
    assert [p for p in pids if _netns.alive(p)] == []


def test_sweep_spares_a_test_bed_in_use() -> None:
    with TestBed() as bed:
        sweep()
        assert len(bed.namespaces()) == 1 + len(bed.plan.hosts)
    assert bed.leftovers() == []


def test_ctrl_c_to_up_removes_everything(request: pytest.FixtureRequest) -> None:
    proc, info = _up(request)
    tag = str(info["tag"])
    assert _remains(tag) != []
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert _remains(tag) == []


def test_an_owner_that_exits_without_closing_removes_everything() -> None:
    """atexit: a script that starts a test bed and just ends leaves nothing behind."""
    script = (
        "from tests.support.testbed import TestBed\n"
        "bed = TestBed().start()\n"
        "bed.spawn('cloud', ['sleep', '600'])\n"
        "print(bed.tag, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _netns.owner(done.stdout.strip()) is not None, done.stdout
    assert _remains(done.stdout.strip()) == []
