"""What scripted faults do to a running scenario (:class:`ScenarioActions`).

A CPU hog runs real burner processes inside the agent's CPU budget (its
cgroup) or on its pinned cores; a link fault changes the agents' link
emulators; an agent crash is a SIGKILL by pid and a restart starts it again; a
node removal stops a fog raylet; a sensor drift is the simulation run's to
apply (its optional ``drift(site, severity)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.core._errors import MeshError
from mesh.scenario._faults import parse_target
from mesh.scenario._linkem import LinkShape
from mesh.scenario._procs import AgentFleet, CpuHog

__all__ = ["ScenarioActions", "Testbed"]


class NodeRemover(Protocol):
    """The cluster, as a node removal needs it (the Ray adapter's local cluster)."""

    def remove_node(self, node_id: str, *, graceful: bool = True) -> object:
        """Take a node out of the cluster."""
        ...


@dataclass(slots=True)
class Testbed:
    """What a scenario run started that faults act on (filled in as it starts).

    Attributes:
        fleet: the agent processes (None before the agents stage, or without agents).
        hogs: fault target -> its running CPU hog.
        agent_link: agent id -> the link shape it was started with (restored after a fault).
        fog_nodes: scenario node name -> Ray node id.
        cluster: the local Ray cluster (None before the infrastructure stage).
        simulation: the simulation run (None before the live phase); a drift fault
            calls its ``drift(site, severity)``.
    """

    fleet: AgentFleet | None = None
    hogs: dict[str, CpuHog] = field(default_factory=dict)
    agent_link: dict[str, LinkShape] = field(default_factory=dict)
    fog_nodes: dict[str, str] = field(default_factory=dict)
    cluster: NodeRemover | None = None
    simulation: Any = None


class ScenarioActions:
    """The :class:`~mesh.scenario._faults.FaultActions` of a scenario run.

    Args:
        testbed: what the run started; read when a fault starts (the fleet may
            start after this is made).
    """

    def __init__(self, testbed: Testbed) -> None:
        """Hold the testbed."""
        self._testbed = testbed

    def hog_cpu(self, target: str, load: float) -> None:
        kind, name = parse_target(target)
        fleet = self._testbed.fleet
        cores: list[int] | None = None
        cgroup = None
        if kind == "agent" and fleet is not None:
            # On the agent's device: inside its CPU budget, or on its pinned core.
            handle = fleet.agents[name]
            cgroup = handle.cgroup
            cores = list(handle.cores) if handle.cores else None
        workers = max(1, round(2 * load))
        self._testbed.hogs[target] = CpuHog(cores, workers=workers, cgroup=cgroup).start()

    def stop_hog(self, target: str) -> None:
        hog = self._testbed.hogs.pop(target, None)
        if hog is not None:
            hog.stop()

    def _agents_on(self, link: str) -> list[str]:
        fleet = self._testbed.fleet
        if fleet is None:
            return []
        kind, name = parse_target(link)
        if kind == "agent":
            return [name]
        a, _, b = name.partition("->")
        ends = {a, b}
        if "edge" in ends:
            return list(fleet.agents)
        return [x for x in fleet.agents if x in ends or fleet.agents[x].site in ends]

    def set_link(self, link: str, delay_ms: float, jitter_ms: float) -> None:
        fleet = self._testbed.fleet
        assert fleet is not None
        for agent_id in self._agents_on(link):
            fleet.set_link(agent_id, delay_ms=delay_ms, jitter_ms=jitter_ms)

    def restore_link(self, link: str) -> None:
        fleet = self._testbed.fleet
        assert fleet is not None
        for agent_id in self._agents_on(link):
            shape = self._testbed.agent_link.get(agent_id, LinkShape())
            fleet.set_link(agent_id, delay_ms=shape.delay_ms, jitter_ms=shape.jitter_ms)

    def kill_agent(self, agent_id: str) -> None:
        assert self._testbed.fleet is not None
        self._testbed.fleet.kill(agent_id)

    def start_agent(self, agent_id: str) -> None:
        assert self._testbed.fleet is not None
        self._testbed.fleet.start(agent_id)

    def remove_node(self, name: str) -> None:
        node_id = self._testbed.fog_nodes.get(name)
        if node_id is None:
            raise MeshError(f"no fog node {name!r} to remove")
        if self._testbed.cluster is None:
            raise MeshError(f"no cluster to remove fog node {name!r} from")
        self._testbed.cluster.remove_node(node_id, graceful=False)

    def drift_sensors(self, target: str, severity: float) -> None:
        kind, name = parse_target(target)
        site = name
        if kind == "agent":
            fleet = self._testbed.fleet
            if fleet is None or name not in fleet.agents:
                raise MeshError(f"no agent {name!r} whose sensors could drift")
            site = fleet.agents[name].site
        drift = getattr(self._testbed.simulation, "drift", None)
        if drift is None:
            raise MeshError(f"the simulation cannot change its sensors (drift at {site!r})")
        drift(site, severity)
