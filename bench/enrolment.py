"""Enrolment benchmark: the time to enrol one agent of a fleet, at 100 and 1,000 agents.

Enrolling a fleet one agent at a time (:func:`mesh.edge._enrolment.enroll` N times,
as ``mesh agents enroll`` repeated) rewrites the Mosquitto password and ACL files
whole at every call, so an agent's enrolment costs time in the agents before it
and the fleet costs time in N². :func:`mesh.edge._enrolment.enroll_many` (``mesh
agents enroll-batch``, the fleet harness) hashes every password in one
``mosquitto_passwd`` run, stores the agents in one transaction and writes the
files once. For each way and each size N, a fresh data dir is filled with N
agents (``sim-00000``... over 10 sites, the signing key made beforehand) and the
wall time divided by N is the per-agent time; the ratio of the per-agent time at
the largest size to that at the smallest is the scaling figure (1.0: linear in N;
target for the batch ≤ 1.5). One process, one run per size, wall time (the
machine is shared: compare ratios, not absolute times).

Usage::

    python bench/enrolment.py [--json out.json] [--sizes 100 1000] [--ways batch one_by_one]

``--json`` writes ``{"sizes", "hash": "mosquitto_passwd"|"python", "<way>":
{"per_agent_ms": {N: ms}, "total_s": {N: s}, "ratio": largest/smallest}}``;
``one_by_one`` adds ``"last_call_ms": {N: ms}`` (the mean of its last 10 calls:
one agent more into a store of about N) and ``"last_call_ratio"``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mesh.edge._agent_store import EnrolmentStore  # noqa: E402
from mesh.edge._enrolment import EdgeSettings, enroll, enroll_many  # noqa: E402
from mesh.models._artifacts import ArtifactSigner  # noqa: E402

SITES = 10
BATCH_RATIO_TARGET = 1.5


def _fleet(n: int) -> list[tuple[str, str]]:
    return [(f"sim-{i:05d}", f"site-{i % SITES}") for i in range(n)]


def one_by_one(
    settings: EdgeSettings, store: EnrolmentStore, public_key: str, n: int
) -> list[float]:
    """Enrol ``n`` agents with one :func:`enroll` each (one store, as the CLI's loop would).

    Returns:
        Each call's seconds.
    """
    calls = []
    for agent_id, site in _fleet(n):
        began = time.perf_counter()
        enroll(agent_id, site=site, settings=settings, store=store, public_key=public_key)
        calls.append(time.perf_counter() - began)
    return calls


def batch(settings: EdgeSettings, store: EnrolmentStore, public_key: str, n: int) -> list[float]:
    """Enrol ``n`` agents with one :func:`enroll_many`; returns its seconds (one call)."""
    began = time.perf_counter()
    enroll_many(_fleet(n), settings=settings, store=store, public_key=public_key)
    return [time.perf_counter() - began]


WAYS: dict[str, Callable[[EdgeSettings, EnrolmentStore, str, int], list[float]]] = {
    "batch": batch,
    "one_by_one": one_by_one,
}


def time_way(way: str, n: int) -> tuple[float, float]:
    """Seconds to enrol ``n`` agents ``way`` into a fresh data dir, and its last calls' mean.

    The mean of the last 10 calls' seconds is what one enrolment more costs with
    about ``n`` agents enrolled (for ``batch``, its one call).
    """
    with tempfile.TemporaryDirectory(prefix="mesh-enrol-bench-") as tmp:
        settings = EdgeSettings(data_dir=Path(tmp))
        public_key = ArtifactSigner.load_or_create(settings.data_dir).public_key_b64()
        with EnrolmentStore(settings.store_path) as store:
            began = time.perf_counter()
            calls = WAYS[way](settings, store, public_key, n)
            elapsed = time.perf_counter() - began
            assert len(store.credentials()) == n
    last = calls[-10:]
    return elapsed, sum(last) / len(last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="fleet sizes")
    parser.add_argument("--ways", nargs="+", choices=sorted(WAYS), default=["batch", "one_by_one"])
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if not sizes or sizes[0] < 1:
        parser.error("--sizes: give one or more positive fleet sizes")

    out: dict[str, Any] = {
        "sizes": sizes,
        "hash": "mosquitto_passwd" if shutil.which("mosquitto_passwd") else "python",
    }
    print(f"{'way':<12}" + "".join(f"{f'{n:,} ms/agent':>18}" for n in sizes) + f"{'ratio':>8}")
    for way in args.ways:
        timed = {str(n): time_way(way, n) for n in sizes}
        total = {n: s for n, (s, _) in timed.items()}
        per_agent = {n: s / int(n) * 1e3 for n, s in total.items()}
        ratio = per_agent[str(sizes[-1])] / per_agent[str(sizes[0])]
        out[way] = {"per_agent_ms": per_agent, "total_s": total, "ratio": ratio}
        if way == "one_by_one":
            last = {n: c * 1e3 for n, (_, c) in timed.items()}
            out[way]["last_call_ms"] = last
            out[way]["last_call_ratio"] = last[str(sizes[-1])] / last[str(sizes[0])]
        print(
            f"{way:<12}" + "".join(f"{ms:>18.2f}" for ms in per_agent.values()) + f"{ratio:>8.2f}"
        )
        if way == "one_by_one":
            print(
                f"{'  last call':<12}"
                + "".join(f"{ms:>18.2f}" for ms in out[way]["last_call_ms"].values())
                + f"{out[way]['last_call_ratio']:>8.2f}"
            )
    if "batch" in out:
        met = out["batch"]["ratio"] <= BATCH_RATIO_TARGET
        print(f"  batch ratio <= {BATCH_RATIO_TARGET}: {'met' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
