"""The scenario's fault timeline: start and end each scripted fault at its simulated time.

:class:`FaultTimeline` is pure bookkeeping: :meth:`FaultTimeline.advance` is
called with the simulated clock and calls the :class:`FaultActions` of the run
(start a CPU hog, slow a link, kill an agent, remove a node...) when a fault
starts or ends. Every call is recorded as a :class:`FaultWindow` for the
report, and a failing action is logged and recorded, never raised: a fault that
cannot be injected must not stop the scenario.

Example:
    >>> tl = FaultTimeline([AgentRestart(kind="agent_restart", at_s=5, target="agent:a", down_s=2)])
    >>> # tl.advance(6.0, actions) kills agent a; tl.advance(7.0, actions) starts it again
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mesh.scenario._report import FaultWindow
from mesh.scenario._schema import (
    AgentCrash,
    AgentRestart,
    CpuHog,
    Fault,
    LinkDelay,
    NodeRemove,
    SensorDrift,
)

if TYPE_CHECKING:
    from mesh.scenario._schema import Scenario

__all__ = ["FaultActions", "FaultTimeline", "describe_fault", "drift_issue", "parse_target"]

logger = logging.getLogger(__name__)


class FaultActions(Protocol):
    """What a scenario run can do to itself."""

    def hog_cpu(self, target: str, load: float) -> None:
        """Start burning CPU on the target (``agent:<id>`` or ``node:<name>``)."""
        ...

    def stop_hog(self, target: str) -> None:
        """Stop the burners started for the target."""
        ...

    def set_link(self, link: str, delay_ms: float, jitter_ms: float) -> None:
        """Change a link (``edge->fog``, ``agent:<id>`` …) to this delay and jitter."""
        ...

    def restore_link(self, link: str) -> None:
        """Give the link its declared shape back."""
        ...

    def kill_agent(self, agent_id: str) -> None:
        """SIGKILL an agent process."""
        ...

    def start_agent(self, agent_id: str) -> None:
        """Start the agent again."""
        ...

    def remove_node(self, name: str) -> None:
        """Remove a Ray node from the cluster."""
        ...

    def drift_sensors(self, target: str, severity: float) -> None:
        """Change the simulation's sensors at the target (``site:<site>`` or ``agent:<id>``).

        ``severity`` 0 gives them their first state back.
        """
        ...


def parse_target(target: str) -> tuple[str, str]:
    """``'agent:j-A0'`` -> ``('agent', 'j-A0')``; ``'edge->fog'`` -> ``('link', 'edge->fog')``."""
    kind, sep, name = target.partition(":")
    if sep and kind in ("agent", "node", "link", "site"):
        return kind, name
    return "link", target


def describe_fault(fault: Fault, phase: str) -> str:
    """A fault starting or ending, in words: ``cpu_hog on agent j-B1 (load 0.9) for 90 s``."""
    kind, name = parse_target(fault.target)
    where = f"{fault.kind} on {kind} {name}"
    if phase != "start":
        return f"{where} ended"
    if isinstance(fault, CpuHog):
        return f"{where} (load {fault.load:g}) for {fault.duration_s:g} s"
    if isinstance(fault, LinkDelay):
        shape = f"{fault.delay_ms:g} ms ± {fault.jitter_ms:g} ms"
        return f"{where}: {shape}" + (
            f" for {fault.duration_s:g} s" if fault.duration_s is not None else ""
        )
    if isinstance(fault, AgentRestart):
        return f"{where}: killed, back in {fault.down_s:g} s"
    if isinstance(fault, AgentCrash):
        return f"{where}: killed"
    if isinstance(fault, SensorDrift):
        return f"{where}: sensors changed (severity {fault.severity:g})" + (
            f" for {fault.duration_s:g} s" if fault.duration_s is not None else ""
        )
    return where


def drift_issue(scenario: Scenario, kind: str, name: str) -> str | None:
    """Why a ``drift`` fault on ``kind:name`` cannot happen in ``scenario`` (None: it can).

    Only a simulation has sensors to change, and a site must be one of its sites
    (an agent's target was checked as an agent already).
    """
    if scenario.simulation is None:
        return "a drift fault changes a simulation's sensors: declare a simulation"
    sites = scenario.site_ids()
    if kind == "site" and sites and name not in sites:
        shown = ", ".join(sites[:12]) + (" ..." if len(sites) > 12 else "")
        return f"no site {name!r} in the simulation (sites: {shown})"
    return None


@dataclass(slots=True)
class _Active:
    fault: Fault
    end_s: float | None
    window: FaultWindow


class FaultTimeline:
    """Faults in order of their start; each starts once and ends once."""

    def __init__(self, faults: Sequence[Fault]) -> None:
        """Sort the faults by start time."""
        self._pending: list[Fault] = sorted(faults, key=lambda f: f.at_s)
        self._active: list[_Active] = []
        self.windows: list[FaultWindow] = []
        self.errors: list[str] = []

    @property
    def done(self) -> bool:
        """Whether every fault has started and ended."""
        return not self._pending and not self._active

    def advance(self, now_s: float, actions: FaultActions) -> list[str]:
        """Start and end what is due at ``now_s``; returns what happened, for the log."""
        happened: list[str] = []
        for active in [a for a in self._active if a.end_s is not None and a.end_s <= now_s]:
            self._active.remove(active)
            active.window.end = now_s
            happened.append(self._run(active.fault, actions, "end"))
        while self._pending and self._pending[0].at_s <= now_s:
            fault = self._pending.pop(0)
            window = FaultWindow(kind=fault.kind, target=fault.target, start=now_s, end=now_s)
            self.windows.append(window)
            end = self._end_time(fault)
            active = _Active(fault, end, window)
            if end is not None:
                self._active.append(active)
            happened.append(self._run(fault, actions, "start"))
        return [h for h in happened if h]

    def finish(self, now_s: float, actions: FaultActions) -> None:
        """End every fault still running (the scenario is over)."""
        for active in list(self._active):
            self._active.remove(active)
            active.window.end = now_s
            self._run(active.fault, actions, "end")
        for window in self.windows:
            if window.end < window.start:
                window.end = now_s

    @staticmethod
    def _end_time(fault: Fault) -> float | None:
        if isinstance(fault, CpuHog):
            return fault.at_s + fault.duration_s
        if isinstance(fault, LinkDelay):
            return fault.at_s + fault.duration_s if fault.duration_s is not None else None
        if isinstance(fault, AgentRestart):
            return fault.at_s + fault.down_s
        if isinstance(fault, SensorDrift) and fault.duration_s is not None:
            return fault.at_s + fault.duration_s
        return None

    def _run(self, fault: Fault, actions: FaultActions, phase: str) -> str:
        try:
            if phase == "start":
                self._start(fault, actions)
            else:
                self._end(fault, actions)
        except Exception as exc:  # a fault that cannot be injected must not stop the run
            message = f"{fault.kind} {fault.target} ({phase}) failed: {exc}"
            logger.exception("fault %s", message)
            self.errors.append(message)
            return message
        return describe_fault(fault, phase)

    @staticmethod
    def _start(fault: Fault, actions: FaultActions) -> None:
        _, name = parse_target(fault.target)
        if isinstance(fault, CpuHog):
            actions.hog_cpu(fault.target, fault.load)
        elif isinstance(fault, LinkDelay):
            actions.set_link(fault.target, fault.delay_ms, fault.jitter_ms)
        elif isinstance(fault, AgentRestart | AgentCrash):
            actions.kill_agent(name)
        elif isinstance(fault, NodeRemove):
            actions.remove_node(name)
        elif isinstance(fault, SensorDrift):
            actions.drift_sensors(fault.target, fault.severity)

    @staticmethod
    def _end(fault: Fault, actions: FaultActions) -> None:
        _, name = parse_target(fault.target)
        if isinstance(fault, CpuHog):
            actions.stop_hog(fault.target)
        elif isinstance(fault, LinkDelay):
            actions.restore_link(fault.target)
        elif isinstance(fault, AgentRestart):
            actions.start_agent(name)
        elif isinstance(fault, SensorDrift):
            actions.drift_sensors(fault.target, 0.0)
