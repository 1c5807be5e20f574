"""The edge bus's agent registry: what the control plane knows of each agent.

It is fed the messages the gateway receives and keeps, per agent, its state
(online/offline from the retained ``status`` topic and the agents' last wills),
its last status and heartbeat, a bounded ring of heartbeat metrics, and its
retained ``observed`` and ``desired`` states. It also deduplicates application
events by event id, so replayed events count once, and lets callers wait for a
condition on any of this.

No MQTT here: the gateway routes messages in and owns the handlers, so the
registry is tested by feeding it payloads.

Example:
    >>> from edge_agent.protocol import AgentStatus
    >>> registry = AgentRegistry()
    >>> status = AgentStatus(agent="cam-07", state="online", site="j1")
    >>> registry.handle_agent("cam-07", "status", "mesh/v1/agents/cam-07/status",
    ...                       status.model_dump_json().encode())
    True
    >>> registry.agent("cam-07").state
    'online'
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edge_agent.protocol import (
    AgentStatus,
    DesiredState,
    DropLog,
    Event,
    Heartbeat,
    ObservedState,
    ProtocolError,
    parse_json,
)
from mesh.edge._records import (
    AgentView,
    EdgeRequestTimeoutError,
    HealthSink,
    HeartbeatSample,
    _Counters,
)

__all__ = ["AgentRegistry"]

logger = logging.getLogger(__name__)

AGENT_LEAVES = ("status", "heartbeat", "observed", "desired")
_PERSIST_EVERY_S = 10.0  # heartbeats reach the health sink at most this often per agent


class _Agent:
    __slots__ = (
        "desired_version",
        "heartbeat",
        "heartbeat_at",
        "id",
        "last_persist",
        "observed",
        "ring",
        "site",
        "state",
        "status",
        "status_at",
    )

    def __init__(self, agent_id: str, ring: int) -> None:
        self.id = agent_id
        self.state = "unknown"
        self.site: str | None = None
        self.status: AgentStatus | None = None
        self.status_at: float | None = None
        self.heartbeat: Heartbeat | None = None
        self.heartbeat_at: float | None = None
        self.observed: ObservedState | None = None
        self.desired_version: int | None = None
        self.ring: deque[HeartbeatSample] = deque(maxlen=ring)
        self.last_persist = 0.0

    def view(self) -> AgentView:
        return AgentView(
            self.id,
            self.state,
            self.site,
            self.status,
            self.status_at,
            self.heartbeat,
            self.heartbeat_at,
            self.observed,
            self.desired_version,
        )


class AgentRegistry:
    """Agents' status, heartbeats, observed and desired states; event dedupe; waiting.

    Thread-safe. Nothing is called under the registry's lock: the health sink,
    and the predicates of :meth:`wait_until`, run without it.

    Args:
        metrics_ring: heartbeats kept per agent.
        dedupe_window: event ids remembered for deduplication.
        health_sink: where agent health is persisted (e.g. the enrolment store).
        name: who owns the registry, for log messages (the gateway's client id).
        clock: Unix time in seconds (injected in tests).
    """

    def __init__(
        self,
        *,
        metrics_ring: int = 360,
        dedupe_window: int = 100_000,
        health_sink: HealthSink | None = None,
        name: str = "gateway",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create an empty registry."""
        self._ring = metrics_ring
        self._dedupe_window = dedupe_window
        self._health = health_sink
        self._name = name
        self._drops = DropLog(logger)
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._agents: dict[str, _Agent] = {}
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._counters = _Counters()  # malformed, events and duplicate_events only
        self._generation = 0  # bumped on every registry change, for wait_until

    # ------------------------------------------------------------------ intake

    def handle_agent(self, agent_id: str, leaf: str, topic: str, payload: bytes) -> bool:
        """Record a message from ``{prefix}/agents/{agent_id}/{leaf}``.

        ``status``, ``heartbeat``, ``observed`` and ``desired`` update the agent;
        other leaves and empty payloads (a cleared retained message) are ignored.

        Returns:
            Whether the message should reach subscribers: False when malformed.
        """
        if leaf not in AGENT_LEAVES:
            return True
        if not payload:  # a retained message was cleared
            return True
        now = self._clock()
        persist: dict[str, Any] | None = None
        try:
            if leaf == "status":
                status = parse_json(payload, AgentStatus)
                with self._changed:
                    agent = self._agent(agent_id)
                    changed = agent.state != status.state
                    agent.state, agent.status, agent.status_at = status.state, status, now
                    agent.site = status.site or agent.site
                    self._generation += 1
                    self._changed.notify_all()
                persist = {"state": status.state, "seen_at": now}
                log = logger.info if changed else logger.debug
                log(
                    "agent %s is %s (site %s%s)",
                    agent_id,
                    status.state,
                    status.site,
                    f", {status.reason}" if status.reason else "",
                )
            elif leaf == "heartbeat":
                hb = parse_json(payload, Heartbeat)
                with self._changed:
                    agent = self._agent(agent_id)
                    agent.heartbeat, agent.heartbeat_at = hb, now
                    agent.site = hb.site or agent.site
                    agent.ring.append(HeartbeatSample(now, hb))
                    due = now - agent.last_persist >= _PERSIST_EVERY_S
                    if due:
                        agent.last_persist = now
                    self._generation += 1
                    self._changed.notify_all()
                if due:
                    persist = {
                        "seen_at": now,
                        "heartbeat_at": now,
                        "metrics": hb.host.model_dump(mode="json"),
                    }
            elif leaf == "observed":
                observed = parse_json(payload, ObservedState)
                with self._changed:
                    self._agent(agent_id).observed = observed
                    self._generation += 1
                    self._changed.notify_all()
                logger.info(
                    "agent %s observed version %d: %d installed, %d errors",
                    agent_id,
                    observed.version,
                    len(observed.installed),
                    len(observed.errors),
                )
            else:
                desired = parse_json(payload, DesiredState)
                self.set_desired_version(agent_id, desired.version)
        except ProtocolError as exc:
            return self._malformed(topic, exc)
        if persist is not None and self._health is not None:
            try:
                self._health.record_health(agent_id, **persist)
            except Exception:
                logger.warning(
                    "gateway %s: could not persist health of agent %s",
                    self._name,
                    agent_id,
                    exc_info=True,
                )
        return True

    def set_desired_version(self, agent_id: str, version: int) -> None:
        """Remember the desired version last published to or seen for an agent."""
        with self._changed:
            self._agent(agent_id).desired_version = version
            self._generation += 1
            self._changed.notify_all()

    def accept_event(self, topic: str, payload: bytes) -> Event | None:
        """Parse an event from ``topic`` and remember its id.

        Returns:
            The event the first time its id is seen; None for a duplicate (among
            the last ``dedupe_window`` ids) or a malformed message.
        """
        event = self.parse_event(topic, payload)
        if event is None or not self.first_time(topic, event):
            return None
        return event

    def parse_event(self, topic: str, payload: bytes) -> Event | None:
        """Parse an event from ``topic``; None (logged and counted) when malformed."""
        try:
            return parse_json(payload, Event)
        except ProtocolError as exc:
            self._malformed(topic, exc)
            return None

    def first_time(self, topic: str, event: Event) -> bool:
        """Remember ``event``'s id; False (counted) for a duplicate among the last ones."""
        with self._lock:
            if event.id in self._seen_events:
                self._counters.duplicate_events += 1
                self._seen_events.move_to_end(event.id)
                duplicate = True
            else:
                self._counters.events += 1
                self._seen_events[event.id] = None
                if len(self._seen_events) > self._dedupe_window:
                    self._seen_events.popitem(last=False)
                duplicate = False
        if duplicate:
            logger.debug(
                "gateway %s: duplicate event %s on %s dropped", self._name, event.id, topic
            )
        return not duplicate

    def _malformed(self, topic: str, exc: Exception) -> bool:
        with self._lock:
            self._counters.malformed += 1
        # A flood of these (a broken or hostile client) is a log line per interval.
        self._drops.drop(
            "gateway %s: dropped a malformed message on %s: %s", self._name, topic, exc
        )
        return False

    def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(agent_id, self._ring)
        return agent

    # ----------------------------------------------------------------- queries

    def site_of(self, agent_id: str) -> str | None:
        """The site an agent last said it is at (None: never heard of, or no site)."""
        with self._lock:
            agent = self._agents.get(agent_id)
            return agent.site if agent is not None else None

    def observed_version(self, agent_id: str) -> int | None:
        """The desired-state version an agent last reported applied (None: no report)."""
        with self._lock:
            agent = self._agents.get(agent_id)
            observed = agent.observed if agent is not None else None
            return observed.version if observed is not None else None

    def agents(self) -> list[AgentView]:
        """Every agent heard of, by id."""
        with self._lock:
            return [self._agents[k].view() for k in sorted(self._agents)]

    def agent(self, agent_id: str) -> AgentView | None:
        """One agent's snapshot, or None if never heard of."""
        with self._lock:
            agent = self._agents.get(agent_id)
            return agent.view() if agent is not None else None

    def metrics(self, agent_id: str) -> list[HeartbeatSample]:
        """An agent's heartbeat ring, oldest first."""
        with self._lock:
            agent = self._agents.get(agent_id)
            return list(agent.ring) if agent is not None else []

    def counters(self) -> _Counters:
        """A copy of the registry's counters (malformed, events, duplicate_events)."""
        with self._lock:
            return replace(self._counters)

    # ----------------------------------------------------------------- waiting

    def notify(self) -> None:
        """Wake :meth:`wait_until` callers to re-check (e.g. after an event or a reconnect)."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` holds or ``timeout_s`` passes; returns whether it held.

        Re-checked on every registry change or :meth:`notify` (and every 50 ms, for
        predicates on anything else). ``predicate`` runs without the registry's lock,
        so it may call the registry.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                generation = self._generation
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(min(left, 0.05))

    def wait_for_agent(
        self, agent_id: str, *, state: str = "online", timeout_s: float = 10.0
    ) -> AgentView:
        """Wait until an agent's status is ``state``; returns its snapshot.

        Raises:
            EdgeRequestTimeoutError: not in that state within ``timeout_s``.
        """

        def ok() -> bool:
            view = self.agent(agent_id)
            return view is not None and view.state == state

        if not self.wait_until(ok, timeout_s):
            raise EdgeRequestTimeoutError(
                module=f"status={state}", node=agent_id, correlation_id="-", timeout_s=timeout_s
            )
        view = self.agent(agent_id)
        assert view is not None
        return view

    def wait_for_observed(
        self, agent_id: str, version: int, *, timeout_s: float = 30.0
    ) -> ObservedState:
        """Wait until an agent reports an observed ``version`` at least this one.

        Raises:
            EdgeRequestTimeoutError: not reported within ``timeout_s``.
        """

        def ok() -> bool:
            view = self.agent(agent_id)
            return (
                view is not None and view.observed is not None and view.observed.version >= version
            )

        if not self.wait_until(ok, timeout_s):
            raise EdgeRequestTimeoutError(
                module=f"observed>={version}",
                node=agent_id,
                correlation_id="-",
                timeout_s=timeout_s,
            )
        view = self.agent(agent_id)
        assert view is not None and view.observed is not None
        return view.observed
