"""Monitors: short time series of what the placement controller reads.

Five feeds, each a bounded ring of timestamped samples:

* **request latency** per module x node, from the gateway (it calls
  :meth:`Monitors.observe` for every request answered or failed: a deque
  append; a failure is no latency sample, and a request refused with a 4xx is
  not told at all: a client's bad input says nothing of the node);
* **pipeline latency** per module x agent and route, from the agents'
  pipeline events (the edge bus's ``on_event`` feeds
  :meth:`Monitors.observe_event`);
* **node metrics**: edge agents' heartbeats (psutil on the device, through
  the edge bus's registry) and, for Ray nodes, a :class:`NodeProbe`
  (:class:`mesh.ray._probe.RayNodeProbe`: one small psutil actor per node);
* **link round trips** (a :class:`RttProbe`): HTTP to a replica's ``/stats``
  on a Ray node, an MQTT request to an agent;
* **canaries**: an inference of a module on a node that does not serve its
  route now (an agent keeps the module installed as a fallback), so the
  controller can tell when a node it left has recovered.

:meth:`Monitors.snapshot` freezes all of it over a window (a
:class:`~mesh.control._snapshot.Snapshot`); the probes are in
:mod:`mesh.control._probes`. :func:`mesh.control._engine_inputs.engine_inputs`
turns a snapshot and the controller's module list into the placement engine's
:class:`~placement.Topology`, :class:`~placement.Source` s,
:class:`~placement.Metrics` and :class:`~placement.CurrentPlacement`.

Example:
    >>> monitors = Monitors(clock=lambda: 10.0)
    >>> monitors.observe("counter", "cam-07", 0.004, True)
    >>> monitors.snapshot(window_s=5.0).latency["counter", "cam-07"].count
    1
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from mesh.control._probes import AgentSource, CanaryProbe, NodeProbe, RttProbe
from mesh.control._snapshot import LatencyStats, NodeState, Snapshot, percentile
from mesh.core._log_repeats import RepeatLog

__all__ = ["Monitors"]

logger = logging.getLogger(__name__)

_RING = 4096


class _Ring:
    """A bounded time series of (at, value, ok); appends are lock-free (deque)."""

    __slots__ = ("_items",)

    def __init__(self, maxlen: int) -> None:
        self._items: deque[tuple[float, float, bool]] = deque(maxlen=maxlen)

    def add(self, at: float, value: float, ok: bool = True) -> None:
        self._items.append((at, value, ok))

    def since(self, t0: float) -> list[tuple[float, float, bool]]:
        items = list(self._items)
        lo = len(items)
        while lo > 0 and items[lo - 1][0] >= t0:
            lo -= 1
        return items[lo:]


class Monitors:
    """Bounded time series of latency, node metrics, round trips and canaries.

    Args:
        node_probe: psutil on Ray nodes (None: no Ray nodes).
        agents: the edge agents' registry (None: no agents).
        rtt: link round-trip probe (None: links use default RTTs).
        canary: runs canary inferences (None: no canaries).
        clock: monotonic seconds (injected in tests).
        ring: samples kept per series.
        host_cpu: count CPU readings as node utilisation. Off where every node
            shares one host (tests, benchmarks): each would count all the others' work.
    """

    def __init__(
        self,
        *,
        node_probe: NodeProbe | None = None,
        agents: AgentSource | None = None,
        rtt: RttProbe | None = None,
        canary: CanaryProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        ring: int = _RING,
        host_cpu: bool = True,
    ) -> None:
        """Empty series; :meth:`poll` fills the node, link and agent ones."""
        self._host_cpu = host_cpu
        self._node_probe = node_probe
        self._agents = agents
        self._rtt = rtt
        self._canary = canary
        self._clock = clock
        self._ring = ring
        self._lock = threading.Lock()
        self._latency: dict[tuple[str, str], _Ring] = {}
        self._cpu: dict[str, _Ring] = {}
        self._rtts: dict[str, _Ring] = {}
        self._canaries: dict[tuple[str, str], _Ring] = {}
        self._events: dict[tuple[str, str], deque[tuple[float, float, str]]] = {}
        self._nodes: dict[str, NodeState] = {}
        self._last_hb: dict[str, float] = {}
        # A source that fails every poll (a busy Ray head) logs once, with a count.
        self._quiet = RepeatLog(logger, clock=clock)

    # -- feeds

    def observe(self, module: str, node: str, latency_s: float, ok: bool) -> None:
        """One request of ``module`` served (``ok``) or failed by ``node`` (the gateway's hot path).

        A failed one counts in :attr:`LatencyStats.errors`, never in the percentiles.
        """
        ring = self._latency.get((module, node))
        if ring is None:
            with self._lock:
                ring = self._latency.setdefault((module, node), _Ring(self._ring))
        ring.add(self._clock(), latency_s * 1000.0, ok)

    def observe_event(self, event: Any) -> None:
        """One pipeline event (:class:`edge_agent.protocol.Event`) from an agent.

        Events without a module, an agent or a latency (application events) are
        ignored. The sample counts at its arrival, on this clock.
        """
        module, agent = getattr(event, "module", None), getattr(event, "agent", None)
        latency_ms = getattr(event, "latency_ms", None)
        if not module or not agent or latency_ms is None:
            return
        route = str(getattr(event, "route", None) or "local")
        ring = self._events.get((module, agent))
        if ring is None:
            with self._lock:
                ring = self._events.setdefault((module, agent), deque(maxlen=self._ring))
        ring.append((self._clock(), float(latency_ms), route))

    def pipeline_since(self, module: str, agent: str, t0: float) -> tuple[int, float]:
        """Pipeline events of ``module`` from ``agent`` since ``t0`` and the slowest (ms)."""
        ring = self._events.get((module, agent))
        samples = [ms for at, ms, _ in list(ring) if at >= t0] if ring is not None else []
        return len(samples), max(samples, default=0.0)

    def record_cpu(self, node: str, cpu_percent: float, at: float | None = None) -> None:
        """A CPU reading of a node (0..100)."""
        self._series(self._cpu, node).add(self._clock() if at is None else at, cpu_percent)

    def record_rtt(self, node: str, rtt_ms: float | None) -> None:
        """A round trip to a node (None: it did not answer)."""
        self._series(self._rtts, node).add(self._clock(), rtt_ms or 0.0, rtt_ms is not None)

    def set_nodes(self, nodes: Iterable[NodeState]) -> None:
        """Replace the known nodes (what :meth:`poll` reads from Ray and the agents)."""
        with self._lock:
            self._nodes = {n.name: n for n in nodes}

    def _series(self, table: dict[Any, _Ring], key: Any) -> _Ring:
        ring = table.get(key)
        if ring is None:
            with self._lock:
                ring = table.setdefault(key, _Ring(self._ring))
        return ring

    def poll(self, *, rtt_timeout_s: float = 1.0) -> None:
        """Read the nodes: Ray's list and psutil, agents' heartbeats, and one RTT each.

        Each source's failure is logged and skipped: the others still count.
        """
        nodes: list[NodeState] = []
        if self._node_probe is not None:
            try:
                nodes += self._node_probe.nodes()
                for s in self._node_probe.sample():
                    self.record_cpu(s.node, s.cpu_percent)
            except Exception as exc:
                self._quiet.log(
                    logging.WARNING,
                    "monitors: reading Ray nodes failed",
                    key=repr(exc)[:200],
                    exc_info=exc,
                )
        if self._agents is not None:
            try:
                nodes += self._agent_nodes()
            except Exception as exc:
                self._quiet.log(
                    logging.WARNING,
                    "monitors: reading agents failed",
                    key=repr(exc)[:200],
                    exc_info=exc,
                )
        self.set_nodes(nodes)
        if self._rtt is not None:
            alive = [n for n in nodes if n.alive]
            ping_agents = getattr(self._rtt, "ping_agents", None)
            if ping_agents is not None:  # agents' round trips come in as they end
                agents = [n for n in alive if n.kind == "agent"]
                alive = [n for n in alive if n.kind != "agent"]
                try:
                    ping_agents(agents, rtt_timeout_s, self.record_rtt)
                except Exception:
                    logger.debug("monitors: pinging agents failed", exc_info=True)
            for node in alive:
                try:
                    self.record_rtt(node.name, self._rtt.rtt_ms(node, rtt_timeout_s))
                except Exception:
                    logger.debug("monitors: RTT probe of %s failed", node.name, exc_info=True)
                    self.record_rtt(node.name, None)

    def _agent_nodes(self) -> list[NodeState]:
        assert self._agents is not None
        out = []
        now = time.time()  # heartbeat ages are on the wall clock; one reading for the walk
        for view in self._agents.agents():
            hb = view.last_heartbeat
            alive = view.state == "online" and view.health(now) == "online"
            memory = 512.0
            if hb is not None:
                memory = max(1.0, hb.host.mem_available_mb)
                at = view.last_heartbeat_at
                if at is not None and self._last_hb.get(view.agent_id, -math.inf) < at:
                    # Heartbeats carry wall-clock arrival times; store on our clock.
                    self.record_cpu(view.agent_id, hb.host.cpu_percent)
                    self._last_hb[view.agent_id] = at
            out.append(
                NodeState(
                    name=view.agent_id,
                    kind="agent",
                    tier="edge",
                    site=view.site or view.agent_id,
                    alive=alive,
                    servers=1,
                    memory_mb=memory,
                )
            )
        return out

    def run_canary(self, module: str, node: str, *, timeout_s: float = 1.0) -> float | None:
        """Time one inference of ``module`` on ``node`` now; None if it failed."""
        state = self._nodes.get(node)
        if self._canary is None or state is None:
            return None
        started = self._clock()
        try:
            ms = self._canary.infer_ms(module, state, timeout_s)
        except Exception as exc:
            logger.debug("canary %s on %s failed: %s", module, node, exc)
            self._series(self._canaries, (module, node)).add(started, timeout_s * 1000.0, False)
            return None
        self._series(self._canaries, (module, node)).add(started, ms)
        return ms

    # -- reading

    def latency(self, module: str, node: str, window_s: float) -> LatencyStats | None:
        """The gateway's requests of ``module`` on ``node`` over the last ``window_s``."""
        ring = self._latency.get((module, node))
        if ring is None:
            return None
        samples = ring.since(self._clock() - window_s)
        return LatencyStats.of(samples, window_s) if samples else None

    def requests_since(self, module: str, t0: float) -> tuple[int, int, float]:
        """Requests, failures and the slowest (ms) of ``module`` on every node since ``t0``."""
        with self._lock:
            rings = [r for (m, _), r in self._latency.items() if m == module]
        count = errors = 0
        slowest = 0.0
        for ring in rings:
            for _, ms, ok in ring.since(t0):
                count += 1
                errors += not ok
                slowest = max(slowest, ms)
        return count, errors, slowest

    def snapshot(self, window_s: float) -> Snapshot:
        """All series over the last ``window_s`` seconds."""
        now = self._clock()
        t0 = now - window_s
        with self._lock:
            latency_rings = list(self._latency.items())
            canary_rings = list(self._canaries.items())
            event_rings = list(self._events.items())
            nodes = dict(self._nodes)
        latency = {}
        for key, ring in latency_rings:
            samples = ring.since(t0)
            if samples:
                latency[key] = LatencyStats.of(samples, window_s)
        canaries = {}
        for key, ring in canary_rings:
            samples = ring.since(t0)
            if samples:
                canaries[key] = LatencyStats.of(samples, window_s)
        pipelines: dict[tuple[str, str], dict[str, LatencyStats]] = {}
        for key, events in event_rings:
            by_route: dict[str, list[tuple[float, float, bool]]] = {}
            for at, ms, route in list(events):
                if at >= t0:
                    by_route.setdefault(route, []).append((at, ms, True))
            if by_route:
                pipelines[key] = {r: LatencyStats.of(v, window_s) for r, v in by_route.items()}
        states = {}
        for name, node in nodes.items():
            cpu = [v for _, v, _ in self._series(self._cpu, name).since(t0)]
            if not self._host_cpu:
                cpu = []
            elif not cpu:  # a slow heartbeat: the last reading still says something
                last = self._series(self._cpu, name).since(-math.inf)[-1:]
                cpu = [v for _, v, _ in last]
            rtt = [v for _, v, ok in self._series(self._rtts, name).since(t0) if ok]
            states[name] = NodeState(
                name=node.name,
                kind=node.kind,
                tier=node.tier,
                site=node.site,
                alive=node.alive,
                servers=node.servers,
                memory_mb=node.memory_mb,
                utilisation=min(1.0, sum(cpu) / len(cpu) / 100.0) if cpu else None,
                rtt_ms=percentile(rtt, 0.5) if rtt else None,
            )
        return Snapshot(now, window_s, states, latency, canaries, pipelines)
