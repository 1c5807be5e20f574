"""Multi-host benchmark (issue 16 item 7): the mesh on the test bed against the mesh on loopback.

Two meshes, one after the other, measured the same way through the same CLI:

* **testbed**: tests/support/multihost.py's mesh (the Ray head and ``mesh up`` in
  ``cloud``, ``fog-0`` and ``fog-1`` joined with ``mesh node join``), with
  scenarios/traffic.yaml's link delays (cloud-fog 15 ms one way, jitter 2 ms);
  the load runs in the ``client`` host (no delay to ``cloud``);
* **loopback**: ``mesh up`` on this host, its embedded cluster with two fog nodes
  (``MESH_FOG_NODES=2``), the load on this host, everything over 127.0.0.1.

In each: a tiny model (y = 2x, float32[1,4]) is deployed to fog (one replica, its
warm standby on the other fog node), then

* ``p50_ms.fog``: the median of 200 requests at 20 req/s from the client through
  the gateway to the fog replica (tests/support/client_load.py);
* ``rtt_ms.fog``: the median TCP round trip from the gateway's host to the
  replica's host (tests/support/testbed/_echo.py: an echo server there);
* ``migration``: a paced load of 200 req/s from the client while the module is
  pinned to the other fog node (``mesh placements pin --node``): ``switch_s``
  (the migration record's decision to the new route serving), ``lost`` (requests
  that failed at the client, whole load), ``max_ms`` (the client's slowest request
  sent from the pin to the move's end); the record's own ``lost`` and ``max_ms``
  (the gateway's view) and ``pin_to_switch_s`` (from just before the CLI call)
  come with them;
* ``p50_ms.edge`` and ``rtt_ms.edge`` (test bed only): the same median to a module on
  the agent in ``edge-1`` (the test bed's mesh runs Mosquitto with TLS in
  ``cloud`` and an enrolled agent there), and the round trip from cloud to
  ``edge-1``; on loopback they are ``null`` with ``edge_reason`` (no agent runs).

Targets: 0 lost; switch <= 3 s; testbed fog p50 <= its fog
RTT + loopback fog p50 + 1 ms.

Needs root (network namespaces), Ray, ONNX; run from the repository root::

    python bench/multihost.py [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULE = "tiny"
#: The edge module's name and the test bed's agent it runs on.
EDGE_MODULE, EDGE_AGENT = "tiny-edge", "edge-1"
SLO_MS = 1000.0
P50_RATE_HZ, P50_SECONDS = 20.0, 10.0
MIGRATION_RATE_HZ, MIGRATION_SECONDS, PIN_AFTER_S = 200.0, 30.0, 5.0
DEADLINE_S = 10.0
ECHO_COUNT = 100
#: Phases of a migration that has not ended (mesh/control/_store.py PHASES).
UNFINISHED = ("planned", "starting", "ready", "switched", "draining")


@dataclass
class Site:
    """Where one mesh runs: the test bed's hosts, or this host's loopback.

    Attributes:
        name: ``testbed`` or ``loopback``.
        gateway: the gateway's HOST:PORT.
        cli: ``mesh ARGS`` in the control plane's host; its stdout (raises on failure).
        spawn: start ``argv`` in a host (loopback: here), stdout and stderr piped.
        run: run ``argv`` in a host to its end.
        host_of: the host that has an address (loopback: ``cloud``, the only one).
        work: a directory for this site's files.
        edge_agent: the agent an edge module can be deployed on, and its host's
            address (None: this site runs no agent).
    """

    name: str
    gateway: str
    cli: Callable[..., str]
    spawn: Callable[[str, list[str]], subprocess.Popen[str]]
    run: Callable[[str, list[str]], subprocess.CompletedProcess[str]]
    host_of: Callable[[str], str]
    work: Path
    edge_agent: tuple[str, str] | None = None


# ------------------------------------------------------------------ the two sites


@contextlib.contextmanager
def testbed_site(work: Path) -> Iterator[Site]:
    """The mesh across the test bed's hosts (tests/support/multihost.py)."""
    from tests.support.multihost import in_host, mesh_in, running_mesh

    with running_mesh(work, broker="mosquitto-tls", agents=(EDGE_AGENT,)) as mesh:
        bed, env = mesh.bed, mesh.cloud_env
        hosts = {bed.address(h.name): h.name for h in bed.plan.hosts}

        def spawn(host: str, argv: list[str]) -> subprocess.Popen[str]:
            return bed.spawn(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        yield Site(
            "testbed",
            mesh.gateway_url.removeprefix("http://"),
            lambda *args: mesh_in(bed, "cloud", env, *args),
            spawn,
            lambda host, argv: in_host(bed, host, {}, argv),
            lambda address: hosts[address],
            work,
            (EDGE_AGENT, bed.address(EDGE_AGENT)),
        )


@contextlib.contextmanager
def loopback_site(work: Path) -> Iterator[Site]:
    """``mesh up`` on this host: an embedded cluster with a cloud and two fog nodes."""
    from mesh.edge.broker._broker import free_port
    from tests.support.cli import stop_recorded_daemon

    data = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "RAY_"))}
    env |= {
        "MESH_DATA_DIR": str(data),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "COLUMNS": "200",
        "MESH_FOG_NODES": "2",
        "MESH_FOG_CPUS": "1",
        "MESH_CLOUD_CPUS": "1",
        "MESH_GATEWAY_PORT": str(free_port()),
        "MESH_EMBEDDED_BROKER_PORT": "0",
        "MESH_REPLICA_START_TIMEOUT_S": "180",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }

    def run(host: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
        )

    def cli(*args: str) -> str:
        done = run("cloud", [sys.executable, "-m", "mesh.cli", *args])
        if done.returncode != 0:
            raise RuntimeError(f"mesh {' '.join(args)}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def spawn(host: str, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    try:
        cli("up")
        record = json.loads((data / "cluster.json").read_text())
        gateway = str(record["gateway_url"]).removeprefix("http://")
        yield Site("loopback", gateway, cli, spawn, run, lambda address: "cloud", work)
        cli("down")
    finally:
        stop_recorded_daemon(data)  # after a failure; nothing is left after `down`


# ------------------------------------------------------------------ measurements


def _placement(site: Site, name: str = MODULE) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The module's primary endpoints and standbys."""
    [module] = [m for m in json.loads(site.cli("modules", "list", "--json")) if m["module"] == name]
    return list(module["endpoints"]), list(module.get("standby", []))


def _poll(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def _load(
    site: Site, token: str, rate_hz: float, seconds: float, out: Path, module: str = MODULE
) -> subprocess.Popen[str]:
    from tests.support.client_load import load_argv

    argv = load_argv(site.gateway, module, token, "x:1,4", rate_hz=rate_hz, seconds=seconds,
                     timeout_s=DEADLINE_S, out=out)  # fmt: skip
    return site.spawn("client", argv)


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> None:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if proc.returncode != 0:
        raise RuntimeError(f"the load failed (exit {proc.returncode}): {out}{err}")


def measure_p50(site: Site, token: str, module: str = MODULE) -> dict[str, Any]:
    """Client -> gateway -> the module: the median of paced requests, one at a time."""
    from tests.support.client_load import read_samples

    out = site.work / f"p50-{module}.jsonl"
    load = _load(site, token, P50_RATE_HZ, P50_SECONDS, out, module)
    _finish(load, P50_SECONDS + DEADLINE_S + 60)
    samples = read_samples(out)
    ok = [float(str(s["ms"])) for s in samples if s["status"] == 200]
    return {
        "p50_ms": round(statistics.median(ok), 2) if ok else None,
        "failed": len(samples) - len(ok),
    }


def measure_rtt(site: Site, fog_address: str) -> float:
    """The median TCP round trip from the gateway's host (cloud) to ``fog_address``'s host."""
    from tests.support.processes import end_process

    server = site.spawn(
        site.host_of(fog_address),
        [sys.executable, "-m", "tests.support.testbed._echo", "serve", "--host", fog_address],
    )
    try:
        assert server.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(server.stdout, selectors.EVENT_READ)
            if not sel.select(30):
                raise RuntimeError("the echo server did not print its port within 30 s")
        port = server.stdout.readline().strip()
        done = site.run(
            "cloud",
            [sys.executable, "-m", "tests.support.testbed._echo", "probe", "--host", fog_address,
             "--port", port, "--count", str(ECHO_COUNT)],
        )  # fmt: skip
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if "error" in result:
            raise RuntimeError(f"echo probe to {fog_address}:{port}: {result['error']}")
        return round(float(statistics.median(result["rtt_ms"])), 2)
    finally:
        end_process(server)


def measure_edge(site: Site, token: str) -> tuple[dict[str, float | None], str | None]:
    """Gateway -> edge agent: ``{"p50_ms", "rtt_ms"}`` and None, or nulls and why not.

    The module goes on the site's agent (``mesh modules deploy --agent``), with a
    p95 target the cloud-edge link can meet, so the placement controller leaves it
    there; ``rtt_ms.edge`` is the round trip from cloud to the agent's host.
    """
    if site.edge_agent is None:
        return {"p50_ms": None, "rtt_ms": None}, (
            f"the {site.name} mesh runs no edge agent (its broker is the control plane's "
            "embedded one, and no device is enrolled)"
        )
    agent, address = site.edge_agent
    site.cli("modules", "deploy", MODULE, "--name", EDGE_MODULE, "--agent", agent,
             "--p95-ms", f"{SLO_MS:g}")  # fmt: skip

    def serving() -> bool:
        listed = json.loads(site.cli("modules", "list", "--json"))
        return any(m["module"] == EDGE_MODULE and m["status"] == "serving" for m in listed)

    _poll(serving, 120, f"{EDGE_MODULE} serving on {agent}")
    p50 = measure_p50(site, token, EDGE_MODULE)
    if p50["failed"]:
        raise RuntimeError(f"{p50['failed']} requests to {EDGE_MODULE} failed")
    rtt = measure_rtt(site, address)
    site.cli("modules", "undeploy", EDGE_MODULE)
    return {"p50_ms": p50["p50_ms"], "rtt_ms": rtt}, None


def measure_migration(site: Site, token: str) -> dict[str, Any]:
    """The module pinned to the other fog node under 200 req/s: switch time, lost, slowest."""
    from tests.support.client_load import read_samples

    [primary], standbys = _placement(site)
    if not standbys:
        raise RuntimeError("no standby, so no other fog node known to move to")
    source, target = primary["node"], standbys[0]["node"]
    history = ["placements", "history", "--module", MODULE, "--json"]
    known = {r["id"] for r in json.loads(site.cli(*history))}
    out = site.work / "migration.jsonl"
    load = _load(site, token, MIGRATION_RATE_HZ, MIGRATION_SECONDS, out)
    try:
        _poll(lambda: len(read_samples(out)) >= PIN_AFTER_S * MIGRATION_RATE_HZ, 60, "the load")
        t_pin = time.time()
        site.cli("placements", "pin", MODULE, "--node", target)
        record: dict[str, Any] = {}

        def ended() -> bool:
            fresh = [r for r in json.loads(site.cli(*history)) if r["id"] not in known]
            record.update(fresh[0] if fresh else {})
            return bool(record) and record["status"] not in UNFINISHED

        _poll(ended, 120, "the migration's end")
    finally:
        _finish(load, MIGRATION_SECONDS + DEADLINE_S + 60)
    samples = read_samples(out)
    end = float(record.get("finished_at") or record.get("removed_at") or time.time()) + 1.0
    during = [float(str(s["ms"])) for s in samples if t_pin <= float(str(s["sent"])) <= end]
    switched = record.get("switched_at")
    after = [s for s in samples if switched and float(str(s["sent"])) > float(switched)]
    return {
        "switch_s": round(record["switch_s"], 3) if record.get("switch_s") is not None else None,
        "lost": sum(1 for s in samples if s["status"] != 200),
        "max_ms": round(max(during, default=0.0), 1),
        "pin_to_switch_s": round(float(switched) - t_pin, 3) if switched else None,
        "gateway_lost": record.get("lost"),
        "gateway_max_ms": record.get("max_ms"),
        "phases_s": _phases(record),
        "status": record["status"],
        "error": record.get("error"),
        "from": source[:12],
        "to": target[:12],
        "requests": len(samples),
        "sent_after_switch": len(after),
        "rate_hz": MIGRATION_RATE_HZ,
        "slo_ms": SLO_MS,
    }


def _phases(record: dict[str, Any]) -> dict[str, float | None]:
    """Where a migration's time went: decision to start, start to ready, ready to switch."""
    marks = [record.get(k) for k in ("decided_at", "started_at", "ready_at", "switched_at")]
    names = ("decide_to_start", "start_to_ready", "ready_to_switch")
    return {
        name: None if a is None or b is None else round(float(b) - float(a), 3)
        for name, a, b in zip(names, marks, marks[1:], strict=False)
    }


def measure(site: Site) -> dict[str, Any]:
    """Every figure of one site, in the ``--json`` shape."""
    from tests.support.agent_fixtures import build_tiny_model

    model = build_tiny_model(site.work / "tiny.onnx")
    site.cli("models", "register", MODULE, str(model), "--code-version", "1")
    site.cli("models", "promote", MODULE, "v1")
    site.cli("modules", "deploy", MODULE, "--tier", "fog", "--replicas", "1",
             "--p95-ms", f"{SLO_MS:g}")  # fmt: skip
    token = site.cli("tokens", "create", "bench", "--scope", "invoke").strip()
    _poll(lambda: len(_placement(site)[1]) == 1, 120, "the warm standby")
    [primary], _ = _placement(site)
    fog_address = str(urllib.parse.urlsplit(primary["url"]).hostname)
    p50 = measure_p50(site, token)
    rtt = measure_rtt(site, fog_address)
    edge, edge_reason = measure_edge(site, token)
    migration = measure_migration(site, token)
    print(f"{site.name}: fog p50 {p50['p50_ms']} ms, rtt {rtt} ms; migration {migration}")
    return {
        "migration": migration,
        "p50_ms": {"fog": p50["p50_ms"], "edge": edge["p50_ms"]},
        "rtt_ms": {"fog": rtt, "edge": edge["rtt_ms"]},
        "edge_reason": edge_reason,
        "p50_failed": p50["failed"],
        "fog_host": site.host_of(fog_address),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def targets(bed: dict[str, Any], loop: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's targets, met or not (None: a figure is missing)."""
    fog, rtt, base = bed["p50_ms"]["fog"], bed["rtt_ms"]["fog"], loop["p50_ms"]["fog"]
    switch = bed["migration"]["switch_s"]
    return {
        "lost_0": bed["migration"]["lost"] == 0 and loop["migration"]["lost"] == 0,
        "switch_le_3_s": None if switch is None else switch <= 3.0,
        "fog_p50_le_rtt_plus_loopback_p50_plus_1_ms": (
            None if None in (fog, rtt, base) else fog <= rtt + base + 1.0
        ),
    }


def run() -> dict[str, Any]:
    """Loopback first, then the test bed; one JSON document."""
    from tests.support.testbed import links_of, make_plan
    from tests.support.testbed._bed import ROOT as _ROOT

    with tempfile.TemporaryDirectory(prefix="mesh-multihost-") as raw:
        tmp = Path(raw)
        (tmp / "loopback").mkdir()
        (tmp / "testbed").mkdir()
        with loopback_site(tmp / "loopback") as site:
            loop = measure(site)
        with testbed_site(tmp / "testbed") as site:
            bed = measure(site)
    shape = make_plan(links=links_of(_ROOT / "scenarios" / "traffic.yaml")).shape("cloud", "fog-0")
    return {
        **bed,
        "loopback": loop,
        "link": {"cloud_fog_delay_ms": shape.delay_ms, "jitter_ms": shape.jitter_ms},
        "targets": targets(bed, loop),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the test bed needs root (network namespaces)")
    doc = run()
    rows = [("testbed", doc), ("loopback", doc["loopback"])]
    print(f"{'':>9}{'fog p50':>9}{'fog rtt':>9}{'edge p50':>10}{'edge rtt':>10}"
          f"{'switch s':>10}{'lost':>6}{'max ms':>9}")  # fmt: skip
    for name, r in rows:
        m = r["migration"]
        print(
            f"{name:>9}{r['p50_ms']['fog']!s:>9}{r['rtt_ms']['fog']!s:>9}"
            f"{r['p50_ms']['edge']!s:>10}{r['rtt_ms']['edge']!s:>10}"
            f"{m['switch_s']!s:>10}{m['lost']:>6}{m['max_ms']:>9}"
        )
        if r.get("edge_reason"):
            print(f"{name:>9}: no edge figures: {r['edge_reason']}")
    print(f"targets: {doc['targets']}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
