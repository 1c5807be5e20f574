"""Fleet scale (issue 19): one control plane and Mosquitto holding N simulated agents.

Usage::

    python bench/fleet.py --agents 1000 --json bench/results/fleet-1000.json
    python bench/fleet.py --sweep --json bench/results/fleet-sweep.json  # 100, 1,000, 5,000

Enrols N agents (enrolment's own function: credentials, ACL), starts Mosquitto
as deploy/mosquitto.conf sets it up and ``mesh up`` on it (no fog nodes), then
connects N simulated agents (``tests/support/fleet.py``: one real MQTT
connection each, the agent's wire contract, artifacts verified by the agent's
own cache), and measures:

- steady state with 1 s heartbeats and churn (2 % leave and return each quarter):
  control-plane CPU (cores) and RSS of ``mesh up``'s process tree (and of its main
  process alone), Mosquitto's CPU and RSS, heartbeat lag at the registry
  (arrival minus ``ts``, p50/p95), the reconcile loop's round p50/p95;
- listing (after the steady window, so as not to count in its CPU): ``GET
  /v1/dashboard/snapshot`` (nodes, agents, modules; 10 times: ``listing_p50_s``,
  ``listing_p95_s``) and ``mesh agents list`` once (``agents_cli_s``: its own
  broker connection, every agent's retained status, the table);
- a rollout: a new module version's desired state to every agent, until every
  agent's observed state names it (downloaded from the artifact endpoint and
  verified: Ed25519, sha256);
- a route switch of that module at every site (``route_switch_s``): the same
  version with its route offloading to a fog node, until every agent reports
  the new route epoch (no download: each holds the artifact);
- offline detection: 5 % of agents go silent without DISCONNECT; until the
  control plane stops counting each as up (``offline_detect_s``: three silent
  heartbeat periods; bound 1.5 x keepalive), and until their last wills list
  them offline (``offline_will_s``: the broker's keepalive check).
- a broker restart: Mosquitto killed (``kill -9``; ``--broker-stop term``: SIGTERM,
  which saves first) and started again (persistence on);
  until every live agent is connected again (``reconnect_agents_s``) and online
  at the control plane, heard since (``reconnect_s``); each agent sends a QoS 1
  event before, during and after it, and ``reconnect_lost_events`` counts those
  the control plane never took (``--no-broker-restart`` skips it).

The rollout is split into phases from each agent's own timestamps
(``rollout_publish_s``: every desired state handed to the bus;
``rollout_delivered_s``: the last one reached its agent, Mosquitto's part;
``rollout_installed_s``: the last install ended; ``rollout_install_p95_s``: one
download, signature, sha256 and fsync). Mosquitto saves once a second, as
deploy/mosquitto.conf; ``--broker-autosave every-change`` saves after every change
(deploy's before events were acknowledged end to end): each retained desired state
then rewrites the whole database, so a rollout costs O(N^2) in the broker.

SIGTERM and SIGHUP end the run as Ctrl-C does: the mesh, Mosquitto and the
agents are torn down (a ``kill -9`` of this process cannot be; its children are
then listed in the data dir's ``cluster.json``).

``--sweep [SIZES]`` (default ``100,1000,5000``) runs each size in turn, each in
a fresh mesh as one ``--agents`` run, and writes ``{"sweep": [rows], "growth":
{...}}`` (rewritten after each size) and the curves beside it (``.png``):
``bench/_fleet_curves.py`` fits each measure's log-log slope against N and flags
the superlinear ones. A size that fails is a row with an ``error``; the sweep
goes on.

Rendering ``/metrics`` walks every agent on the control plane, so reading all
of it every 0.25 s (every 1 s in the steady window) kept a render under way most
of the time at 3,000-5,000 agents and slowed what the bench measured. The polls
read only the gauges they wait on (``/metrics?name[]=``), and after a whole
scrape the bench waits four times its time before the next read
(``tests/support/fleet_metrics.py``; the longest wait is ``metrics_pause_max_s``).

The machine's load average is recorded beside the figures (a shared machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._fleet_curves import growth, plot, table
from edge_agent.protocol import Route
from tests.support.fleet_mesh import EACH_SECOND, EVERY_CHANGE, FleetMesh
from tests.support.proc_usage import percentile

#: ``--broker-autosave``: Mosquitto's saving lines.
AUTOSAVES = {"every-change": EVERY_CHANGE, "each-second": EACH_SECOND}


def _exit_on_signal(signum: int, _frame: object) -> None:
    for other in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(other, signal.SIG_IGN)  # a second signal must not cut the teardown short
    raise SystemExit(128 + signum)  # unwinds through run()'s finally: mesh.close()


class SizeFailed(RuntimeError):
    """A size's run failed part way: ``row`` holds what it measured before that."""

    def __init__(self, row: dict[str, object], cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.row = row


def run(
    agents: int,
    *,
    keepalive_s: int,
    steady_s: float,
    kill_share: float,
    autosave: str = "each-second",
    broker_restart: bool = True,
    broker_kill: bool = True,
) -> dict[str, object]:
    """One row: start the mesh with ``agents`` agents, measure, tear down.

    Raises:
        SizeFailed: a step failed; it carries the measures taken before it.
    """
    row: dict[str, object] = {
        "agents": agents,
        "keepalive_s": keepalive_s,
        "broker_autosave": autosave,
    }
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        mesh = FleetMesh(
            Path(tmp), agents=agents, keepalive_s=keepalive_s, autosave=AUTOSAVES[autosave]
        )
        try:
            mesh.start()
            time.sleep(5.0)  # let the first heartbeats and retained states settle
            row.update(mesh.steady(steady_s))
            row.update(listing(mesh))
            row["loadavg_rollout"] = list(os.getloadavg())
            row["rollout_s"] = mesh.rollout("v2")
            switch = Route(mode="offload", target="fog-replica-1", epoch=1)
            row["route_switch_s"] = mesh.rollout("v2", route=switch)
            took, victims = mesh.kill_and_detect(kill_share)
            at_cp, at_bus = mesh.detections["control_plane"], mesh.detections["bus"]
            down = mesh.detections["down"]
            # Detected: the control plane no longer counts every killed agent as up
            # (silent for three heartbeat periods: placement and the gateway stop
            # using it). Listed offline: its last will arrived, which Mosquitto sends
            # only after its own keepalive check (whole seconds, every 6 s in 2.0).
            row["offline_detect_s"] = (
                max(down.values()) if len(down) == len(victims) and victims else None
            )
            row["offline_will_s"] = took
            row["offline_killed"] = len(victims)
            row["offline_missed"] = len({a.agent_id for a in victims} - mesh.offline_now())
            row["offline_detect_first_s"] = min(at_cp.values(), default=None)
            row["offline_will_at_bus_last_s"] = max(at_bus.values(), default=None)
            row["offline_bound_s"] = 1.5 * keepalive_s
            if broker_restart:
                row.update(mesh.restart_broker(kill=broker_kill))
            row.update(mesh.timings)
            row["loadavg_end"] = list(os.getloadavg())
            row["cpus"] = os.cpu_count()
            return row
        except Exception as exc:
            row.update(mesh.timings)
            raise SizeFailed(row, exc) from exc
        finally:
            mesh.close()


def listing(mesh: FleetMesh, times: int = 10) -> dict[str, float | None]:
    """How long the agents take to list: the dashboard's snapshot, and ``mesh agents list``."""
    took = []
    for _ in range(times):
        began = time.monotonic()
        req = urllib.request.Request(
            f"{mesh.gateway}/v1/dashboard/snapshot",
            headers={"Authorization": f"Bearer {mesh.token}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
        took.append(time.monotonic() - began)
    began = time.monotonic()
    mesh._cli("agents", "list")
    return {
        "listing_p50_s": percentile(took, 0.5),
        "listing_p95_s": percentile(took, 0.95),
        "agents_cli_s": time.monotonic() - began,
    }


def parse_sizes(text: str) -> list[int]:
    """``--sweep``'s sizes: comma-separated positive integers, e.g. ``100,1000,5000``.

    Raises:
        ValueError: A size is not a positive integer, or none is given.
    """
    sizes = []
    for part in text.split(","):
        try:
            size = int(part.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"--sweep: {part.strip()!r} is not a whole number of agents") from None
        if size < 1:
            raise ValueError(f"--sweep: {size} agents; expected at least 1")
        sizes.append(size)
    return sizes


def sweep(sizes: list[int], path: Path, measure: Callable[[int], dict[str, object]]) -> None:
    """Measure each size in turn and write the rows, their growth and the curves.

    The JSON (and the PNG beside it) is rewritten after each size, so a sweep cut
    short keeps what it measured. A size whose run raises is a row with an
    ``error`` (and the measures taken before the failing step) and the sweep
    goes on (Ctrl-C and signals still end it).

    Args:
        sizes: The fleet sizes, in the order run.
        path: The JSON to write; the PNG is ``path`` with ``.png``.
        measure: One row for one size (``run`` with the other arguments bound).
    """
    rows: list[dict[str, Any]] = []
    for agents in sizes:
        print(f"fleet sweep: {agents} agents", file=sys.stderr, flush=True)
        try:
            rows.append(measure(agents))
        except SizeFailed as exc:  # a step failed: the measures before it stay
            rows.append({**exc.row, "error": str(exc)})
        except Exception as exc:  # a size that fails (e.g. out of memory) is a row
            rows.append({"agents": agents, "error": f"{type(exc).__name__}: {exc}"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sweep": rows, "growth": growth(rows)}, indent=2) + "\n")
        plot(rows, path.with_suffix(".png"))
    print(table(growth(rows)))


def main() -> None:
    """Parse arguments, run, print the row and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="100,1000,5000",
        default=None,
        metavar="SIZES",
        help="run each size (default 100,1000,5000) into one JSON with the curves (needs --json)",
    )
    parser.add_argument("--keepalive-s", type=int, default=10)
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument("--kill-share", type=float, default=0.05)
    parser.add_argument(
        "--broker-autosave",
        choices=sorted(AUTOSAVES),
        default="each-second",
        help="Mosquitto's saving: once a second (deploy/mosquitto.conf) or after every change",
    )
    parser.add_argument(
        "--no-broker-restart",
        action="store_true",
        help="skip the broker restart (reconnect_s, reconnect_lost_events)",
    )
    parser.add_argument(
        "--broker-stop",
        choices=("term", "kill"),
        default="kill",
        help="how the broker restart stops Mosquitto: kill -9 (a crash) or SIGTERM (it saves)",
    )
    args = parser.parse_args()
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    sizes = None
    if args.sweep is not None:
        if args.json is None:
            parser.error("--sweep needs --json PATH (the PNG is written beside it)")
        try:
            sizes = parse_sizes(args.sweep)
        except ValueError as exc:
            parser.error(str(exc))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    measure = functools.partial(
        run,
        keepalive_s=args.keepalive_s,
        steady_s=args.steady_s,
        kill_share=args.kill_share,
        autosave=args.broker_autosave,
        broker_restart=not args.no_broker_restart,
        broker_kill=args.broker_stop == "kill",
    )
    if sizes is not None:
        sweep(sizes, args.json, measure)
        return
    row = measure(args.agents)
    text = json.dumps(row, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
