"""``python -m tests.support.testbed up|down``: a test bed to work in by hand, and its removal.

``up`` makes the hosts (with a scenario's links when ``--scenario`` is given),
prints one JSON line (``{"tag", "hosts": {name: {"namespace", "address"}}}``)
and holds them until SIGINT or SIGTERM (or ``--hold-s``), then removes
everything. ``down`` removes test beds whose owner process is gone
(``--all``: every test bed, in use or not).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence

from tests.support.testbed._bed import TestBed
from tests.support.testbed._netns import sweep
from tests.support.testbed._require import links_of, namespaces_unavailable

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``up`` or ``down``; the exit status is 0 on success, 1 when namespaces cannot be made."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make the test bed and hold it until interrupted")
    up.add_argument("--scenario", help="take link delays from this scenario's links:")
    up.add_argument(
        "--hold-s", type=float, default=0.0, help="remove it after this long (0: never)"
    )
    down = sub.add_parser("down", help="remove test beds whose owner process is gone")
    down.add_argument("--all", action="store_true", help="remove every test bed, in use or not")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    reason = namespaces_unavailable()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if args.command == "down":
        for name in sweep(force=args.all):
            print(f"removed {name}")
        return 0
    if args.hold_s < 0:
        parser.error(f"--hold-s must be >= 0, got {args.hold_s}")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with TestBed(links=links_of(args.scenario) if args.scenario else ()) as bed:
        hosts = {
            h.name: {"namespace": bed.namespace(h.name), "address": bed.address(h.name)}
            for h in bed.plan.hosts
        }
        print(json.dumps({"tag": bed.tag, "hosts": hosts}), flush=True)
        print(
            f"test bed {bed.tag} is up; run in a host with `ip netns exec {bed.namespace('cloud')} CMD`;"
            " Ctrl-C removes it",
            file=sys.stderr,
            flush=True,
        )
        stop.wait(args.hold_s or None)  # SIGTERM is the test bed's own: it removes it and exits
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
