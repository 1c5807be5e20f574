"""A fog host lost under load costs the client no request (issue 16 item 3c).

The mesh of tests/support/multihost.py (head and ``mesh up`` in ``cloud``,
``fog-0`` and ``fog-1`` joined); the counter deployed to fog with one replica
serves from one fog host, with its warm standby (``MESH_SERVING_STANDBY``, on
by default) on the other. The ``client`` host sends a steady load through the
gateway (20 req/s, each request with a 10 s deadline; tests/support/client_load.py),
and the fog host that holds the active replica is lost: every process in its
network namespace gets SIGKILL (raylet, workers, the replica), as a host that
dies or is unplugged from power. Its link stays up, so the gateway's connections
to the dead replica are refused or reset and fail over to the standby at once.

Why SIGKILL and not a cut link: a cut link is a black hole, seen only through
timeouts, and the gateway does not retry a request that timed out (it may have
run); so requests in flight on a cut link wait out their deadline. That case
needs the gateway to hedge or time out per attempt, which it does not yet.

Checked: no request fails at the client, none takes more than 2x the module's
SLO (``--p95-ms 1000``: generous for the shared 2-core machine; a request takes
the cloud-fog round trip, 30 ms, plus a few ms when it is quiet), the module
serves from the other fog host, and nothing runs in the lost host. With one fog
host left, the module (tiers: fog) has nowhere for a standby: the mesh serves
from the one replica, its new standby requested and waiting for a node. The lost host
then joins again (``mesh node leave``, which finds nothing to end, and ``mesh
node join``): a primary and a standby again, one on each fog host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client_load import load_argv, read_samples
from tests.support.multihost import FOG, Mesh, mesh_in
from tests.support.multihost import running_mesh as start_mesh
from tests.support.testbed import _netns

pytest.importorskip("ray")
pytest.importorskip("onnx")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "vehicle-counter"
SLO_MS = 1000.0
RATE_HZ = 20.0
LOAD_S = 45.0
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Head and control plane in cloud, both fog hosts joined (tests/support/multihost.py)."""
    with start_mesh(tmp_path_factory.mktemp("fog-loss")) as mesh:
        yield mesh


def _placement(mesh: Mesh) -> tuple[list[str], list[str]]:
    """The fog hosts of the module's primaries and of its standbys, from `mesh modules list`."""
    listed = json.loads(mesh_in(mesh.bed, "cloud", mesh.cloud_env, "modules", "list", "--json"))
    [module] = [m for m in listed if m["module"] == MODEL]
    host_of = {mesh.bed.address(h): h for h in FOG}

    def hosts(endpoints: list[dict[str, Any]]) -> list[str]:
        ips = [urllib.parse.urlsplit(e["url"]).hostname for e in endpoints]
        return [host_of.get(str(ip), f"not fog: {ip}") for ip in ips]

    return hosts(module["endpoints"]), hosts(module.get("standby", []))


def _hosts_apart(placement: tuple[list[str], list[str]]) -> bool:
    """Whether one primary and one standby serve, one on each fog host."""
    primaries, standbys = placement
    return len(primaries) == len(standbys) == 1 and {*primaries, *standbys} == set(FOG)


def _poll(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``check`` (a CLI call: ~1 s each) until true; when it became true (Unix time)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)
    return time.time()


def _kill_host(mesh: Mesh, host: str) -> list[int]:
    """SIGKILL every process in ``host``'s namespace until none runs; the pids killed."""
    ns, killed = mesh.bed.namespace(host), set[int]()
    for _ in range(50):  # a process forked meanwhile is killed on the next pass (bounded)
        live = [p for p in _netns.pids(ns) if _netns.alive(p)]
        if not live:
            return sorted(killed)
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"{host}: processes still run after SIGKILL: {_netns.pids(ns)}")


def test_the_fog_host_of_the_active_replica_is_lost_and_no_client_request_fails(
    running_mesh: Mesh, tmp_path: Path
) -> None:
    from tests.support.agent_fixtures import build_cnn

    mesh = running_mesh
    bed, env = mesh.bed, mesh.cloud_env
    model = build_cnn(tmp_path / "counter.onnx")
    mesh_in(bed, "cloud", env, "models", "register", MODEL, str(model), "--code-version", "1")
    mesh_in(bed, "cloud", env, "models", "promote", MODEL, "v1")
    mesh_in(bed, "cloud", env, "modules", "deploy", MODEL, "--tier", "fog", "--replicas", "1",
            "--p95-ms", f"{SLO_MS:g}")  # fmt: skip
    token = mesh_in(bed, "cloud", env, "tokens", "create", "client", "--scope", "invoke").strip()
    # The deploy returns with a standby serving (it switches with it); one that landed on
    # the primary's host stands by until one on the other host serves, then drains away.
    _poll(lambda: _hosts_apart(_placement(mesh)), 180, "a warm standby on the other fog host")
    [active], [standby] = _placement(mesh)

    out = tmp_path / "load.jsonl"
    argv = load_argv(mesh.gateway_url, MODEL, token, "input:1,1,32,32", rate_hz=RATE_HZ,
                     seconds=LOAD_S, timeout_s=DEADLINE_S, out=out)  # fmt: skip
    load = bed.spawn("client", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _poll(lambda: len(read_samples(out)) >= 3 * RATE_HZ, 60, "3 s of answers")
        log = Path(env["MESH_DATA_DIR"]) / "cluster.log"
        logged_before = len(log.read_text())
        t_lost = time.time()
        killed = _kill_host(mesh, active)
        assert [p for p in _netns.pids(bed.namespace(active)) if _netns.alive(p)] == []
        t_failover = _poll(lambda: _placement(mesh)[0] == [standby], 120, "the standby promoted")
        stdout, stderr = load.communicate(timeout=LOAD_S + DEADLINE_S + 60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
    assert load.returncode == 0, stdout + stderr
    samples = read_samples(out)
    failed = [s for s in samples if s["status"] != 200]
    slowest = max(float(str(s["ms"])) for s in samples)
    after = [s for s in samples if float(str(s["sent"])) > t_failover]
    around = [float(str(s["ms"])) for s in samples if abs(float(str(s["sent"])) - t_lost) < 2.0]
    print(
        f"\n{active} lost ({len(killed)} processes killed); the route served from {standby} "
        f"{t_failover - t_lost:.1f} s after (seen by `mesh modules list`, ~1 s resolution); "
        f"{len(failed)} of {len(samples)} requests failed; slowest {slowest:.0f} ms, "
        f"slowest sent within 2 s of the loss {max(around, default=0.0):.0f} ms "
        f"(2x SLO = {2 * SLO_MS:.0f} ms); {len(after)} sent after the failover"
    )
    assert failed == [], failed[:5]
    assert slowest <= 2 * SLO_MS, slowest
    assert len(samples) == round(RATE_HZ * LOAD_S)
    assert after, "the load ended before the failover: the test proved nothing"

    # One fog host left and the module may only run on fog: one replica, no standby. The
    # new standby is requested off the primary's node and waits (Ray still counts the lost
    # node alive for a while, then no node fits) until the host comes back or it times out.
    assert _placement(mesh) == ([standby], [])
    said = [line for line in log.read_text()[logged_before:].splitlines() if "standby" in line]
    print(f"with {standby} alone: one replica, no standby; the mesh said:", *said, sep="\n  ")

    # The lost host comes back: leave ends nothing (all is dead), join starts a new node.
    assert [p for p in _netns.pids(bed.namespace(active)) if _netns.alive(p)] == []
    host_env = mesh.fog_envs[active]
    mesh_in(bed, active, host_env, "node", "leave")
    joined = mesh_in(bed, active, host_env, "node", "join", mesh.head, "--tier", "fog",
                     "--site", active, "--cpus", "1", "--node-ip", bed.address(active),
                     "--token-file", str(mesh.work / "ray-token"))  # fmt: skip
    assert f"mesh.tier=fog, mesh.site={active}" in joined, joined
    t_back = time.time()
    # A primary and a standby again, one on each fog host (the placement controller may
    # move the primary to the host that joined: "node joined" is a trigger of its rounds).
    t_restored = _poll(lambda: _hosts_apart(_placement(mesh)), 300, "a primary and a standby")
    print(f"{active} joined again: (primary, standby) on {_placement(mesh)} "
          f"{t_restored - t_back:.1f} s after")  # fmt: skip
