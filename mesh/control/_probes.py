"""The monitors' seams and the probes behind them: node metrics, round trips, canaries.

:class:`NodeProbe` reads psutil on Ray nodes (:class:`mesh.ray._probe.RayNodeProbe`),
:class:`AgentSource` lists the edge agents, :class:`RttProbe` times a round trip
over the path requests take (:class:`PathProbe`: HTTP to a replica, MQTT to an
agent) and :class:`CanaryProbe` times one inference on a node
(:class:`EdgeCanary` for agents).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.protocol import PING_MODULE
from mesh.control._settings import AgentSnapshot
from mesh.control._snapshot import NodeSample, NodeState
from mesh.serving._contract import AgentErrorReply

if TYPE_CHECKING:
    import numpy.typing as npt

    from mesh.models._export import ModelSignature
    from mesh.serving._routes import ReplicaEndpoint, RouteTable

__all__ = [
    "PING_PARALLEL",
    "PING_RATE_PER_S",
    "AgentRequests",
    "AgentSource",
    "CanaryProbe",
    "EdgeCanary",
    "NodeProbe",
    "PathProbe",
    "RttProbe",
]


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
    """The edge bus's agent registry (:class:`mesh.edge._bus.EdgeBus`)."""

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


#: Agents pinged at once (:meth:`PathProbe.ping_agents`).
PING_PARALLEL = 32
#: Agent round trips started per second at most, the whole fleet's
#: (:meth:`PathProbe.ping_agents`): up to this many agents each is timed every poll;
#: past it, each in turn, least recently timed first (1,000 agents: every 10 s).
PING_RATE_PER_S = 100.0


class PathProbe:
    """:class:`RttProbe` over the paths requests take.

    A Ray node: ``GET /stats`` of a replica the route table lists on it (the
    gateway's path), else a round trip to its node probe actor. An agent: an
    MQTT request for a module it does not have (it answers at once with an
    error), through the edge bus.

    Args:
        routes: the route table (replica endpoints by node).
        node_probe: pings Ray nodes without a replica.
        edge: the edge bus (``infer_sync``).
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
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._in_flight: set[str] = set()  # agents with a ping under way
        self._pinged_at: dict[str, float] = {}  # agent -> when its last ping started
        self._budget_at: float | None = None  # when ping_agents last spent its budget
        self._clock = time.monotonic

    def ping_agents(
        self,
        agents: Sequence[NodeState],
        timeout_s: float,
        record: Callable[[str, float | None], None],
    ) -> int:
        """Ping each agent without waiting; ``record(agent, rtt_ms or None)`` as each ends.

        A poll that waited for its pings lasted a round trip per agent, or a
        whole timeout per silent one (300 agents: rounds of 2-5 s, measured).
        Pings run :data:`PING_PARALLEL` at a time on their own workers; an agent
        whose last ping has not ended is skipped, so at most one each is in flight.
        At most :data:`PING_RATE_PER_S` start per second since the last call (at
        least :data:`PING_PARALLEL`), least recently pinged agents first: each
        ping is a request and a reply through the broker and the bus, and pinging
        1,000 agents every poll cost the control plane more than their heartbeats.

        Returns:
            The pings started.
        """
        now = self._clock()
        elapsed = 1.0 if self._budget_at is None else min(10.0, now - self._budget_at)
        self._budget_at = now
        budget = max(PING_PARALLEL, int(PING_RATE_PER_S * elapsed))
        if len(agents) > budget:
            pinged = self._pinged_at
            agents = sorted(agents, key=lambda n: pinged.get(n.name, -math.inf))
        pool = self._workers()
        started = 0
        known = {node.name for node in agents}
        for gone in [name for name in self._pinged_at if name not in known]:
            del self._pinged_at[gone]  # bounded by the agents listed
        for node in agents:
            if started >= budget:
                break
            with self._pool_lock:
                if node.name in self._in_flight:
                    continue
                self._in_flight.add(node.name)
            try:
                pool.submit(self._ping, node, timeout_s, record)
            except RuntimeError:  # closed meanwhile
                with self._pool_lock:
                    self._in_flight.discard(node.name)
                break
            self._pinged_at[node.name] = now
            started += 1
        return started

    def _ping(
        self, node: NodeState, timeout_s: float, record: Callable[[str, float | None], None]
    ) -> None:
        try:
            record(node.name, self._rtt_or_none(node, timeout_s))
        finally:
            with self._pool_lock:
                self._in_flight.discard(node.name)

    def close(self) -> None:
        """Stop the ping workers (idle ones; a ping under way ends within its timeout)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _workers(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PING_PARALLEL, thread_name_prefix="mesh-rtt")
            return self._pool

    def _rtt_or_none(self, node: NodeState, timeout_s: float) -> float | None:
        try:
            return self.rtt_ms(node, timeout_s)
        except Exception:
            return None

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
        edge: the edge bus (``infer_sync``).
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
