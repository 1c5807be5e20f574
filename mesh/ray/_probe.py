"""psutil on every Ray node: one small long-lived actor per node, polled by the monitors.

The actor reserves no CPU (``num_cpus=0``) and is pinned to its node; it is
one worker process for the node's life (a task per poll would let Ray start
workers without bound, as ``num_cpus=0`` tasks do). A node whose actor does
not answer within the timeout is left out of that reading; a dead node's
actor is forgotten and a new node gets one at the next poll. Each reading also
carries the node's wall clock, so a host whose clock is off the control plane's
is named in a warning (:class:`~mesh.core._host_clocks.HostClocks`).

Example:
    >>> probe = RayNodeProbe(backend.nodes)          # doctest: +SKIP
    >>> monitors = Monitors(node_probe=probe)        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mesh.compute._backend import NodeInfo
from mesh.control._snapshot import NodeSample, NodeState
from mesh.core._host_clocks import HostClocks

__all__ = ["NodeProbeActor", "RayNodeProbe"]

logger = logging.getLogger(__name__)


class NodeProbeActor:
    """The actor: reads psutil on its node."""

    def __init__(self) -> None:
        """Prime the CPU counter (psutil reports the busy share since the last call)."""
        import psutil  # type: ignore[import-untyped, unused-ignore]

        self._psutil = psutil
        psutil.cpu_percent(interval=None)

    def sample(self) -> tuple[float, float, float, int, float]:
        """CPU %, memory %, available MB, core count and this host's wall clock."""
        mem = self._psutil.virtual_memory()
        return (
            float(self._psutil.cpu_percent(interval=None)),
            float(mem.percent),
            mem.available / 2**20,
            int(self._psutil.cpu_count() or 1),
            time.time(),
        )

    def ping(self) -> bool:
        """Answer at once (a round trip to the node)."""
        return True


class RayNodeProbe:
    """The monitors' :class:`~mesh.control._probes.NodeProbe` on a Ray cluster.

    Args:
        nodes: lists the cluster's nodes (``RayBackend.nodes``).
        timeout_s: how long a reading may take.
    """

    def __init__(self, nodes: Callable[[], list[NodeInfo]], *, timeout_s: float = 2.0) -> None:
        """No actor starts until the first :meth:`sample`."""
        self._list = nodes
        self._timeout_s = timeout_s
        self._actors: dict[str, Any] = {}
        self.clocks = HostClocks()  # each node's wall clock against ours
        self._hosts: dict[str, str] = {}  # node id -> how the clock warning names it

    def nodes(self) -> list[NodeState]:
        """Every Ray node with a tier (the head without one counts as cloud)."""
        out = []
        for n in self._list():
            tier = n.tier or ("cloud" if n.is_head else None)
            if tier is None:
                continue
            memory = float(n.resources_total.get("memory", 2.0**30)) / 2**20
            out.append(
                NodeState(
                    name=n.node_id,
                    kind="ray",
                    tier=tier,
                    site=n.site or tier,
                    alive=n.alive,
                    servers=max(1, int(n.resources_total.get("CPU", 1.0))),
                    memory_mb=memory,
                )
            )
        return out

    def _actor(self, node_id: str) -> Any:
        actor = self._actors.get(node_id)
        if actor is None:
            actor = (
                ray.remote(NodeProbeActor)
                .options(
                    num_cpus=0,
                    max_restarts=-1,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                    name=f"mesh-node-probe:{node_id[:12]}",
                    get_if_exists=True,
                )
                .remote()
            )
            self._actors[node_id] = actor
        return actor

    def sample(self) -> list[NodeSample]:
        """One psutil reading per live node."""
        live = {n.node_id: n for n in self._list() if n.alive}
        for gone in set(self._actors) - set(live):
            actor = self._actors.pop(gone)
            self.clocks.forget(self._hosts.pop(gone, gone))
            try:
                ray.kill(actor)
            except Exception:
                logger.debug("node probe of %s already gone", gone[:8], exc_info=True)
        sent = time.time()
        refs = {node: self._actor(node).sample.remote() for node in sorted(live)}
        out = []
        deadline = time.monotonic() + self._timeout_s
        for node, ref in refs.items():
            try:
                cpu, mem, avail, cores, clock = ray.get(
                    ref, timeout=max(0.01, deadline - time.monotonic())
                )
            except Exception:
                logger.debug("node probe of %s did not answer", node[:8], exc_info=True)
                continue
            info = live[node]
            host = f"{info.address or '?'} ({info.tier or 'untiered'} node {node[:12]})"
            self._hosts[node] = host
            self.clocks.observe(host, remote_ts=clock, sent_ts=sent, received_ts=time.time())
            out.append(NodeSample(node, cpu, mem, avail, cores))
        return out

    def ping(self, node: str, timeout_s: float) -> float | None:
        """A round trip to the node's probe actor, in ms."""
        actor = self._actors.get(node)
        if actor is None:
            return None
        started = time.perf_counter()
        try:
            ray.get(actor.ping.remote(), timeout=timeout_s)
        except Exception:
            return None
        return (time.perf_counter() - started) * 1000.0

    def close(self) -> None:
        """Stop every probe actor."""
        for actor in self._actors.values():
            try:
                ray.kill(actor)
            except Exception:
                logger.debug("node probe already gone", exc_info=True)
        self._actors.clear()
