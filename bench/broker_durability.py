"""Mosquitto durability: what saving on every change costs, against saving each minute.

Mosquitto keeps queued QoS 1 messages in memory and writes its whole database
(retained messages, sessions, queues) at each autosave. With ``autosave_interval
60`` a ``kill -9`` loses any message it acknowledged since the last save and had
not yet delivered; with ``autosave_on_changes true`` and ``autosave_interval 1``
it saves at the next turn of its loop after each change, so the window shrinks
to one loop turn. Saving writes the whole database, so its cost grows with what
is retained (one status per enrolled agent, desired and observed states).

Both settings run in this script, alternated, on the same Mosquitto binary: one
QoS 1 publisher with up to 100 messages in flight to one persistent-session
subscriber, with ``--retained`` retained messages of 300 bytes in the database.
It reports delivered messages per second for each, and the ratio.

Usage::

    python bench/broker_durability.py [--messages 3000] [--retained 0,1000,10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mesh.edge.broker._handle import free_port, wait_port  # noqa: E402

SETTINGS = {
    "every_minute": ["autosave_interval 60"],
    "every_change": ["autosave_on_changes true", "autosave_interval 1"],
}
PASSES = 3


def _client(port: int, client_id: str, *, clean: bool) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.socket().setsockopt(6, 1, 1)  # TCP_NODELAY
    return client


def _run_broker(workdir: Path, setting: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    persist = workdir / "persist"
    persist.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    lines = ["set_tcp_nodelay true", "log_dest none", "persistence true",
             f"persistence_location {persist}/", *setting, "max_inflight_messages 100",
             "max_queued_messages 100000", "allow_anonymous true",
             f"listener {port} 127.0.0.1"]  # fmt: skip
    if os.geteuid() == 0:
        lines.insert(0, "user root")  # a root-started Mosquitto must keep root to write a 0700 dir
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    if not wait_port("127.0.0.1", port, time.monotonic() + 10.0):
        proc.kill()
        raise SystemExit(f"mosquitto did not open port {port} within 10 s")
    return proc, port


def _retain(port: int, count: int) -> None:
    pub = _client(port, "bench-retainer", clean=True)
    pub.loop_start()
    infos = [pub.publish(f"bench/status/{i}", b"x" * 300, qos=1, retain=True) for i in range(count)]
    for info in infos:
        info.wait_for_publish(30.0)
    pub.loop_stop()
    pub.disconnect()


def _pass(port: int, messages: int) -> float:
    """Delivered QoS 1 messages per second, publisher to a persistent-session subscriber."""
    done = threading.Event()
    got = [0]

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        got[0] += 1
        if got[0] >= messages:
            done.set()

    sub = _client(port, "bench-subscriber", clean=False)
    sub.on_message = on_message
    sub.subscribe("bench/frames", qos=1)
    sub.loop_start()
    time.sleep(0.2)
    pub = _client(port, "bench-publisher", clean=True)
    pub.loop_start()
    began = time.perf_counter()
    for i in range(messages):
        pub.publish("bench/frames", i.to_bytes(4, "big") * 50, qos=1)
    finished = done.wait(120.0)
    took = time.perf_counter() - began
    pub.loop_stop()
    pub.disconnect()
    sub.loop_stop()
    sub.disconnect()
    if not finished:
        raise SystemExit(f"only {got[0]} of {messages} messages arrived within 120 s")
    return messages / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--retained", default="0,1000,10000",
                        help="comma-separated retained-message counts")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    for retained in [int(x) for x in args.retained.split(",")]:
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(PASSES):
            for name, setting in SETTINGS.items():
                with tempfile.TemporaryDirectory(prefix="mesh-bench-broker-") as tmp:
                    proc, port = _run_broker(Path(tmp), setting)
                    try:
                        _retain(port, retained)
                        rates[name].append(_pass(port, args.messages))
                    finally:
                        proc.terminate()
                        proc.wait(10)
        row: dict[str, Any] = {"retained": retained}
        row.update({f"{name}_msg_s": round(statistics.median(v), 1) for name, v in rates.items()})
        row["ratio"] = round(row["every_change_msg_s"] / row["every_minute_msg_s"], 3)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"bench": "broker_durability", "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
