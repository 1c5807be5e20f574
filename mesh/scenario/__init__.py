"""Scenarios: one YAML file describes a whole deployment and its run (``mesh run FILE``).

The harness is general: nodes, links, broker, functions, modules and their
sources, streams, triggers, faults and outputs; what is simulated comes from a
**simulation plugin** a scenario names by ``module:attribute``
(:class:`SimulationPlugin`; the reference one is SUMO traffic in
``functions.traffic.sim``). A scenario without a simulation runs for its
``duration_s`` on the wall clock.

Public here: the schema (:class:`Scenario`), loading (:func:`load_scenario`,
:class:`ScenarioError`), running (:func:`run_scenario`, :class:`ScenarioRun`),
the report (:class:`ScenarioReport`), and the plugin slot with what a plugin
builds its settings model from (:class:`SchemaModel`, :data:`TopicTemplate`,
:func:`exactly_one`) and draws its report section with.
"""

from mesh.scenario._checks import Issue
from mesh.scenario._fields import SchemaModel, TopicTemplate, exactly_one
from mesh.scenario._load import ScenarioError, ScenarioProblem, load_scenario, parse_scenario
from mesh.scenario._plugin import (
    LiveContext,
    PluginLoadError,
    PrepareContext,
    ReportSection,
    SimulationPlugin,
    SimulationRun,
    WallClock,
    load_plugin,
)
from mesh.scenario._report import ModuleLatency, ScenarioReport, SimulationReport
from mesh.scenario._report_html import fault_bands, html_chart, html_table, write_report
from mesh.scenario._run import ScenarioRun, run_scenario
from mesh.scenario._schema import Scenario, scenario_json_schema, scenario_json_schema_text

__all__ = [
    "Issue",
    "LiveContext",
    "ModuleLatency",
    "PluginLoadError",
    "PrepareContext",
    "ReportSection",
    "Scenario",
    "ScenarioError",
    "ScenarioProblem",
    "ScenarioReport",
    "ScenarioRun",
    "SchemaModel",
    "SimulationPlugin",
    "SimulationReport",
    "SimulationRun",
    "TopicTemplate",
    "WallClock",
    "exactly_one",
    "fault_bands",
    "html_chart",
    "html_table",
    "load_plugin",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
    "scenario_json_schema",
    "scenario_json_schema_text",
    "write_report",
]
