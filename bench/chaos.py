"""Chaos soak: kill -9 parts of a running mesh under steady load and count what is lost.

Runs ``mesh up`` (embedded Ray cluster with two fog nodes; the embedded
broker, or with ``--broker mosquitto`` a real Mosquitto set up as
deploy/mosquitto.conf sets it up), a fog module and an edge agent serving an
edge module, sends inference to both through the gateway, and for each round
``kill -9``s a random part (a fog replica process, the agent, the control
plane, the broker: with the embedded broker that is the control plane) at a
random moment, starts it again as a supervisor would, and waits until both
modules answer. Prints (and with ``--json``, writes) ``{"rounds", "faults",
"requests": {"sent", "answered", "failed", "unavailable", "broker_outage"},
"per_module", "events", "recovery_s": {"p50", "max"}}``. ``unavailable`` are
requests sent while the gateway itself was down (the control plane killed): no
replica could answer them; ``broker_outage`` are edge-module requests that
failed between a broker kill and that module answering again. ``events`` are the
agent's pipeline's (frames on its site's sensor topic -> the edge module -> events,
tests/support/chaos_events.py): ``{"frames", "sent", "delivered", "duplicates",
"replayed", "lost", "broker_outage", "unavailable", "reasons", "lost_at_s",
"outages_s", "marks"}``; a frame no broker took is ``unavailable``, one a
restarting broker took before the agent was back on it is ``broker_outage``, any
other one whose event never came is ``lost``.

    python bench/chaos.py --rounds 30 --json chaos.json
    python bench/chaos.py --broker mosquitto --faults broker,agent --rounds 10
    python bench/chaos.py --faults disk_full,outbox_corrupt,mid_migration --rounds 6

Exit status 1 when any request failed or any event was lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._setup import need_test_tools
from mesh.edge.broker._mosquitto import find_mosquitto

need_test_tools("bench/chaos.py")

from tests.support.chaos import ALL_FAULTS, BROKERS, FAULTS, ChaosMesh, run_rounds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when no request failed and no event was lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="faults to inject (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fault schedule")
    parser.add_argument(
        "--faults",
        help=f"kinds, from {ALL_FAULTS} (default {FAULTS}; with the embedded broker all "
        "those but broker, which is the control plane there)",
    )
    parser.add_argument("--broker", choices=BROKERS, default="embedded",
                        help="the mesh's broker (default embedded)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per module")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    default = FAULTS if args.broker == "mosquitto" else tuple(k for k in FAULTS if k != "broker")
    kinds = tuple(k for k in args.faults.split(",") if k) if args.faults else default
    unknown = sorted(set(kinds) - set(ALL_FAULTS))
    if unknown or args.rounds < 1:
        parser.error(f"--faults: unknown {unknown}; expected some of {ALL_FAULTS}" if unknown
                     else "--rounds: expected at least 1")  # fmt: skip
    if args.broker == "mosquitto" and find_mosquitto() is None:
        parser.error("--broker mosquitto: mosquitto is not installed")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mesh-chaos-") as tmp:
        mesh = ChaosMesh(Path(tmp), log=lambda line: print(line, flush=True), broker=args.broker)
        try:
            mesh.start()
            figures = run_rounds(mesh, args.rounds, seed=args.seed, kinds=kinds, rate_hz=args.rate)
        finally:
            mesh.close()
    figures["wall_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if figures["requests"]["failed"] or figures["events"]["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
