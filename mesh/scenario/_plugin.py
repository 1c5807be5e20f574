"""The simulation plugin slot: what a scenario's ``simulation.plugin`` names.

A scenario may drive a simulation — the reference one is SUMO traffic
(``functions.traffic.sim:plugin``) — but the harness knows nothing of what is
simulated. It imports the plugin named by ``module:attribute``, validates the
rest of the ``simulation:`` block with the plugin's :attr:`config_model`, and
calls it at fixed points of a run::

    plugin.check(config, scenario)    load time: what the types cannot show
    plugin.sites(config, scenario)    the sites it has (``agents.per_site``: one agent each)
    plugin.duration_s(config)         when the live phase ends, in simulated seconds
    plugin.create(config, scenario)   a SimulationRun for one run:
      run.prepare(ctx)                  before training: build inputs (network, history)
      run.start(ctx)                    the mesh is up and the agents online
      run.step() -> bool                advance one step; False when it has ended
      run.stop()                        the live phase is over (the mesh is still up)
      run.kpis()                        after the mesh stopped: the simulation's figures
      run.report_section(report)        its part of the report

The harness owns the clock: each step it starts and ends the faults due at
``run.time_s`` and paces the run at ``run.speedup`` simulated seconds per wall
second. A scenario without a simulation runs on :class:`WallClock` for its
``duration_s``.

Example:
    >>> clock = WallClock(duration_s=0.3, step_s=0.1)
    >>> steps = 0
    >>> while clock.step():
    ...     steps += 1
    >>> steps, clock.time_s
    (2, 0.3)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel
from rich.console import Console

if TYPE_CHECKING:
    from mesh.scenario._checks import Issue
    from mesh.scenario._report import ModuleLatency, ScenarioReport
    from mesh.scenario._schema import Scenario

__all__ = [
    "LiveContext",
    "PluginLoadError",
    "PrepareContext",
    "ReportSection",
    "SimulationPlugin",
    "SimulationRun",
    "WallClock",
    "load_plugin",
]


@dataclass(slots=True)
class PrepareContext:
    """What :meth:`SimulationRun.prepare` gets: the scenario and where to write.

    Attributes:
        scenario: the checked scenario.
        out_dir: the run's output directory (inputs the simulation builds go here).
        console: where progress goes.
        notes: lines for the report's notes.
        substitutions: ``{name}`` -> text in training and trigger arguments; the
            plugin adds its own (the traffic plugin adds ``history``).
    """

    scenario: Scenario
    out_dir: Path
    console: Console
    notes: list[str]
    substitutions: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class LiveContext:
    """What :meth:`SimulationRun.start` gets: the running mesh, through narrow calls.

    Attributes:
        scenario: the checked scenario.
        out_dir: the run's output directory.
        state_dir: the control plane's data directory (tokens, registry).
        console: where progress goes.
        notes: lines for the report's notes.
        gateway_url: the control plane's HTTP address (OIP under ``/v2``).
        versions: module -> ``model@version`` it serves.
        latency: module -> its latency record (samples and failures count in the report).
        publish: ``(topic, payload, qos)`` on the broker (the topic as given).
        subscribe: ``(pattern, handler)`` -> a call that unsubscribes.
        on_event: ``handler`` of every agent event -> a call that unsubscribes.
        sent: ``(module, site, ts)``: an input the module's pipeline must answer
            (one never answered is counted lost).
        sim_time_at: wall time -> simulated second.
        topic: a topic under the scenario's broker prefix (``topic("sensors/A0")``).
        stack: callbacks on it run when the mesh stops.
    """

    scenario: Scenario
    out_dir: Path
    state_dir: Path
    console: Console
    notes: list[str]
    gateway_url: str
    versions: Mapping[str, str]
    latency: Mapping[str, ModuleLatency]
    publish: Callable[[str, bytes, int], None]
    subscribe: Callable[[str, Callable[[str, bytes], None]], Callable[[], None]]
    on_event: Callable[[Callable[[Any], None]], Callable[[], None]]
    sent: Callable[[str, str, float], None]
    sim_time_at: Callable[[float], float]
    topic: Callable[[str], str]
    stack: ExitStack


@dataclass(frozen=True, slots=True)
class ReportSection:
    """A simulation's part of the report.

    Attributes:
        title: the section's heading.
        html: the section's body (trusted HTML: tables, inline PNG plots).
        headline: lines printed at the end of ``mesh run`` and at the report's top.
        summary: figures merged into ``report.json``'s ``summary``.
        subtitle: a phrase for the report's first line (e.g. the network and demand).
    """

    title: str
    html: str = ""
    headline: tuple[str, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    subtitle: str = ""


@runtime_checkable
class SimulationRun(Protocol):
    """One run of a simulation (see the module docstring for when each is called)."""

    @property
    def time_s(self) -> float:
        """Simulated seconds since the live phase began."""
        ...

    @property
    def speedup(self) -> float:
        """Simulated seconds per wall second (0: as fast as it steps)."""
        ...

    def prepare(self, ctx: PrepareContext) -> None:
        """Build what the run needs before training (may add ``ctx.substitutions``)."""
        ...

    def start(self, ctx: LiveContext) -> None:
        """Start the live phase: the mesh is running and the agents are online."""
        ...

    def step(self) -> bool:
        """Advance one step; False once the simulation has ended."""
        ...

    def stop(self) -> None:
        """End the live phase (idempotent; also called after a failed step)."""
        ...

    def kpis(self) -> dict[str, Any]:
        """The simulation's figures, JSON-able (called after the mesh stopped)."""
        ...

    def report_section(self, report: ScenarioReport) -> ReportSection:
        """Its part of the report (``report`` has the mesh's figures and fault windows)."""
        ...


@runtime_checkable
class SimulationPlugin(Protocol):
    """What ``simulation.plugin: module:attribute`` names (an object, often a module global).

    Attributes:
        name: the simulation's name in messages and the report.
        config_model: validates the ``simulation:`` block less its ``plugin`` key
            (pydantic, ``extra="forbid"``: its errors name the file, line and field).
    """

    name: str
    config_model: type[BaseModel]

    def check(self, config: Any, scenario: Scenario) -> list[Issue]:
        """Problems the types cannot show; locations from the scenario's root."""
        ...

    def sites(self, config: Any, scenario: Scenario) -> list[str]:
        """The simulation's sites, in order (after :meth:`check` found no problem)."""
        ...

    def duration_s(self, config: Any) -> float:
        """Simulated seconds the live phase lasts."""
        ...

    def create(self, config: Any, scenario: Scenario) -> SimulationRun:
        """A run of the simulation (nothing started yet)."""
        ...


class PluginLoadError(LookupError):
    """``simulation.plugin`` does not name a usable plugin (the message says why)."""


def load_plugin(ref: str) -> SimulationPlugin:
    """Import ``module:attribute`` and check that it is a :class:`SimulationPlugin`.

    Raises:
        PluginLoadError: the module does not import, has no such attribute, or the
            attribute lacks what a plugin has.
    """
    module_name, _, attribute = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginLoadError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        plugin = getattr(module, attribute)
    except AttributeError:
        raise PluginLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(plugin, SimulationPlugin):
        missing = [
            name
            for name in ("name", "config_model", "check", "sites", "duration_s", "create")
            if not hasattr(plugin, name)
        ]
        raise PluginLoadError(
            f"{ref} is not a simulation plugin (it lacks {', '.join(missing) or 'a member'}; "
            "see mesh.scenario.SimulationPlugin)"
        )
    if not (isinstance(plugin.config_model, type) and issubclass(plugin.config_model, BaseModel)):
        raise PluginLoadError(f"{ref}: config_model is not a pydantic model class")
    return plugin


class WallClock:
    """The run of a scenario without a simulation: time passes, nothing else.

    Args:
        duration_s: how long the live phase lasts.
        step_s: seconds per step (how often faults are looked at).
    """

    def __init__(self, duration_s: float, step_s: float = 0.1) -> None:
        """Time 0."""
        self._duration_s = duration_s
        self._step_s = step_s
        self._time_s = 0.0

    @property
    def time_s(self) -> float:
        """Seconds since the live phase began."""
        return self._time_s

    @property
    def speedup(self) -> float:
        """One second per second."""
        return 1.0

    def prepare(self, ctx: PrepareContext) -> None:
        """Nothing to build."""

    def start(self, ctx: LiveContext) -> None:
        """Nothing to start."""

    def step(self) -> bool:
        """One step of ``step_s``; False at ``duration_s``."""
        if self._time_s >= self._duration_s - 1e-9:
            return False
        self._time_s = min(self._duration_s, self._time_s + self._step_s)
        return self._time_s < self._duration_s - 1e-9

    def stop(self) -> None:
        """Nothing to stop."""

    def kpis(self) -> dict[str, Any]:
        """No figures of its own."""
        return {}

    def report_section(self, report: ScenarioReport) -> ReportSection:
        """No section of its own."""
        return ReportSection(title="")
