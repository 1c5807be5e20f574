"""Events through the chaos mesh's edge pipeline: sent, delivered, duplicated, lost (issue 15).

The chaos mesh's agent runs one pipeline (:func:`pipeline_env`, its
``EDGE_AGENT_PIPELINES``): frames published on its site's sensor topic
(:data:`FRAMES`) go through the edge module's model, and each becomes an
event on the site's event stream (:data:`STREAM`), through the agent's outbox
(stored, published with QoS 1, replayed with its id after a crash).

:class:`EventProbe` plays the camera and the consumer, from the test process:
it publishes frames at a steady rate from its own thread (QoS 1) and follows
the events (QoS 1, a persistent session, so events published while it
reconnects are kept for it). A frame's id is its header's ``ts`` (when the
camera took it, unique per probe), which the pipeline carries into its event as
``source_ts``. It logs in as the operator's tools on the control plane's host
do (``mesh agents list``): with the control plane's broker login,
``<data>/mqtt/control-plane.json``, which ``mesh up`` creates; on Mosquitto,
on the control plane's listener. A device's login would not do: an enrolled
agent may read its site's sensor topics, not publish on them.

:class:`EventLedger` counts. Each frame ends as one of:

* **delivered**: its event came (once or more; each extra copy is a
  *duplicate*, and one that repeats an event id seen before, an outbox replay a
  consumer drops by id, is also counted as *replayed*);
* **unavailable**: never handed to a broker (the probe was not connected, or no
  broker acknowledged it), with the reason: no broker took it;
* **broker_outage**: a broker acknowledged it and no event came, and it was
  sent while the broker was down or just restarted (from a kill of the broker,
  or of the control plane with the embedded broker in it, until the edge module
  answers again, :meth:`EventProbe.outage_began` and :meth:`EventProbe.outage_ended`):
  a broker that lost the agent's session lets frames it takes before the agent
  subscribes again go to no one; counted apart, like requests' ``broker_outage``
  (both brokers now keep persistent sessions across their own restart, the
  embedded one in ``<data>/mqtt/sessions.db``, so the suite expects none);
* **lost**: a broker acknowledged it (PUBACK) and no event came within the
  final grace, outside an outage.

``frames == delivered + lost + broker_outage + unavailable`` and
``sent == delivered + lost + broker_outage``.
paho's rules hold: callback API VERSION2, ``TCP_NODELAY`` (both from
:func:`edge_agent._mqtt.new_client`), and its network thread only parses and counts.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_agent._mqtt import (
    ClientOptions,
    choose_protocol,
    close_client,
    new_client,
    reason_value,
    session_properties,
)
from edge_agent.protocol import DEFAULT_PREFIX, Tensor, Topics, encode_frame

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from tests.support.chaos import ChaosMesh

__all__ = ["FRAMES", "STREAM", "EventLedger", "EventProbe", "pipeline_env"]

#: The pipeline's name and event stream.
STREAM = "chaos-events"
#: The sensor stream the pipeline reads, under ``{prefix}/sensors/{site}/``.
FRAMES = "chaos-frames"
#: How long the probe waits for a first event before it counts (the pipeline starting).
READY_LIMIT_S = 90.0
#: After the last frame, how long events may take to come (an agent replaying its outbox).
GRACE_S = 30.0
#: How long a persistent session of the probe outlives a disconnection (MQTT 5).
SESSION_EXPIRY_S = 3600
#: The model's input: float32[1, 4] (the chaos mesh's tiny model).
_INPUT = Tensor("x", "float32", (1, 4), bytes(16))


def pipeline_env(module: str, site: str, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """The agent's environment for the chaos pipeline (``EDGE_AGENT_PIPELINES``).

    Frames on ``{prefix}/sensors/{site}/chaos-frames`` -> ``module`` -> events
    on ``{prefix}/events/{site}/chaos-events``; the source keeps a backlog of
    1024 frames (frames queued while the agent was down arrive at once).
    """
    spec = {
        "name": STREAM,
        "module": module,
        "source": {
            "kind": "mqtt",
            "topic": f"{prefix}/sensors/{site}/{FRAMES}",
            "options": {"buffer": 1024},
        },
        "stream": STREAM,
        "qos": 1,
    }
    return {"EDGE_AGENT_PIPELINES": json.dumps([spec])}


@dataclass
class _Frame:
    """One frame the probe tried to send."""

    sent_at: float  # seconds since the probe started
    acked: Callable[[], bool] | None  # None: never handed to paho
    reason: str | None = None  # why it was not handed


class EventLedger:
    """The frames sent and the events delivered; thread-safe.

    Example:
        >>> ledger = EventLedger()
        >>> ledger.handed(1.0, 0.0, lambda: True)
        >>> ledger.handed(2.0, 0.2, lambda: True)
        >>> ledger.not_handed(3.0, 0.4, "broker down")
        >>> for event_id in ("e1", "e1"):
        ...     ledger.delivered(1.0, event_id)
        >>> f = ledger.figures()
        >>> f["delivered"], f["duplicates"], f["replayed"], f["lost"], f["unavailable"]
        (1, 1, 1, 1, 1)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[float, _Frame] = {}
        self._deliveries: Counter[float] = Counter()
        self._event_ids: set[str] = set()
        self._replayed = 0
        self._foreign = 0
        self._outages: list[list[float | None]] = []  # [began, ended or None], seconds

    def handed(self, frame_id: float, at_s: float, acked: Callable[[], bool]) -> None:
        """Frame ``frame_id`` was given to paho at ``at_s``; ``acked()``: a broker took it."""
        with self._lock:
            self._frames[frame_id] = _Frame(at_s, acked)

    def not_handed(self, frame_id: float, at_s: float, reason: str) -> None:
        """Frame ``frame_id`` could not be given to any broker at ``at_s``, for ``reason``."""
        with self._lock:
            self._frames[frame_id] = _Frame(at_s, None, reason)

    def outage_began(self, at_s: float) -> None:
        """The broker went down at ``at_s`` (:meth:`outage_ended` once the agent is back)."""
        with self._lock:
            self._outages.append([at_s, None])

    def outage_ended(self, at_s: float) -> None:
        """Close the open outage, if any, at ``at_s``."""
        with self._lock:
            for outage in self._outages:
                if outage[1] is None:
                    outage[1] = at_s

    def _in_outage(self, at_s: float) -> bool:
        # Under the lock.
        return any(b is not None and b <= at_s and (e is None or at_s <= e)
                   for b, e in self._outages)  # fmt: skip

    def delivered(self, frame_id: float, event_id: str | None) -> None:
        """An event for ``frame_id`` came (a frame this ledger does not know is counted apart)."""
        with self._lock:
            if frame_id not in self._frames:
                self._foreign += 1
                return
            self._deliveries[frame_id] += 1
            if event_id is not None:
                if event_id in self._event_ids:
                    self._replayed += 1
                self._event_ids.add(event_id)

    def pending(self) -> int:
        """Frames handed to paho whose event has not come yet."""
        with self._lock:
            return sum(
                1
                for i, f in self._frames.items()
                if f.acked is not None and i not in self._deliveries
            )

    def figures(self) -> dict[str, Any]:
        """The counts as JSON (see the module doc), ``measured`` True."""
        with self._lock:
            reasons: Counter[str] = Counter()
            lost_at: list[float] = []
            delivered = lost = outage = unavailable = 0
            for frame_id, frame in self._frames.items():
                if frame_id in self._deliveries:
                    delivered += 1
                elif frame.acked is None:
                    unavailable += 1
                    reasons[frame.reason or "not handed"] += 1
                elif frame.acked() and self._in_outage(frame.sent_at):
                    outage += 1
                    reasons["taken by a broker restarting, before the agent was back"] += 1
                elif frame.acked():
                    lost += 1
                    lost_at.append(frame.sent_at)
                else:
                    unavailable += 1
                    reasons["no broker acknowledged it (PUBACK)"] += 1
            return {
                "frames": len(self._frames),
                "sent": delivered + lost + outage,
                "delivered": delivered,
                "duplicates": sum(n - 1 for n in self._deliveries.values()),
                "replayed": self._replayed,
                "lost": lost,
                "broker_outage": outage,
                "unavailable": unavailable,
                "reasons": dict(reasons.most_common(8)),
                # When lost frames were sent (s since the probe started), for evidence.
                "lost_at_s": [round(t, 1) for t in sorted(lost_at)[:20]],
                "outages_s": [
                    [round(b or 0, 1), None if e is None else round(e, 1)] for b, e in self._outages
                ],
                "foreign": self._foreign,
                "measured": True,
            }


class EventProbe:
    """Frames in at a steady rate, events out; counts each frame (see :class:`EventLedger`).

    Args:
        broker_url: ``mqtt://host:port`` of a listener that takes ``username``.
        username: a broker login that may publish ``frames_topic`` and read ``events_topic``.
        password: its password.
        frames_topic: where the pipeline reads frames.
        events_topic: where the pipeline's events come.
        rate_hz: frames per second.
        log: where progress lines go.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        username: str,
        password: str,
        frames_topic: str,
        events_topic: str,
        rate_hz: float = 5.0,
        log: Callable[[str], None] = print,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        parts = urlsplit(broker_url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"broker_url {broker_url!r}: expected mqtt://host:port")
        self._host, self._port = parts.hostname, parts.port or 1883
        self._username, self._password = username, password
        self.frames_topic, self.events_topic = frames_topic, events_topic
        self.rate_hz = rate_hz
        self.log = log
        self.ledger = EventLedger()
        # Its own id: a later probe's session never receives this one's events.
        self.client_id = f"chaos-probe-{uuid.uuid4().hex[:8]}"
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warmup: set[float] = set()
        self._warm = threading.Event()
        self._last_id = 0.0
        self._started = time.monotonic()
        self.refusals: Counter[str] = Counter()
        self._marks: list[tuple[float, str]] = []
        self._marks_lock = threading.Lock()

    @classmethod
    def for_mesh(cls, mesh: ChaosMesh, *, rate_hz: float = 5.0) -> EventProbe:
        """A probe for ``mesh``'s pipeline, with the control plane's login."""
        from mesh.edge._enrolment import EdgeSettings, control_plane_credentials

        creds = control_plane_credentials(EdgeSettings(data_dir=mesh.data))
        topics = Topics(DEFAULT_PREFIX)
        return cls(
            mesh.control_broker_url,
            username=creds.username,
            password=creds.password,
            frames_topic=f"{topics.prefix}/sensors/{mesh.SITE}/{FRAMES}",
            events_topic=topics.events(mesh.SITE, STREAM),
            rate_hz=rate_hz,
            log=mesh.log,
        )

    # -- lifecycle

    def start(self) -> EventProbe:
        """Connect, subscribe, wait for the pipeline to answer a frame, then send at the rate.

        Raises:
            AssertionError: no SUBACK, or no event for a warm-up frame, within READY_LIMIT_S.
        """
        protocol = choose_protocol("auto", self._host, self._port)
        options = ClientOptions(
            self.client_id,
            protocol,
            clean_session=False,
            username=self._username,
            password=self._password,
            reconnect_min_s=1,
            reconnect_max_s=2,
        )
        client = new_client(options)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        extra: dict[str, Any] = {}
        if protocol == "5":
            extra = {"clean_start": False,
                     "properties": session_properties(protocol, SESSION_EXPIRY_S)}  # fmt: skip
        # paho's own thread connects, and reconnects with a 1-2 s backoff until stop().
        client.connect_async(self._host, self._port, keepalive=10, **extra)
        client.loop_start()
        self._client = client
        deadline = time.monotonic() + READY_LIMIT_S
        if not self._subscribed.wait(READY_LIMIT_S):
            self.close()
            raise AssertionError(
                f"probe: no SUBACK from {self._host}:{self._port}: {self.refusals}"
            )
        while not self._warm.is_set() and time.monotonic() < deadline:
            frame_id = self._next_id()
            self._warmup.add(frame_id)
            client.publish(self.frames_topic, self._frame(frame_id), qos=1)
            self._warm.wait(0.5)
        if not self._warm.is_set():
            self.close()
            raise AssertionError(f"probe: the pipeline answered no frame in {READY_LIMIT_S:.0f} s")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._send_loop, name="chaos-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = GRACE_S) -> dict[str, Any]:
        """Stop sending; wait (at most ``grace_s``) for the events still due; the figures."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        deadline = time.monotonic() + grace_s
        while self.ledger.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.close()
        return self.figures()

    def close(self) -> None:
        """Leave the session with no subscription, disconnect and stop paho's thread."""
        self._stop.set()
        client, self._client = self._client, None
        if client is not None:
            if self._connected.is_set():
                client.unsubscribe(self.events_topic)  # nothing queued for a dead session
            close_client(client)

    def mark(self, what: str) -> None:
        """Note ``what`` happened now (a fault), on the clock of ``lost_at_s``."""
        with self._marks_lock:
            self._marks.append((round(self._now(), 1), what))

    def outage_began(self) -> None:
        """The broker is killed now (:meth:`outage_ended` once the edge module answers again)."""
        self.ledger.outage_began(self._now())

    def outage_ended(self) -> None:
        """The edge module answers again: the agent is back on the broker."""
        self.ledger.outage_ended(self._now())

    def _now(self) -> float:
        return time.monotonic() - self._started

    def figures(self) -> dict[str, Any]:
        """The ledger's figures so far, with the marks (``[[s, what], ...]``)."""
        with self._marks_lock:
            return {**self.ledger.figures(), "marks": [list(m) for m in self._marks]}

    # -- sending (its own thread)

    def _next_id(self) -> float:
        frame_id = round(max(time.time(), self._last_id + 0.001), 6)
        self._last_id = frame_id
        return frame_id

    @staticmethod
    def _frame(frame_id: float) -> bytes:
        return encode_frame({"ts": frame_id}, [_INPUT])

    def _send_loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + period, time.monotonic() - period)  # no burst to catch up
            frame_id = self._next_id()
            at = self._now()
            client = self._client
            if client is None or not self._connected.is_set():
                self.ledger.not_handed(frame_id, at, "broker down: not connected")
                continue
            # If the connection drops meanwhile, paho keeps the frame and sends it on
            # reconnection; the broker's PUBACK (or its event) decides how it counts.
            info = client.publish(self.frames_topic, self._frame(frame_id), qos=1)
            self.ledger.handed(frame_id, at, info.is_published)

    # -- paho callbacks (its network thread: parse, count, never wait)

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        code = reason_value(reason)
        if code != 0:
            self.refusals[f"CONNACK {code}"] += 1
            return
        self._connected.set()
        client.subscribe(self.events_topic, qos=1)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self._connected.clear()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
            frame_id = round(float(body["source_ts"]), 6)
            event_id = body.get("id")
        except (ValueError, KeyError, TypeError):
            self.refusals["an event without a frame id"] += 1
            return
        if frame_id in self._warmup:
            self._warm.set()
            return
        self.ledger.delivered(frame_id, event_id if isinstance(event_id, str) else None)
