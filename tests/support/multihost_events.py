"""An agent's pipeline events counted at the broker, from a test bed host (issue 16, item 3b).

Run as a process in ``cloud`` (``python -m tests.support.multihost_events``),
it plays the camera and the consumer of one pipeline on an edge agent
(:func:`pipeline_env`): it logs in to the control plane's listener as the
control plane (``<data>/mqtt/control-plane.json``), over TLS with the test CA,
publishes frames with QoS 1 on the site's sensor topic at ``--rate`` and
follows the pipeline's events (QoS 1). A frame's id is its header's ``ts``,
which the pipeline carries into its event as ``source_ts``. It first sends
warm-up frames until one event comes (the module installed, the pipeline
running; those are not counted), then sends until ``--stop-file`` exists,
waits (at most ``--grace-s``) for the events still due, and prints one JSON
line::

    {"sent": 410, "acked": 410, "delivered": 410, "duplicates": 0, "lost": 0,
     "unacked": 0, "lost_ids": []}

``sent`` frames were handed to paho, ``acked`` of them had the broker's PUBACK;
``lost`` is acked frames with no event. Bounded: ``--max-s`` ends the sending.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.protocol import DEFAULT_PREFIX, Tensor, encode_frame

__all__ = ["STREAM", "frames_topic", "main", "pipeline_env"]

#: The pipeline's name and event stream.
STREAM = "hog-events"
#: The model's input: the counter's float32[1, 1, 32, 32].
_INPUT = Tensor("input", "float32", (1, 1, 32, 32), bytes(4 * 32 * 32))
#: How long the warm-up may take (the module installed on a CPU-starved device).
_READY_S = 180.0


def frames_topic(site: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Where the pipeline reads its frames: a sensor topic of the agent's site."""
    return f"{prefix}/sensors/{site}/hog-frames"


def pipeline_env(module: str, site: str) -> dict[str, str]:
    """The agent's environment for the pipeline: frames -> ``module`` -> events (QoS 1)."""
    spec = {
        "name": STREAM,
        "module": module,
        "source": {"kind": "mqtt", "topic": frames_topic(site), "options": {"buffer": 4096}},
        "stream": STREAM,
        "qos": 1,
    }
    return {"EDGE_AGENT_PIPELINES": json.dumps([spec])}


class _Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        import paho.mqtt.client as mqtt

        creds = json.loads(Path(args.credentials).read_text())
        url = urlsplit(args.broker)
        if url.scheme != "mqtts" or not url.hostname or not url.port:
            raise SystemExit(f"--broker {args.broker!r}: expected mqtts://host:port")
        self.args = args
        self.lock = threading.Lock()
        self.acked: set[int] = set()  # paho message ids with a PUBACK
        self.frames: dict[float, int] = {}  # frame id -> message id
        self.deliveries: Counter[float] = Counter()
        self.warmup: set[float] = set()
        self.warm = threading.Event()
        self.subscribed = threading.Event()
        self.events_topic = f"{DEFAULT_PREFIX}/events/{args.site}/{STREAM}"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"hog-probe-{uuid.uuid4().hex[:8]}"
        )
        client.username_pw_set(creds["username"], creds["password"])
        client.tls_set(ca_certs=args.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.reconnect_delay_set(1, 2)
        client.connect_async(url.hostname, url.port, keepalive=10)
        self.client = client
        self._last = 0.0

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.events_topic, qos=1)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self.lock:
            self.acked.add(mid)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            frame_id = round(float(json.loads(msg.payload)["source_ts"]), 6)
        except (ValueError, KeyError, TypeError):
            return
        if frame_id in self.warmup:
            self.warm.set()
            return
        with self.lock:
            self.deliveries[frame_id] += 1

    def _publish(self) -> tuple[float, int]:
        frame_id = round(max(time.time(), self._last + 0.001), 6)
        self._last = frame_id
        info = self.client.publish(
            frames_topic(self.args.site), encode_frame({"ts": frame_id}, [_INPUT]), qos=1
        )
        return frame_id, info.mid

    def run(self) -> dict[str, Any]:
        args = self.args
        self.client.loop_start()
        try:
            if not self.subscribed.wait(60):
                raise SystemExit("no SUBACK from the broker in 60 s")
            deadline = time.monotonic() + _READY_S
            while not self.warm.is_set() and time.monotonic() < deadline:  # bounded
                self.warmup.add(self._publish()[0])
                self.warm.wait(1.0)
            if not self.warm.is_set():
                raise SystemExit(f"the pipeline answered no frame in {_READY_S:g} s")
            print(json.dumps({"ready": time.time()}), flush=True)
            period, ends = 1.0 / args.rate, time.monotonic() + args.max_s
            next_at = time.monotonic()
            while not Path(args.stop_file).exists() and time.monotonic() < ends:  # bounded
                frame_id, mid = self._publish()
                with self.lock:
                    self.frames[frame_id] = mid
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))
            grace_ends = time.monotonic() + args.grace_s
            while time.monotonic() < grace_ends:  # bounded by the grace
                with self.lock:
                    if all(f in self.deliveries for f in self.frames):
                        break
                time.sleep(0.2)
            with self.lock:
                acked = [f for f, mid in self.frames.items() if mid in self.acked]
                lost = sorted(f for f in acked if f not in self.deliveries)
                return {
                    "sent": len(self.frames),
                    "acked": len(acked),
                    "delivered": sum(1 for f in self.frames if f in self.deliveries),
                    "duplicates": sum(n - 1 for n in self.deliveries.values()),
                    "lost": len(lost),
                    "unacked": len(self.frames) - len(acked),
                    "lost_ids": lost[:20],
                }
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Count the pipeline's events (see the module docstring); one JSON line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.multihost_events")
    parser.add_argument("--broker", required=True, help="mqtts://HOST:PORT (control listener)")
    parser.add_argument("--ca-file", required=True, help="the CA the broker's certificate is of")
    parser.add_argument("--credentials", required=True, help="<data>/mqtt/control-plane.json")
    parser.add_argument("--site", required=True, help="the agent's site")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second")
    parser.add_argument("--stop-file", required=True, help="sending stops once it exists")
    parser.add_argument("--max-s", type=float, default=900.0, help="sending stops after this")
    parser.add_argument("--grace-s", type=float, default=60.0, help="wait for the last events")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.rate <= 100:
        parser.error(f"--rate must be in (0, 100], got {args.rate}")
    print(json.dumps(_Probe(args).run()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
