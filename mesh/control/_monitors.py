"""Monitors: short time series of what the placement controller reads.

Five feeds, each a bounded ring of timestamped samples:

* **request latency** per module x node, from the gateway (it calls
  :meth:`Monitors.observe` for every answered request: a deque append);
* **pipeline latency** per module x agent and route, from the agents'
  pipeline events (the edge gateway's ``on_event`` feeds
  :meth:`Monitors.observe_event`);
* **node metrics**: edge agents' heartbeats (psutil on the device, through
  the edge gateway's registry) and, for Ray nodes, a :class:`NodeProbe`
  (:class:`mesh.ray._probe.RayNodeProbe`: one small psutil actor per node);
* **link round trips** (a :class:`RttProbe`): HTTP to a replica's ``/stats``
  on a Ray node, an MQTT request to an agent;
* **canaries**: an inference of a module on a node that does not serve its
  route now (an agent keeps the module installed as a fallback), so the
  controller can tell when a node it left has recovered.

:meth:`Monitors.snapshot` freezes all of it over a window; :func:`engine_inputs`
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.protocol import PING_MODULE
from mesh.control._settings import AgentSnapshot
from mesh.serving._contract import AgentErrorReply
from placement import (
    CurrentPlacement,
    CurrentRoute,
    Link,
    Metrics,
    Module,
    Node,
    Source,
    Topology,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from mesh.models._export import ModelSignature
    from mesh.serving._routes import ReplicaEndpoint, RouteTable

__all__ = [
    "AgentRequests",
    "AgentSource",
    "CanaryProbe",
    "EdgeCanary",
    "EngineInputs",
    "LatencyStats",
    "ModuleIntent",
    "Monitors",
    "NodeProbe",
    "NodeSample",
    "NodeState",
    "PathProbe",
    "RttProbe",
    "Snapshot",
    "engine_inputs",
    "percentile",
]

logger = logging.getLogger(__name__)

_RING = 4096


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (nan when empty).

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
        2.0
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return float(ordered[rank])


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Requests of one module on one node over a window.

    Attributes:
        count: requests answered (ok or not).
        errors: requests that failed.
        p50_ms: median latency of the ok ones.
        p95_ms: their 95th percentile.
        max_ms: the slowest one.
        rate_per_s: requests per second over the window.
    """

    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    rate_per_s: float

    @classmethod
    def of(cls, samples: Sequence[tuple[float, float, bool]], window_s: float) -> LatencyStats:
        """Stats of ``(at, ms, ok)`` samples that span ``window_s``."""
        ok = [ms for _, ms, good in samples if good]
        return cls(
            count=len(samples),
            errors=len(samples) - len(ok),
            p50_ms=percentile(ok, 0.5),
            p95_ms=percentile(ok, 0.95),
            max_ms=max(ok) if ok else math.nan,
            rate_per_s=len(samples) / window_s if window_s > 0 else 0.0,
        )


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One psutil reading of a node.

    Attributes:
        node: node id (Ray) or agent id.
        cpu_percent: busy CPU over all cores, 0..100.
        mem_percent: memory in use, 0..100.
        mem_available_mb: memory free for new work.
        cpus: cores.
    """

    node: str
    cpu_percent: float
    mem_percent: float
    mem_available_mb: float
    cpus: int = 1


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the monitors know of one node at snapshot time.

    Attributes:
        name: Ray node id or agent id.
        kind: ``ray`` or ``agent``.
        tier: ``edge``, ``fog`` or ``cloud``.
        site: where it is (``mesh.site``; the agent's site).
        alive: Ray says alive / the agent is online.
        servers: parallel workers (Ray CPUs; an agent's inference threads).
        memory_mb: memory available to modules.
        utilisation: mean CPU busy fraction over the window (None: no reading).
        rtt_ms: median round trip over the window (None: not probed).
    """

    name: str
    kind: str
    tier: str
    site: str
    alive: bool
    servers: int = 1
    memory_mb: float = 1024.0
    utilisation: float | None = None
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the monitors hold, frozen over a window.

    Attributes:
        at: monotonic seconds when it was taken.
        window_s: the window the stats cover.
        nodes: every node known, by name.
        latency: (module, node) -> the gateway's requests there.
        canaries: (module, node) -> canary inferences there.
        pipelines: (module, agent) -> route (``local`` or ``offload:<target>``) ->
            that agent's pipeline events on that route.
    """

    at: float
    window_s: float
    nodes: Mapping[str, NodeState]
    latency: Mapping[tuple[str, str], LatencyStats]
    canaries: Mapping[tuple[str, str], LatencyStats] = field(default_factory=dict)
    pipelines: Mapping[tuple[str, str], Mapping[str, LatencyStats]] = field(default_factory=dict)

    def module_latency(self, module: str) -> LatencyStats | None:
        """The module's requests on all nodes together (None: none in the window)."""
        parts = [s for (m, _), s in self.latency.items() if m == module and s.count]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        # Quantiles do not add: the worst node's p95 is the conservative answer.
        return LatencyStats(
            count=sum(p.count for p in parts),
            errors=sum(p.errors for p in parts),
            p50_ms=max(p.p50_ms for p in parts),
            p95_ms=max(p.p95_ms for p in parts if not math.isnan(p.p95_ms)),
            max_ms=max(p.max_ms for p in parts if not math.isnan(p.max_ms)),
            rate_per_s=sum(p.rate_per_s for p in parts),
        )


# ---------------------------------------------------------------- the seams


class NodeProbe(Protocol):
    """Reads psutil on every Ray node (:class:`mesh.ray._probe.RayNodeProbe`)."""

    def nodes(self) -> list[NodeState]:
        """Every Ray node (name, tier, site, liveness, CPUs, memory), without metrics."""
        ...

    def sample(self) -> list[NodeSample]:
        """One reading per live node (nodes that do not answer are left out)."""
        ...

    def ping(self, node: str, timeout_s: float) -> float | None:
        """A round trip to the node's probe in ms (None: no answer)."""
        ...


class AgentSource(Protocol):
    """The edge gateway's agent registry (:class:`mesh.edge._bus.EdgeBus`)."""

    def agents(self) -> Sequence[AgentSnapshot]:
        """Every agent heard of."""
        ...


class AgentRequests(Protocol):
    """One inference on an agent, blocking (:meth:`mesh.edge._bus.EdgeBus.infer_sync`).

    ``infer_sync`` raises ``TimeoutError`` when no reply came in time,
    ``ConnectionError`` when the edge connection is down, and an
    :class:`~mesh.serving._contract.AgentErrorReply` when the agent answered
    with an error.
    """

    def infer_sync(
        self,
        module: str,
        node: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        timeout_s: float = ...,
    ) -> object:
        """Run ``module`` on agent ``node`` and wait for its reply."""
        ...


class RttProbe(Protocol):
    """Times a round trip to a node over the path requests take."""

    def rtt_ms(self, node: NodeState, timeout_s: float) -> float | None:
        """Round trip in ms, or None when the node does not answer."""
        ...


class CanaryProbe(Protocol):
    """Runs one inference of a module on a node, to time it."""

    def infer_ms(self, module: str, node: NodeState, timeout_s: float) -> float:
        """Latency of one inference in ms.

        Raises:
            Exception: the node did not answer, or answered with an error.
        """
        ...


class PathProbe:
    """:class:`RttProbe` over the paths requests take.

    A Ray node: ``GET /stats`` of a replica the route table lists on it (the
    gateway's path), else a round trip to its node probe actor. An agent: an
    MQTT request for a module it does not have (it answers at once with an
    error), through the edge gateway.

    Args:
        routes: the route table (replica endpoints by node).
        node_probe: pings Ray nodes without a replica.
        edge: the edge gateway (``infer_sync``).
    """

    def __init__(
        self,
        routes: RouteTable | None = None,
        *,
        node_probe: NodeProbe | None = None,
        edge: AgentRequests | None = None,
    ) -> None:
        """Probe nothing that is not given."""
        self._routes = routes
        self._node_probe = node_probe
        self._edge = edge

    def rtt_ms(self, node: NodeState, timeout_s: float) -> float | None:
        """Round trip in ms, or None."""
        if node.kind == "agent":
            return self._mqtt(node.name, timeout_s)
        endpoint = self._replica_on(node.name)
        if endpoint is not None:
            return self._http(endpoint, timeout_s)
        if self._node_probe is not None:
            return self._node_probe.ping(node.name, timeout_s)
        return None

    def _replica_on(self, node: str) -> ReplicaEndpoint | None:
        from mesh.serving._routes import ReplicaEndpoint

        if self._routes is None:
            return None
        for route in self._routes.routes():
            for e in route.endpoints:
                if isinstance(e, ReplicaEndpoint) and e.node_id == node:
                    return e
        return None

    @staticmethod
    def _http(endpoint: ReplicaEndpoint, timeout_s: float) -> float | None:
        from mesh.serving._contract import HttpProbe

        started = time.perf_counter()
        ok = HttpProbe().stats(endpoint, timeout_s) is not None
        return (time.perf_counter() - started) * 1000.0 if ok else None

    def _mqtt(self, agent: str, timeout_s: float) -> float | None:
        if self._edge is None:
            return None
        started = time.perf_counter()
        try:
            self._edge.infer_sync(PING_MODULE, agent, {}, timeout_s=timeout_s)
        except Exception as exc:
            if not isinstance(exc, AgentErrorReply):
                return None  # no answer
            # else the expected answer: no such module
        return (time.perf_counter() - started) * 1000.0


class EdgeCanary:
    """:class:`CanaryProbe` for agents: one inference of zeros shaped as the module's inputs.

    Args:
        edge: the edge gateway (``infer_sync``).
        signature: module -> its :class:`~mesh.models._export.ModelSignature` (the route's).
    """

    def __init__(
        self, edge: AgentRequests, signature: Callable[[str], ModelSignature | None]
    ) -> None:
        """Nothing is sent until :meth:`infer_ms`."""
        self._edge = edge
        self._signature = signature

    def infer_ms(self, module: str, node: NodeState, timeout_s: float) -> float:
        """Latency of one inference in ms (raises if it fails)."""
        import numpy as np

        signature = self._signature(module)
        if signature is None:
            raise LookupError(f"{module}: no signature to build a canary from")
        inputs = {
            t.name: np.zeros(
                [d if isinstance(d, int) and d > 0 else 1 for d in t.shape], dtype=t.dtype
            )
            for t in signature.inputs
        }
        started = time.perf_counter()
        self._edge.infer_sync(module, node.name, inputs, timeout_s=timeout_s)
        return (time.perf_counter() - started) * 1000.0


# ---------------------------------------------------------------- the monitors


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

    # -- feeds

    def observe(self, module: str, node: str, latency_s: float, ok: bool) -> None:
        """One request of ``module`` served by ``node`` (the gateway's hot path)."""
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
            except Exception:
                logger.warning("monitors: reading Ray nodes failed", exc_info=True)
        if self._agents is not None:
            try:
                nodes += self._agent_nodes()
            except Exception:
                logger.warning("monitors: reading agents failed", exc_info=True)
        self.set_nodes(nodes)
        if self._rtt is not None:
            for node in nodes:
                if not node.alive:
                    continue
                try:
                    self.record_rtt(node.name, self._rtt.rtt_ms(node, rtt_timeout_s))
                except Exception:
                    logger.debug("monitors: RTT probe of %s failed", node.name, exc_info=True)
                    self.record_rtt(node.name, None)

    def _agent_nodes(self) -> list[NodeState]:
        assert self._agents is not None
        out = []
        for view in self._agents.agents():
            hb = view.last_heartbeat
            alive = view.state == "online" and view.health() == "online"
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


# ---------------------------------------------------------------- engine inputs


@dataclass(frozen=True, slots=True)
class ModuleIntent:
    """A module as the controller hands it to the engine.

    Attributes:
        module: the engine's module (SLO, profile, allowed tiers).
        sources: site -> declared request rate (observed rates override).
        node: the node serving it now (None: not placed yet).
        since_s: when it started serving there (monotonic seconds).
        epoch: its route epoch.
        saturated: nodes the controller saw miss this module's SLO (treated as full).
    """

    module: Module
    sources: Mapping[str, float]
    node: str | None = None
    since_s: float = 0.0
    epoch: int = 1
    saturated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EngineInputs:
    """What :func:`placement.plan` takes."""

    topology: Topology
    modules: tuple[Module, ...]
    sources: tuple[Source, ...]
    metrics: Metrics
    current: CurrentPlacement


def engine_inputs(
    snapshot: Snapshot,
    intents: Sequence[ModuleIntent],
    *,
    cost_per_h: Mapping[str, float],
    default_rtt_ms: Mapping[str, float],
    max_utilisation: float = 0.85,
) -> EngineInputs:
    """The engine's inputs from a snapshot and the controller's modules.

    * Nodes: every live node of the snapshot; its cost from its tier.
    * Links: one per (source site, node site): the node's measured RTT from the
      control plane, or ``default_rtt_ms[tier]``.
    * Utilisation: the CPU busy fraction; a node marked saturated for a module
      (it missed that module's SLO) counts as full, so routes leave it.
    * Sources: each module's sites; the gateway's observed rate replaces the
      declared one for a module fed from one site.
    * Current: each module's node and since when, on every site.
    """
    nodes = [n for n in snapshot.nodes.values() if n.alive]
    engine_nodes = tuple(
        Node(
            n.name,
            tier=n.tier,  # type: ignore[arg-type]
            site=n.site,
            cost_per_h=float(cost_per_h.get(n.tier, 0.0)),
            servers=max(1, min(1024, n.servers)),
            memory_mb=max(1.0, n.memory_mb),
            max_utilisation=max_utilisation,
        )
        for n in sorted(nodes, key=lambda n: n.name)
    )
    utilisation: dict[str, float] = {
        n.name: n.utilisation for n in nodes if n.utilisation is not None
    }
    for intent in intents:
        for name in intent.saturated:
            if name in snapshot.nodes:
                utilisation[name] = 0.99
    source_sites = sorted({s for i in intents for s in i.sources})
    rtt_by_site: dict[str, float] = {}
    for n in nodes:
        rtt = n.rtt_ms if n.rtt_ms is not None else float(default_rtt_ms.get(n.tier, 5.0))
        rtt_by_site[n.site] = min(rtt_by_site.get(n.site, math.inf), rtt)
    links = []
    seen: set[tuple[str, str]] = set()
    for site in source_sites:
        for node_site, rtt in sorted(rtt_by_site.items()):
            key = (min(site, node_site), max(site, node_site))
            if site == node_site or key in seen:
                continue
            seen.add(key)
            links.append(Link(key[0], key[1], rtt_ms=rtt))
    sources = []
    rates: dict[tuple[str, str], float] = {}
    routes = []
    for intent in intents:
        name = intent.module.name
        observed = snapshot.module_latency(name)
        for site, rate in sorted(intent.sources.items()):
            sources.append(Source(name, site, max(0.0, rate)))
            if observed is not None and len(intent.sources) == 1:
                rates[name, site] = observed.rate_per_s
            if intent.node is not None and intent.node in snapshot.nodes:
                routes.append(CurrentRoute(name, site, intent.node, intent.since_s, intent.epoch))
    return EngineInputs(
        topology=Topology(nodes=engine_nodes, links=tuple(links)),
        modules=tuple(i.module for i in intents),
        sources=tuple(sources),
        metrics=Metrics(node_utilisation=utilisation, source_rates=rates),
        current=CurrentPlacement(tuple(routes)),
    )
