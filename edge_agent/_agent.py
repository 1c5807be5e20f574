"""The edge agent: desired state in, observed state out, inference served, pipelines run.

Threads: paho's network thread (decodes messages, queues work, never runs a
model), one reconciler (downloads, verifies, loads, swaps), worker(s) per
module, one per pipeline, the outbox pump and the heartbeat. The reconciler,
the pipelines, the pump and the heartbeat run under one
:class:`~edge_agent._supervisor.Supervisor`: one that fails is restarted, and
its failures are counted in the heartbeat's ``faults``, with the damaged files
moved aside at start and the estimated clock offset.

Start-up order makes the agent useful before the broker answers: the cached
modules are loaded and the pipelines started from ``state.json`` first, then the
connection is attempted in the background. Applying desired states is the
reconciler's (:mod:`edge_agent._reconciler`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from ._budget import MemoryBudget
from ._cache import Installed, ModuleCache
from ._clock import ClockOffset
from ._heartbeat import HeartbeatLoop, process_start_time, sample_host
from ._offload import OffloadClient
from ._outbox import Outbox, OutboxItem
from ._pipelines import Pipeline
from ._reconciler import DesiredStateReconciler
from ._runtime import Job, JobResult, ModuleServer
from ._samples import Sampler
from ._serving import InferenceEndpoint
from ._settings import AgentSettings
from ._sources import SourceContext, make_source
from ._supervisor import Supervisor
from ._transport import ConnectionConfig, Message, MqttTransport, PublishHandle, Transport
from .protocol import (
    AgentFaults,
    AgentStatus,
    DesiredState,
    ErrorCode,
    EventAcks,
    Heartbeat,
    InstalledModule,
    ModuleError,
    ModuleSpec,
    ObservedState,
    PipelineSpec,
    ProtocolError,
    Route,
    SamplingPolicy,
    Tensor,
    parse_json,
)

__all__ = ["Agent"]

logger = logging.getLogger(__name__)


def _agent_version() -> str:
    try:
        return package_version("fogmesh")
    except PackageNotFoundError:
        return "0"


class Agent(DesiredStateReconciler):
    """One edge agent process.

    Example:
        >>> from edge_agent import AgentSettings, MemoryBroker, MemoryTransport
        >>> import tempfile, pathlib
        >>> s = AgentSettings(id="cam-1", cache_dir=pathlib.Path(tempfile.mkdtemp()),
        ...                   require_signature=False, heartbeat_period_s=60)
        >>> broker = MemoryBroker()
        >>> agent = Agent(s, transport=MemoryTransport(broker, "cam-1"))
        >>> agent.start(); agent.wait_connected(5)
        True
        >>> agent.stop()
    """

    def __init__(self, settings: AgentSettings, *, transport: Transport | None = None) -> None:
        """Build the agent; :meth:`start` makes it run."""
        self.settings = settings
        self.agent_id = settings.id
        self.site = settings.site
        self.topics = settings.topics
        self._started_at = time.time()
        self.supervisor = Supervisor()
        self._transport = transport or self._make_transport()
        self.clock = ClockOffset(max_skew_s=settings.max_clock_skew_s)
        self._cache = ModuleCache(
            settings.cache_dir,
            public_key=settings.public_key_bytes(),
            require_signature=settings.require_signature,
            max_bytes=settings.max_artifact_bytes,
            timeout_s=settings.download_timeout_s,
        )
        self._outbox = Outbox(
            settings.cache_dir / "outbox.db",
            max_events=settings.outbox_max_events,
            max_bytes=settings.outbox_max_bytes,
            confirm_timeout_s=settings.outbox_confirm_timeout_s,
        )
        self._offload = OffloadClient(
            self._transport,
            self.topics,
            self.agent_id,
            qos=settings.qos,
            max_payload_bytes=settings.max_payload_bytes,
        )
        self._lock = threading.RLock()
        self._servers: dict[str, ModuleServer] = {}
        self.memory_budget = MemoryBudget(settings.memory_budget_bytes)
        self._installed: dict[str, Installed] = {}
        self._specs: dict[str, ModuleSpec] = {}
        self._routes: dict[str, Route] = {}
        self._errors: dict[str, ModuleError] = {}
        self._pipelines: dict[str, Pipeline] = {}
        self._desired: DesiredState | None = None
        self._version = -1
        self._pending: DesiredState | None = None
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._connected = threading.Event()
        self._ready = threading.Event()
        self._beat_seq = 0
        self._endpoint = InferenceEndpoint(
            self._transport,
            self.agent_id,
            self._servers.get,
            topics=self.topics,
            budget=self.memory_budget,
            qos=settings.qos,
            max_payload_bytes=settings.max_payload_bytes,
            served=lambda: [n for n, s in self._servers.items() if s.current is not None],
            clock=self.clock,
        )
        self._reconciler: threading.Thread | None = None
        # Pipeline inputs kept and uploaded for retraining, as each module's spec asks.
        self.sampler = Sampler(
            self._publish_sample, self.topics, self.agent_id, self.site, self._sampling_policy
        )
        self._heartbeat = HeartbeatLoop(
            settings.heartbeat_period_s, self._send_heartbeat, supervisor=self.supervisor
        )

    # ------------------------------------------------------------------ lifecycle

    def _status(self, state: str, reason: str | None = None) -> bytes:
        status = AgentStatus(
            agent=self.agent_id,
            state=state,
            site=self.site,
            agent_version=_agent_version(),
            reason=reason,
        )
        return status.model_dump_json(exclude_none=True).encode()

    def _make_transport(self) -> MqttTransport:
        s = self.settings
        user, password = s.credentials()
        return MqttTransport(
            ConnectionConfig(
                host=s.broker_host,
                port=s.broker_port,
                client_id=s.id,
                keepalive_s=s.keepalive_s,
                protocol=s.protocol,
                tls=s.tls,
                ca_file=str(s.ca_file) if s.ca_file else None,
                cert_file=str(s.cert_file) if s.cert_file else None,
                key_file=str(s.key_file) if s.key_file else None,
                tls_insecure=s.tls_insecure,
                username=user,
                password=password,
                will=(self.topics.status(s.id), self._status("offline", "connection lost")),
                session_expiry_s=s.session_expiry_s,
                reconnect_min_s=s.reconnect_min_s,
                reconnect_max_s=s.reconnect_max_s,
                max_inflight=s.max_inflight,
            ),
            supervisor=self.supervisor,
        )

    def start(self) -> None:
        """Serve cached modules and pipelines, then connect in the background."""
        self._restore()
        self._ready.set()
        logger.info(
            "agent %s ready %.3fs after process start with %d cached module(s)",
            self.agent_id,
            time.time() - process_start_time(),
            len(self._servers),
        )
        t = self._transport
        t.add_connection_listener(self._on_connection)
        t.subscribe(self.topics.desired(self.agent_id), self._on_desired, qos=1)
        t.subscribe(self.topics.event_acks(self.agent_id), self._on_event_acks, qos=0)
        t.subscribe(
            f"{self.topics.prefix}/modules/+/infer/{self.agent_id}", self._endpoint.on_request, 1
        )
        self._offload.start()
        self._outbox.start_pump(
            self._publish_event, window=self.settings.outbox_window, supervisor=self.supervisor
        )
        self._reconciler = self.supervisor.spawn("reconciler", self._reconcile_loop)
        self._heartbeat.start()
        t.start()

    def stop(self, reason: str = "shutdown") -> None:
        """Stop everything; publish the retained offline status first if connected."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._wake.notify_all()
            pipelines = list(self._pipelines.values())
        self.supervisor.stop()
        for p in pipelines:
            p.stop()
        self._heartbeat.stop()
        if self._reconciler is not None and self._reconciler.is_alive():
            self._reconciler.join(10.0)
        self._outbox.close()
        self._transport.stop(
            final=(self.topics.status(self.agent_id), self._status("offline", reason))
        )
        for server in list(self._servers.values()):
            server.stop()
        logger.info("agent %s stopped (%s)", self.agent_id, reason)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until cached modules are served (before any broker contact)."""
        return self._ready.wait(timeout_s)

    def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait until the broker session is up."""
        return self._connected.wait(timeout_s)

    @property
    def version(self) -> int:
        """The desired-state version applied (-1 before any)."""
        return self._version

    def _on_connection(self, up: bool) -> None:
        if up:
            self._connected.set()
            self._transport.publish(
                self.topics.status(self.agent_id), self._status("online"), qos=1, retain=True
            )
            self._publish_observed()
        else:
            self._connected.clear()
        self._outbox.set_online(up)

    # ------------------------------------------------------------------ pipelines

    def _pipeline_specs(self) -> dict[str, PipelineSpec]:
        specs = {p.name: p for p in self.settings.pipelines}
        if self._desired is not None:
            specs.update({p.name: p for p in self._desired.pipelines})
        return specs

    def _sync_pipelines(self) -> None:
        wanted = self._pipeline_specs()
        with self._lock:
            current = dict(self._pipelines)
        for name, pipe in current.items():
            if wanted.get(name) != pipe.spec or not pipe.running:
                pipe.stop()
                with self._lock:
                    self._pipelines.pop(name, None)
        for name, spec in wanted.items():
            if name in self._pipelines or self._stopping:
                continue
            if spec.module not in self._specs:
                logger.warning(
                    "pipeline %s: module %s is not desired; not started", name, spec.module
                )
                continue
            ctx = SourceContext(
                transport=self._transport,
                base_dir=self.settings.cache_dir,
                max_payload_bytes=self.settings.max_payload_bytes,
                name=name,
            )
            try:
                source = make_source(spec.source, ctx)
                topic = self.topics.events(self.site, spec.stream_name)
                pipe = Pipeline(
                    spec,
                    source,
                    self,
                    topic,
                    supervisor=self.supervisor,
                    clock=self._cp_time,
                    sampler=self.sampler,
                )
                pipe.start()
            except (ValueError, OSError) as exc:
                logger.error("pipeline %s: cannot start: %s", name, exc)
                self._errors[f"pipeline:{name}"] = ModuleError(
                    module=spec.module,
                    code=ErrorCode.BAD_REQUEST,
                    message=f"pipeline {name}: {exc}",
                )
                continue
            with self._lock:
                self._pipelines[name] = pipe

    # PipelineHost
    def _cp_time(self) -> float:
        """The control plane's clock as this device reads it (its own, corrected)."""
        return time.time() + self.clock.offset_s

    def route_for(self, module: str) -> Route | None:
        """The module's current route (None when not desired)."""
        return self._routes.get(module)

    def has_local(self, module: str) -> bool:
        """Whether a model is loaded for ``module``."""
        server = self._servers.get(module)
        return server is not None and server.current is not None

    def run_local(self, module: str, tensors: Sequence[Tensor], timeout_s: float) -> JobResult:
        """Run ``module`` here and wait (used by pipelines)."""
        server = self._servers.get(module)
        if server is None or server.current is None:
            err = ProtocolError(ErrorCode.NOT_READY, f"module {module} is not loaded here")
            return JobResult(None, err, None, 0.0, 0.0)
        fut: Future[JobResult] = Future()
        job = Job(tensors, fut.set_result, enqueued=time.perf_counter())
        deadline = time.monotonic() + timeout_s
        while not server.submit(job):  # full: pipelines wait, requests are refused
            if time.monotonic() > deadline:
                err = ProtocolError(ErrorCode.OVERLOADED, f"module {module}: queue full")
                return JobResult(None, err, None, 0.0, 0.0)
            time.sleep(0.005)
        try:
            return fut.result(timeout_s)
        except FutureTimeout:
            err = ProtocolError(ErrorCode.EXPIRED, f"module {module}: no result in {timeout_s}s")
            return JobResult(None, err, None, 0.0, 0.0)

    def run_offload(self, module: str, route: Route, tensors: Sequence[Tensor]) -> JobResult:
        """Run ``module`` on ``route.target`` (used by pipelines)."""
        assert route.target is not None
        if not self._transport.connected:
            err = ProtocolError(ErrorCode.OFFLOAD_FAILED, "broker not reachable")
            return JobResult(None, err, None, 0.0, 0.0)
        return self._offload.request(module, route.target, tensors, route.timeout_ms / 1e3)

    def emit(self, topic: str, make_payload: Callable[[int], bytes], qos: int) -> int:
        """Buffer an event in the outbox (published in order when connected)."""
        return self._outbox.put(topic, make_payload, qos)

    def watch(self, topic: str, handler: Callable[[bytes], None]) -> Callable[[], None]:
        """Pass each message on ``topic`` to ``handler`` (on the network thread) until undone."""
        self._transport.subscribe(topic, lambda msg: handler(msg.payload), qos=0)
        return lambda: self._transport.unsubscribe(topic)

    def _sampling_policy(self, module: str) -> SamplingPolicy | None:
        spec = self._specs.get(module)
        return spec.sampling if spec is not None else None

    def _publish_sample(self, topic: str, payload: bytes) -> bool:
        """Publish a sampled input (QoS 1, never waits); False when not connected."""
        return (
            self._transport.connected and self._transport.publish(topic, payload, qos=1) is not None
        )

    def _publish_event(self, item: OutboxItem) -> PublishHandle | None:
        return self._transport.publish(item.topic, item.payload, qos=item.qos)

    def _on_event_acks(self, msg: Message) -> None:
        """The control plane handled these events: the outbox may delete them (never raises)."""
        try:
            acks = parse_json(msg.payload, EventAcks, max_bytes=self.settings.max_payload_bytes)
        except ProtocolError as exc:
            logger.debug("agent %s: event acks ignored: %s", self.agent_id, exc)
            return
        self._outbox.confirmed(acks.seqs)

    # ------------------------------------------------------------------ reporting

    def observed(self) -> ObservedState:
        """The observed state now."""
        with self._lock:
            installed = []
            for name, spec in sorted(self._specs.items()):
                route = self._routes.get(name, spec.route)
                server = self._servers.get(name)
                model = server.current if server else None
                if model is None and spec.has_artifact:
                    continue
                installed.append(
                    InstalledModule(
                        name=name,
                        version=model.version if model else spec.version,
                        sha256=model.sha256 if model else None,
                        inputs=list(model.inputs) if model else [],
                        outputs=list(model.outputs) if model else [],
                        provider=model.provider if model else None,
                        route_mode=route.mode,
                        route_epoch=route.epoch,
                        ready_ts=model.loaded_at if model else None,
                    )
                )
            return ObservedState(
                agent=self.agent_id,
                version=max(self._version, 0),
                installed=installed,
                errors=list(self._errors.values()),
                pipelines=sorted(n for n, p in self._pipelines.items() if p.running),
            )

    def _publish_observed(self) -> None:
        obs = self.observed()
        self._transport.publish(
            self.topics.observed(self.agent_id),
            obs.model_dump_json(exclude_none=True).encode(),
            qos=1,
            retain=True,
        )

    def heartbeat(self) -> Heartbeat:
        """A heartbeat built now."""
        self._beat_seq += 1
        with self._lock:
            servers = dict(self._servers)
        return Heartbeat(
            agent=self.agent_id,
            site=self.site,
            seq=self._beat_seq,
            uptime_s=round(time.time() - self._started_at, 3),
            period_s=self.settings.heartbeat_period_s,
            host=sample_host(),
            modules={n: s.stats() for n, s in servers.items()},
            outbox=self._outbox.stats(),
            faults=self.faults(),
        )

    def faults(self) -> AgentFaults:
        """Damaged files moved aside, background thread failures, the clock offset."""
        moved = [*self._outbox.quarantined, *self._cache.quarantined]
        return AgentFaults(
            quarantined=[str(p) for p in moved],
            thread_failures=self.supervisor.failures(),
            clock_offset_s=round(self.clock.offset_s, 3),
        )

    def _send_heartbeat(self) -> None:
        self._endpoint.release_acknowledged()  # after a burst, with no request to do it
        if not self._transport.connected:
            return
        beat = self.heartbeat()
        self._transport.publish(
            self.topics.heartbeat(self.agent_id),
            beat.model_dump_json(exclude_none=True).encode(),
            qos=0,
            expiry_s=max(1, int(self.settings.heartbeat_period_s * 3)),
        )

    def debug_state(self) -> dict[str, Any]:
        """A JSON-able summary (for logs and tests)."""
        return json.loads(self.observed().model_dump_json())  # type: ignore[no-any-return]
