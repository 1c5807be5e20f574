"""The edge bus's dispatcher: messages handled a second, with and without matching memory.

Usage::

    python bench/dispatch.py [--agents 3000] [--rounds 5] [--json PATH]

Feeds a fleet's heartbeats (and one status each) through the control plane's
own :class:`~mesh.edge._dispatch.Dispatcher`, on the calling thread: its
registry keeps them in memory (as ``mesh up``'s bus does: it persists no
health), and its subscriptions hold the handlers a control plane registers
(pipeline handover, fresh data, drift's heartbeats, a trigger). Two passes alternate
(ABAB, best of each kept): the baseline matches each topic against every
pattern (``MATCHES_MAX`` 0), the other remembers each topic's handlers (the
default). The figure is the ratio of messages a second; the dispatcher is one
thread, so at 1 s heartbeats its messages a second bound the fleet it keeps up
with (the paho network thread and the rest of the process share the GIL).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.protocol import AgentStatus, Heartbeat, HostMetrics
from mesh.edge import _subscriptions
from mesh.edge._dispatch import Dispatcher
from mesh.edge._registry import AgentRegistry
from mesh.edge._subscriptions import Subscriptions

PREFIX = "mesh/v1"
#: The handlers' patterns of a control plane serving a pipeline with drift and a trigger.
PATTERNS = (
    f"{PREFIX}/modules/+/pipelines/+/observed",
    f"{PREFIX}/modules/+/pipelines/+",
    f"{PREFIX}/agents/+/samples/+",
    f"{PREFIX}/agents/+/heartbeat",
    f"{PREFIX}/events/+/counts",
    "traffic/+/counts",
)


def _messages(agents: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(agents):
        agent = f"sim-{i:05d}"
        status = AgentStatus(agent=agent, state="online", site=f"s{i % 40}")
        out.append((f"{PREFIX}/agents/{agent}/status", status.model_dump_json().encode()))
    for i in range(agents):
        agent = f"sim-{i:05d}"
        beat = Heartbeat(
            agent=agent,
            site=f"s{i % 40}",
            seq=1,
            uptime_s=10.0,
            period_s=1.0,
            host=HostMetrics(
                cpu_percent=20.0,
                mem_percent=40.0,
                mem_available_mb=512.0,
                rss_mb=60.0,
                load1=0.2,
                load5=0.2,
                load15=0.2,
            ),
        )
        out.append((f"{PREFIX}/agents/{agent}/heartbeat", beat.model_dump_json().encode()))
    return out


def one_pass(messages: list[tuple[str, bytes]], rounds: int, *, memory: bool) -> float:
    """Messages a second through a fresh dispatcher (``memory``: the topic matches remembered)."""
    saved = _subscriptions.MATCHES_MAX
    _subscriptions.MATCHES_MAX = saved if memory else 0
    try:
        subs = Subscriptions([], client=lambda: None)
        for pattern in PATTERNS:
            subs.add(pattern, lambda topic, payload: None)
        dispatcher = Dispatcher(prefix=PREFIX, registry=AgentRegistry(), subscriptions=subs)
        began = time.perf_counter()
        for _ in range(rounds):
            for topic, payload in messages:
                dispatcher.dispatch(topic, payload)
        return rounds * len(messages) / (time.perf_counter() - began)
    finally:
        _subscriptions.MATCHES_MAX = saved


def main() -> None:
    """Run the passes and print (and write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3, help="passes of each kind (ABAB)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.agents < 1 or args.rounds < 1 or args.passes < 1:
        parser.error("--agents, --rounds and --passes must be at least 1")
    messages = _messages(args.agents)
    best = {"baseline": 0.0, "memory": 0.0}
    for _ in range(args.passes):
        for kind in best:
            best[kind] = max(best[kind], one_pass(messages, args.rounds, memory=kind == "memory"))
    row = {
        "agents": args.agents,
        "messages_per_pass": args.rounds * len(messages),
        "baseline_msgs_per_s": round(best["baseline"]),
        "memory_msgs_per_s": round(best["memory"]),
        "ratio": round(best["memory"] / best["baseline"], 3),
    }
    text = json.dumps(row, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
