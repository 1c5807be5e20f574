"""`mesh scenario`: check scenario files and print their JSON schema.

Mounted by :mod:`mesh.cli` as ``app.add_typer(scenario_app, name="scenario")``::

    mesh scenario validate scenarios/*.yaml       # OK per file, else every problem; exit 2
    mesh scenario schema > scenarios/schema.json  # regenerate the schema editors use

Problems print one per line as ``file:line: field: what was expected``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mesh.scenario._load import ScenarioError, load_scenario
from mesh.scenario._schema import scenario_json_schema_text

__all__ = ["scenario_app"]

scenario_app = typer.Typer(
    help="Scenario files: validate them, print their JSON schema.", no_args_is_help=True
)

#: Exit code of `validate` when a file is invalid (1 is left to unexpected errors).
INVALID_EXIT_CODE = 2


@scenario_app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario YAML files.", show_default=False)],
) -> None:
    """Check scenario files before anything starts: types, references, placements, topics.

    Prints ``OK <file>`` for a valid file and every problem of an invalid one
    (on stderr); exits with code 2 when any file is invalid.
    """
    invalid = 0
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            invalid += 1
            for message in exc.messages:
                print(message, file=sys.stderr)
            continue
        agents = len(scenario.agent_nodes())
        print(
            f"OK {path}: {len(scenario.nodes.ray)} Ray nodes, {agents} agents, "
            f"{len(scenario.modules)} modules, {len(scenario.streams)} streams, "
            f"{len(scenario.faults)} faults"
        )
    if invalid:
        raise typer.Exit(INVALID_EXIT_CODE)


@scenario_app.command("schema")
def schema() -> None:
    """Print the scenario JSON schema (the text of ``scenarios/schema.json``)."""
    sys.stdout.write(scenario_json_schema_text())
