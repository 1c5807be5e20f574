"""A fleet of simulated edge agents that speak the real MQTT contract, many per process.

Each :class:`SimAgent` is one real MQTT connection (paho, built by the agent's own
:func:`edge_agent._mqtt.new_client`: its last will, ``TCP_NODELAY``), driven with
the others by one epoll thread (:class:`~tests.support.fleet_pump.ClientPump`), logged in
with the credentials ``mesh agents enroll`` made for it. It does what
``edge_agent`` does on the wire, with the contract's own classes
(:mod:`edge_agent.protocol`):

- on connect: the retained ``online`` status, then its retained observed state;
  its last will is the retained ``offline`` status;
- a heartbeat every ``period_s`` (one :class:`Fleet` thread sends them all, each
  agent at its own phase), with host metrics drawn from its profile (its site, CPU
  share, link);
- a newer desired state: each module's artifact downloaded and verified by the
  agent's own :class:`edge_agent._cache.ModuleCache` (the Ed25519 signature before
  the download, the sha256 while streaming), then the observed state naming it
  (on a small pool of download threads, as the agent's reconciler thread would);
- an inference request: a reply frame of the right shape (one float32 output per
  row of the first input), without running a model;
- :meth:`SimAgent.publish_event`: an application event, QoS 1, with a unique id,
  asking for the control plane's acknowledgement (``ack``), as the agent's outbox
  does: it is kept until the control plane acknowledges its seq on
  ``event_acks`` and sent again after every reconnect and when unacknowledged
  for ``RESEND_S``, or twice the control plane's latest lag if longer (paho
  also holds it until the broker's PUBACK).

What it leaves out: ONNX Runtime (a module is verified and reported, never
loaded), the outbox and pipelines.

Faults: :meth:`SimAgent.churn` is a clean leave (``offline`` status, DISCONNECT)
and a return; :meth:`SimAgent.kill` stops the agent's network loop without a
DISCONNECT or a FIN, as a device that loses power: only the broker's keepalive
(1.5 x keepalive without a packet) ends the connection and sends the last will.

Example:
    >>> fleet = Fleet(creds, host="127.0.0.1", port=1883, cache_root=tmp)  # doctest: +SKIP
    >>> fleet.start(); fleet.wait_connected(60)                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent._cache import ArtifactError, ModuleCache
from edge_agent._mqtt import ClientOptions, new_client
from edge_agent.protocol import (
    AgentStatus,
    DesiredState,
    ErrorCode,
    ErrorInfo,
    Event,
    EventAcks,
    Heartbeat,
    HostMetrics,
    InferReply,
    InferRequest,
    InstalledModule,
    ModuleError,
    ObservedState,
    ProtocolError,
    Tensor,
    Topics,
    decode_frame,
    encode_frame,
    parse_header,
    parse_json,
)
from tests.support.fleet_pump import ClientPump

__all__ = ["AgentCredentials", "AgentProfile", "Fleet", "SimAgent"]

logger = logging.getLogger(__name__)

#: Seconds an agent waits for the control plane's acknowledgement before it sends
#: its unacknowledged events again (the agent's outbox waits 30 s too).
RESEND_S = 30.0

SITES = ("site-a", "site-b", "site-c", "site-d")
#: Device kinds: (CPU cores, typical CPU %, link RTT ms).
KINDS = ((1, 60.0, 40.0), (2, 35.0, 15.0), (4, 20.0, 5.0))


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """What enrolment gave one agent: its id, site, password and the signing key."""

    agent_id: str
    site: str
    password: str
    public_key: str


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """A simulated device: CPU cores, typical load, link RTT (drawn per agent)."""

    cores: int
    cpu_percent: float
    rtt_ms: float


def profile_for(index: int, rng: random.Random) -> AgentProfile:
    """The device kind of agent ``index`` (kinds in turn), its load jittered."""
    cores, cpu, rtt = KINDS[index % len(KINDS)]
    return AgentProfile(cores, max(1.0, rng.gauss(cpu, 8.0)), rtt)


class SimAgent:
    """One simulated agent: a real MQTT connection speaking the agent's contract."""

    def __init__(
        self,
        creds: AgentCredentials,
        *,
        host: str,
        port: int,
        topics: Topics,
        cache_dir: Path,
        profile: AgentProfile,
        keepalive_s: int,
        pool: ThreadPoolExecutor,
        pump: ClientPump,
    ) -> None:
        """Build the client; :meth:`connect` starts it."""
        self.creds = creds
        self.agent_id = creds.agent_id
        self.topics = topics
        self.profile = profile
        self._host, self._port, self._keepalive = host, port, keepalive_s
        self._pool = pool
        self._pump = pump
        self.leaving = False  # churned away: not reconnected until churn_return
        self._opened = False
        self._tried_at = 0.0
        self._cache = ModuleCache(
            cache_dir, public_key=_b64(creds.public_key), require_signature=True
        )
        self._lock = threading.Lock()
        self.version = 0  # the desired version acted on
        self._installed: list[InstalledModule] = []
        self._errors: list[ModuleError] = []
        self._started = time.time()
        self.seq = 0
        self.connected = threading.Event()
        self.dead = False  # killed: no more packets of any kind
        self.connects = 0
        self.downloads = 0
        #: The last desired state acted on: when it arrived, its install began and
        #: ended (monotonic; None until then), for the rollout's phases.
        self.desired_at: float | None = None
        self.apply_began: float | None = None
        self.apply_ended: float | None = None
        self.replies = 0
        self.events_sent = 0
        #: Events the control plane has not acknowledged: seq -> (topic, payload, sent at).
        self._unacked: dict[int, tuple[str, bytes, float]] = {}
        # The slowest of the latest acknowledgements: seconds since their events went.
        self._lag_s = 0.0
        self.resent = 0
        self._client = new_client(
            ClientOptions(
                client_id=creds.agent_id,
                protocol="3.1.1",
                username=creds.agent_id,
                password=creds.password,
                will=(topics.status(creds.agent_id), self._status("offline", "connection lost")),
                reconnect_min_s=1,
                reconnect_max_s=5,
            )
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.message_callback_add(topics.desired(creds.agent_id), self._on_desired)
        self._client.message_callback_add(topics.event_acks(creds.agent_id), self._on_acks)
        self._client.message_callback_add(
            f"{topics.prefix}/modules/+/infer/{creds.agent_id}", self._on_infer
        )

    # ------------------------------------------------------------------ wire

    def _status(self, state: str, reason: str | None = None) -> bytes:
        status = AgentStatus(
            agent=self.agent_id,
            state=state,
            site=self.creds.site,
            agent_version="sim",
            reason=reason,
        )
        return status.model_dump_json(exclude_none=True).encode()

    def connect(self) -> bool:
        """Open the connection (CONNECT sent) and hand it to the pump; False if refused."""
        self._tried_at = time.monotonic()
        try:
            if not self._opened:
                self._client.connect(self._host, self._port, keepalive=self._keepalive)
                self._opened = True
            else:
                self._client.reconnect()
        except OSError as exc:
            logger.debug("agent %s: connect failed: %s", self.agent_id, exc)
            return False
        self._pump.add(self._client)
        return True

    def needs_reconnect(self) -> bool:
        """Down, and neither killed nor churned away."""
        if self.dead or self.leaving or self.connected.is_set():
            return False
        return time.monotonic() - self._tried_at > 5.0  # a handshake may still be under way

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            logger.warning("agent %s refused: %s", self.agent_id, reason)
            return
        self.connects += 1
        client.subscribe([(self.topics.desired(self.agent_id), 1)])
        client.subscribe([(f"{self.topics.prefix}/modules/+/infer/{self.agent_id}", 1)])
        client.subscribe([(self.topics.event_acks(self.agent_id), 0)])
        client.publish(self.topics.status(self.agent_id), self._status("online"), 1, True)
        self._publish_observed()
        if self.connects > 1:
            self._resend()  # what the broker took may be gone with it (kill -9)
        self.connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()

    def _observed(self) -> ObservedState:
        with self._lock:
            return ObservedState(
                agent=self.agent_id,
                version=self.version,
                installed=list(self._installed),
                errors=list(self._errors),
            )

    def _publish_observed(self) -> None:
        payload = self._observed().model_dump_json(exclude_none=True).encode()
        self._client.publish(self.topics.observed(self.agent_id), payload, 1, True)

    def heartbeat(self, period_s: float, rng: random.Random) -> None:
        """Publish one heartbeat with host metrics from the profile (nothing while down)."""
        if self.dead or not self.connected.is_set():
            return
        self.seq += 1
        p = self.profile
        cpu = min(100.0, max(0.0, rng.gauss(p.cpu_percent, 5.0)))
        beat = Heartbeat(
            agent=self.agent_id,
            site=self.creds.site,
            seq=self.seq,
            uptime_s=time.time() - self._started,
            period_s=period_s,
            host=HostMetrics(
                cpu_percent=cpu,
                mem_percent=40.0,
                mem_available_mb=512.0 * p.cores,
                rss_mb=60.0,
                load1=cpu * p.cores / 100.0,
                load5=cpu * p.cores / 100.0,
                load15=cpu * p.cores / 100.0,
            ),
        )
        self._client.publish(self.topics.heartbeat(self.agent_id), beat.model_dump_json(), 0)
        if self._resend_due():
            self._resend()

    def publish_event(self, stream: str = "fleet") -> None:
        """Publish one application event, QoS 1 (held while down, sent on reconnect)."""
        if self.dead:
            return
        with self._lock:
            self.events_sent += 1
            seq = self.events_sent
        event = Event(
            id=f"{self.agent_id}-{seq}",
            agent=self.agent_id,
            site=self.creds.site,
            stream=stream,
            seq=seq,
            ack=True,
        )
        topic = self.topics.events(self.creds.site, stream)
        payload = event.model_dump_json(exclude_none=True).encode()
        with self._lock:
            self._unacked[seq] = (topic, payload, time.monotonic())
        self._client.publish(topic, payload, 1)

    @property
    def unacked(self) -> int:
        """Events sent that the control plane has not acknowledged yet."""
        with self._lock:
            return len(self._unacked)

    def _on_acks(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            acks = parse_json(msg.payload, EventAcks)
        except ProtocolError as exc:
            logger.debug("agent %s: bad event acknowledgement: %s", self.agent_id, exc)
            return
        now = time.monotonic()
        with self._lock:
            lags = [now - e[2] for seq in acks.seqs if (e := self._unacked.pop(seq, None))]
            if lags:
                self._lag_s = max(lags)

    def _resend_due(self) -> bool:
        """The oldest unacknowledged waited ``RESEND_S``, or twice the latest lag if longer."""
        with self._lock:
            if not self._unacked:
                return False
            oldest = min(sent for _, _, sent in self._unacked.values())
            return time.monotonic() - oldest >= max(RESEND_S, 2 * self._lag_s)

    def _resend(self) -> None:
        now = time.monotonic()
        with self._lock:
            again = [self._unacked[seq][:2] for seq in sorted(self._unacked)]
            self._unacked = {s: (t, p, now) for s, (t, p, _) in self._unacked.items()}
        self.resent += len(again)
        for topic, payload in again:
            self._client.publish(topic, payload, 1)

    # ------------------------------------------------------------------ desired state

    def _on_desired(self, _c: Any, _u: Any, msg: Any) -> None:
        if not msg.payload:
            return
        try:
            desired = parse_json(msg.payload, DesiredState)
        except ProtocolError as exc:
            logger.warning("agent %s: bad desired state: %s", self.agent_id, exc)
            return
        if desired.version > self.version:
            self.desired_at = time.monotonic()
            self._pool.submit(self._apply, desired)

    def _apply(self, desired: DesiredState) -> None:
        began = time.monotonic()
        installed: list[InstalledModule] = []
        errors: list[ModuleError] = []
        for spec in desired.modules:
            if not spec.has_artifact:
                continue
            try:
                inst = self._cache.install(spec)  # signature, download, sha256: the agent's code
            except ArtifactError as exc:
                errors.append(
                    ModuleError(
                        module=spec.name, version=spec.version, code=exc.code, message=str(exc)
                    )
                )
                continue
            self.downloads += 1
            installed.append(
                InstalledModule(
                    name=spec.name,
                    version=spec.version,
                    sha256=inst.sha256,
                    route_mode=spec.route.mode,
                    route_epoch=spec.route.epoch,
                    ready_ts=time.time(),
                )
            )
        with self._lock:
            if desired.version <= self.version:
                return
            self.version, self._installed, self._errors = desired.version, installed, errors
            self.apply_began, self.apply_ended = began, time.monotonic()
        if not self.dead:
            self._publish_observed()

    # ------------------------------------------------------------------ inference

    def _on_infer(self, client: Any, _u: Any, msg: Any) -> None:
        try:
            header, tensors = decode_frame(msg.payload)
            request = parse_header(header, InferRequest)
            reply_to = self.topics.check_reply(request.reply_to)
        except ProtocolError as exc:
            logger.debug("agent %s: bad request: %s", self.agent_id, exc)
            return
        with self._lock:
            served = {m.name: m.version for m in self._installed}
        reply = InferReply(
            correlation_id=request.correlation_id,
            module=request.module,
            version=served.get(request.module),
            node=self.agent_id,
            queue_ms=0.0,
            compute_ms=0.0,
        )
        rows = tensors[0].shape[0] if tensors and tensors[0].shape else 1
        out = Tensor("y", "float32", (rows, 1), bytes(4 * rows))
        if request.module not in served:
            # As the agent answers: the control plane's RTT probe (PING_MODULE) lands here too.
            error = ErrorInfo(code=ErrorCode.UNKNOWN_MODULE, message=f"{request.module} not served")
            reply = reply.model_copy(update={"error": error})
            out_tensors: list[Tensor] = []
        else:
            out_tensors = [out]
        client.publish(reply_to, encode_frame(reply, out_tensors), 1)
        self.replies += 1

    # ------------------------------------------------------------------ faults

    def churn_leave(self) -> None:
        """Leave cleanly: the retained ``offline`` status, then DISCONNECT."""
        if self.dead:
            return
        self._client.publish(
            self.topics.status(self.agent_id), self._status("offline", "churn"), 1, True
        )
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def churn_return(self) -> None:
        """Come back after :meth:`churn_leave`."""
        if not self.dead:
            self.leaving = False
            self.connect()

    def kill(self) -> None:
        """Go silent as a device losing power: no DISCONNECT, no FIN, no more packets."""
        self.dead = True
        self._pump.remove(
            self._client
        )  # never read, written or pinged again; the socket stays open
        self.connected.clear()

    def close(self) -> None:
        """End the connection (a killed agent's socket is just closed)."""
        if self.dead:
            sock = self._client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            return
        self._pump.remove(self._client)
        with contextlib.suppress(Exception):
            self._client.disconnect()


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


class Fleet:
    """Many :class:`SimAgent` in one process: one network thread for all, one for heartbeats.

    Args:
        creds: the enrolled agents.
        host: the devices' broker listener.
        port: its port.
        cache_root: each agent's module cache goes in ``cache_root/<id>``.
        prefix: the topic prefix.
        period_s: the heartbeat period.
        keepalive_s: MQTT keepalive of every agent.
        download_workers: threads that apply desired states (download and verify).
        seed: the random seed (profiles, metrics, churn picks).
    """

    def __init__(
        self,
        creds: Iterable[AgentCredentials],
        *,
        host: str,
        port: int,
        cache_root: Path,
        prefix: str = "mesh/v1",
        period_s: float = 1.0,
        keepalive_s: int = 10,
        download_workers: int = 8,
        seed: int = 19,
    ) -> None:
        """Build the agents; :meth:`start` connects them."""
        self._rng = random.Random(seed)
        self.period_s = period_s
        self.topics = Topics(prefix)
        self._pool = ThreadPoolExecutor(download_workers, thread_name_prefix="fleet-apply")
        self._pump = ClientPump().start()
        self.agents = [
            SimAgent(
                c,
                host=host,
                port=port,
                topics=self.topics,
                cache_dir=cache_root / c.agent_id,
                profile=profile_for(i, self._rng),
                keepalive_s=keepalive_s,
                pool=self._pool,
                pump=self._pump,
            )
            for i, c in enumerate(creds)
        ]
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None
        self._keeper: threading.Thread | None = None

    def start(self, *, connect_per_s: float = 200.0) -> None:
        """Connect every agent (paced at ``connect_per_s``) and start the heartbeats."""
        gap = 1.0 / connect_per_s
        for agent in self.agents:
            agent.connect()
            time.sleep(gap)
        self._beats = threading.Thread(target=self._beat_loop, name="fleet-heartbeats", daemon=True)
        self._beats.start()
        self._keeper = threading.Thread(
            target=self._reconnect_loop, name="fleet-reconnect", daemon=True
        )
        self._keeper.start()

    def _reconnect_loop(self) -> None:
        # What paho's own loop does for a lost connection: try again, every second.
        while not self._stop.wait(1.0):
            for agent in self.agents:
                if agent.needs_reconnect():
                    agent.connect()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until every live agent is connected."""
        deadline = time.monotonic() + timeout_s
        for agent in self.agents:
            if agent.dead:
                continue
            if not agent.connected.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _beat_loop(self) -> None:
        # Each agent beats once a period, the fleet spread evenly over it.
        n = max(1, len(self.agents))
        gap = self.period_s / n
        next_at = time.monotonic()
        while not self._stop.is_set():
            for agent in self.agents:
                if self._stop.is_set():
                    return
                try:
                    agent.heartbeat(self.period_s, self._rng)
                except Exception:  # one agent's failure never stops the others' heartbeats
                    logger.exception("heartbeat of %s failed", agent.agent_id)
                next_at += gap
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -self.period_s:  # fell a period behind: do not burst to catch up
                    next_at = time.monotonic()

    def pick(self, share: float, *, exclude: Iterable[SimAgent] = ()) -> list[SimAgent]:
        """A random ``share`` of the live agents (at least one), not in ``exclude``."""
        skip = {a.agent_id for a in exclude}
        live = [a for a in self.agents if not a.dead and a.agent_id not in skip]
        return self._rng.sample(live, max(1, round(share * len(live))))

    def close(self) -> None:
        """Stop the heartbeats and end every connection."""
        self._stop.set()
        for thread in (self._beats, self._keeper):
            if thread is not None:
                thread.join(10.0)
        for agent in self.agents:
            agent.close()
        self._pump.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
