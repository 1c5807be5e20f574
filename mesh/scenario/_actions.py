"""What scripted faults do to a running scenario (:class:`ScenarioActions`).

A CPU hog runs real burner processes inside the agent's CPU budget (its
cgroup) or on its pinned cores; a link fault changes the agents' link
emulators; an agent crash is a SIGKILL by pid and a restart starts it again; a
node removal stops a fog raylet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.core._errors import MeshError
from mesh.scenario._faults import parse_target
from mesh.scenario._linkem import LinkShape
from mesh.scenario._procs import CpuHog

if TYPE_CHECKING:
    from mesh.scenario._run import ScenarioRun

__all__ = ["ScenarioActions"]


class ScenarioActions:
    """The :class:`~mesh.scenario._faults.FaultActions` of a scenario run.

    Args:
        run: the run; its agent fleet, hogs, agent links, fog nodes and cluster
            are read when a fault starts (the fleet starts after this is made).
    """

    def __init__(self, run: ScenarioRun) -> None:
        """Hold the run."""
        self._run = run

    def hog_cpu(self, target: str, load: float) -> None:
        kind, name = parse_target(target)
        fleet = self._run._fleet
        cores: list[int] | None = None
        cgroup = None
        if kind == "agent" and fleet is not None:
            # On the agent's device: inside its CPU budget, or on its pinned core.
            handle = fleet.agents[name]
            cgroup = handle.cgroup
            cores = list(handle.cores) if handle.cores else None
        workers = max(1, round(2 * load))
        self._run._hogs[target] = CpuHog(cores, workers=workers, cgroup=cgroup).start()

    def stop_hog(self, target: str) -> None:
        hog = self._run._hogs.pop(target, None)
        if hog is not None:
            hog.stop()

    def _agents_on(self, link: str) -> list[str]:
        fleet = self._run._fleet
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
        fleet = self._run._fleet
        assert fleet is not None
        for agent_id in self._agents_on(link):
            fleet.set_link(agent_id, delay_ms=delay_ms, jitter_ms=jitter_ms)

    def restore_link(self, link: str) -> None:
        fleet = self._run._fleet
        assert fleet is not None
        for agent_id in self._agents_on(link):
            shape = self._run._agent_link.get(agent_id, LinkShape())
            fleet.set_link(agent_id, delay_ms=shape.delay_ms, jitter_ms=shape.jitter_ms)

    def kill_agent(self, agent_id: str) -> None:
        assert self._run._fleet is not None
        self._run._fleet.kill(agent_id)

    def start_agent(self, agent_id: str) -> None:
        assert self._run._fleet is not None
        self._run._fleet.start(agent_id)

    def remove_node(self, name: str) -> None:
        node_id = self._run._fog_nodes.get(name)
        if node_id is None:
            raise MeshError(f"no fog node {name!r} to remove")
        self._run._cluster.remove_node(node_id, graceful=False)
