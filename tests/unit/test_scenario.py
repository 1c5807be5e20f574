"""Scenario files: every committed one validates, bad ones fail with exact messages."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from functions.traffic.sim.plugin import read_junctions
from mesh.cli._scenario import scenario_app
from mesh.core._errors import ConfigError
from mesh.scenario._checks import resolve_ref
from mesh.scenario._load import ScenarioError, load_scenario, parse_scenario
from mesh.scenario._schema import Scenario, scenario_json_schema, scenario_json_schema_text

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))

FIXTURE_MODULE = """\
def count(window):
    return window


def plan(window):
    return window


def train(epochs=1):
    return None


class Counter:
    pass
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding `scenfx.py` (the functions the YAML refers to), as the cwd."""
    (tmp_path / "scenfx.py").write_text(FIXTURE_MODULE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(workdir: Path, text: str) -> Scenario:
    (workdir / "bad.yaml").write_text(textwrap.dedent(text))
    return load_scenario("bad.yaml", search_path=[str(workdir)])


def messages(workdir: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load(workdir, text)
    return info.value.messages


# -- the committed scenarios ----------------------------------------------------------


def test_there_are_scenarios() -> None:
    names = {p.name for p in SCENARIOS}
    assert {"traffic.yaml", "small.yaml", "vibration.yaml"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_scenario_validates(path: Path) -> None:
    scenario = load_scenario(path, search_path=[str(ROOT), *sys.path])
    assert scenario.source == path
    assert scenario.head_node() is not None
    if scenario.plugin is not None:  # a simulation's agents sit at its sites
        for agent in scenario.agent_nodes():
            assert agent.site in scenario.site_ids()


def test_traffic_scenario_shape() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "traffic.yaml", search_path=[str(ROOT)])
    assert scenario.site_ids() == ["A0", "A1", "A2", "B0", "B1", "B2", "C0", "C1", "C2"]
    assert [a.id for a in scenario.agent_nodes()][:2] == ["j-A0", "j-A1"]
    assert {f.kind for f in scenario.faults} >= {"cpu_hog", "link_delay", "node_remove"}
    assert scenario.sim_config is not None
    assert scenario.end_s() is not None and scenario.end_s() <= 900  # fits a 2-core machine


def test_loading_imports_no_user_code(workdir: Path) -> None:
    load(
        workdir,
        """\
        name: ok
        functions: [scenfx:count]
        """,
    )
    assert "scenfx" not in sys.modules


def test_committed_schema_is_current() -> None:
    committed = (ROOT / "scenarios" / "schema.json").read_text()
    assert committed == scenario_json_schema_text(), (
        "scenarios/schema.json is stale; regenerate it with "
        "`mesh scenario schema > scenarios/schema.json`"
    )


def test_every_schema_field_has_a_description() -> None:
    schema = scenario_json_schema()
    models: dict[str, Any] = {"Scenario": schema, **schema["$defs"]}
    missing = [
        f"{model}.{name}"
        for model, body in models.items()
        for name, field in body.get("properties", {}).items()
        if "description" not in field
    ]
    assert missing == []
    assert all("description" in body for body in models.values())


def test_a_minimal_scenario_has_defaults() -> None:
    scenario = parse_scenario("name: tiny\n")
    assert [n.name for n in scenario.nodes.ray] == ["cloud"]
    assert scenario.broker.kind == "embedded"
    assert scenario.agent_nodes() == []
    assert scenario.output_dir() == Path(".mesh/scenarios/tiny")


# -- bad files: exact messages --------------------------------------------------------

BAD_CASES: list[tuple[str, str, list[str]]] = [
    (
        "syntax error",
        """\
        name: bad
        nodes:
          ray: [{name: cloud, tier: cloud}
        """,
        [
            "bad.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 3)"
        ],
    ),
    (
        "bad indentation",
        """\
        name: bad
        modules:
          - name: counter
             qos: {p95_ms: 20}
        """,
        ["bad.yaml:4: invalid YAML: mapping values are not allowed here"],
    ),
    (
        "unknown field with a suggestion",
        """\
        name: bad
        modules:
          - name: counter
            model: {registry: counter}
            qos: {p95: 20}
        """,
        [
            "bad.yaml:5: modules[0].qos.p95_ms: required field is missing",
            "bad.yaml:5: modules[0].qos.p95: unknown field; did you mean 'p95_ms'?",
        ],
    ),
    (
        "wrong type",
        """\
        name: bad
        modules:
          - name: counter
            model: {registry: counter}
            qos:
              p95_ms: fast
        """,
        ["bad.yaml:6: modules[0].qos.p95_ms: expected a number > 0, got 'fast'"],
    ),
    (
        "unknown choice and out of range",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: clod, cpus: 0}
        """,
        [
            "bad.yaml:4: nodes.ray[0].tier: expected 'cloud' or 'fog', got 'clod'; "
            "did you mean 'cloud'?",
            "bad.yaml:4: nodes.ray[0].cpus: expected an integer >= 1 and <= 512, got 0",
        ],
    ),
    (
        "unresolved function references",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: cloud}
            - {name: fog-0, tier: fog}
        functions:
          - scenfx:plna
          - nosuch.module:run
          - scenfx:count
        streams:
          - {name: plans, function: "scenfx:count", input: "t/+/counts"}
          - {name: more, function: "scenfx:other", input: "t/+/more"}
        """,
        [
            "bad.yaml:7: functions[0]: cannot resolve 'scenfx:plna': module 'scenfx' has no "
            "top-level 'plna'; did you mean 'plan'?",
            "bad.yaml:8: functions[1]: cannot resolve 'nosuch.module:run': no module 'nosuch' "
            "on the import path",
            "bad.yaml:12: streams[1].function: 'scenfx:other' is not listed under functions; "
            "add it there",
        ],
    ),
    (
        "unknown fault targets",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: cloud}
            - {name: fog-0, tier: fog}
          agents:
            devices:
              - {id: cam-1, site: s1}
        links:
          - {from: edge, to: fog, delay_ms: 5}
        faults:
          - {at_s: 10, kind: cpu_hog, target: "agent:cam-2", duration_s: 5}
          - {at_s: 20, kind: node_remove, target: "node:fog-1"}
          - {at_s: 30, kind: link_delay, target: "edge->cloud", delay_ms: 80}
          - {at_s: 40, kind: agent_restart, target: "cam-1"}
          - {at_s: 50, kind: node_remove, target: "node:cloud"}
        duration_s: 60
        """,
        [
            "bad.yaml:12: faults[0].target: no agent 'cam-2'; did you mean 'cam-1'? "
            "(agents: cam-1)",
            "bad.yaml:13: faults[1].target: no Ray node 'fog-1'; did you mean 'fog-0'? "
            "(nodes: cloud, fog-0)",
            "bad.yaml:14: faults[2].target: no link 'edge->cloud'; did you mean 'edge->fog'? "
            "(links: edge->fog)",
            "bad.yaml:15: faults[3].target: expected 'agent:<id>' for agent_restart, got 'cam-1'",
            "bad.yaml:16: faults[4].target: cannot remove the Ray head 'cloud' "
            "(the first cloud node)",
        ],
    ),
    (
        "CUDA-only module without a GPU node",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: cloud, cpus: 2}
        modules:
          - name: detector
            model: {registry: detector}
            qos: {p95_ms: 10}
            tiers: [cloud]
            providers: [CUDAExecutionProvider]
        """,
        [
            "bad.yaml:10: modules[0].providers: module 'detector' has no feasible placement "
            "(cloud: none offers CUDAExecutionProvider); a Ray node offers GPU providers only "
            "with gpus > 0"
        ],
    ),
    (
        "allowed tiers without a node",
        """\
        name: bad
        modules:
          - name: counter
            model: {registry: counter}
            qos: {p95_ms: 10}
            tiers: [edge, fog]
        """,
        [
            "bad.yaml:6: modules[0].tiers: module 'counter' has no feasible placement "
            "(edge, fog: none is declared)"
        ],
    ),
    (
        "memory too small everywhere",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: cloud, memory_mb: 1024}
          agents:
            memory_mb: 256
            devices: [{id: cam-1, site: s1}]
        modules:
          - name: counter
            model: {registry: counter}
            qos: {p95_ms: 10}
            memory_mb: 2000
        """,
        [
            "bad.yaml:12: modules[0].memory_mb: module 'counter' has no feasible placement "
            "(edge: 256 MiB at most, it needs 2000 MiB; fog: none is declared; "
            "cloud: 1024 MiB at most, it needs 2000 MiB)"
        ],
    ),
    (
        "invalid topics",
        """\
        name: bad
        functions: [scenfx:plan]
        streams:
          - name: plans
            function: scenfx:plan
            input: "traffic/#/counts"
            output: "traffic/+/plans"
        """,
        [
            "bad.yaml:6: streams[0].input: expected an MQTT topic pattern ('+' and '#' only "
            "as whole levels, '#' last), got 'traffic/#/counts'",
            "bad.yaml:7: streams[0].output: expected an MQTT topic without '+' or '#', "
            "got 'traffic/+/plans'",
        ],
    ),
    (
        "stream cycles",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: cloud}
            - {name: fog-0, tier: fog}
        functions: [scenfx:count, scenfx:plan]
        streams:
          - {name: plans, function: "scenfx:plan", input: "t/+/counts", output: "t/all/plans"}
          - {name: counts, function: "scenfx:count", input: "t/#", output: "t/all/counts"}
          - {name: echo, function: "scenfx:plan", input: "echo", output: "echo"}
        """,
        [
            "bad.yaml:8: streams[0].output: stream cycle plans -> counts -> plans "
            "(each output matches the next one's input)",
            "bad.yaml:10: streams[2].output: stream cycle echo -> echo "
            "(each output matches the next one's input)",
        ],
    ),
    (
        "initial placement not in tiers",
        """\
        name: bad
        nodes:
          ray:
            - {name: cloud, tier: cloud}
            - {name: fog-0, tier: fog}
        modules:
          - name: counter
            model: {registry: counter}
            qos: {p95_ms: 10}
            tiers: [fog, cloud]
            initial: edge
          - name: forecaster
            model: {registry: forecaster}
            qos: {p95_ms: 10}
            tiers: [fog]
            initial: cloud
        """,
        [
            "bad.yaml:11: modules[0].initial: initial placement 'edge' is not one of its "
            "tiers (fog, cloud)",
            "bad.yaml:16: modules[1].initial: initial placement 'cloud' is not one of its "
            "tiers (fog)",
        ],
    ),
    (
        "several errors together",
        """\
        name: bad scenario
        seed: seven
        nodes:
          ray:
            - {name: cloud, tier: cloud, cpu: 1}
        broker: {kind: external}
        modules:
          - name: counter
            model: {train: scenfx:train, path: counter.onnx}
            qos: {p95_ms: -5}
        faults:
          - {at_s: 10, kind: cpu_hgo, target: "agent:j-A0"}
        """,
        [
            "bad.yaml:1: name: expected a name of letters, digits, '_' or '-' starting with a "
            "letter or '_', got 'bad scenario'",
            "bad.yaml:2: seed: expected an integer, got 'seven'",
            "bad.yaml:5: nodes.ray[0].cpu: unknown field; did you mean 'cpus'?",
            "bad.yaml:6: broker: expected a url for kind 'external', e.g. 'mqtt://10.0.0.2:1883'",
            "bad.yaml:9: modules[0].model: expected exactly one of train, path, registry for a "
            "model, got train, path",
            "bad.yaml:10: modules[0].qos.p95_ms: expected a number > 0, got -5",
            "bad.yaml:12: faults[0].kind: expected one of 'cpu_hog', 'link_delay', "
            "'agent_restart', 'agent_crash', 'node_remove', 'drift', got 'cpu_hgo'; "
            "did you mean 'cpu_hog'?",
        ],
    ),
    (
        "several semantic errors together",
        """\
        name: bad
        functions: [scenfx:count]
        links:
          - {from: edge, to: fgo}
        triggers:
          - {name: t1, function: "scenfx:count", after: t2}
          - {name: t2, function: "scenfx:count", after: t1}
        simulation:
          network: {grid: {rows: 2, cols: 2}}
          demand: {duration_s: 100}
          plugin: functions.traffic.sim:plugin
          cameras: null
        faults:
          - {at_s: 300, kind: node_remove, target: "node:cloud"}
        """,
        [
            "bad.yaml:4: links[0].from: no edge node is declared",
            "bad.yaml:4: links[0].to: unknown endpoint 'fgo': expected a tier (cloud, fog, "
            "edge), a Ray node, an agent or a site; did you mean 'fog'?",
            "bad.yaml:6: triggers[0].after: trigger cycle t1 -> t2 -> t1 (each runs after "
            "the previous)",
            "bad.yaml:14: faults[0].at_s: at 300 s, not before the live phase ends at 100 s",
            "bad.yaml:14: faults[0].target: cannot remove the Ray head 'cloud' "
            "(the first cloud node)",
        ],
    ),
    (
        "duplicate key",
        """\
        name: bad
        seed: 1
        seed: 2
        """,
        ["bad.yaml:3: seed: duplicate key (first at line 2)"],
    ),
    (
        "not a mapping",
        """\
        - name: bad
        """,
        ["bad.yaml:1: expected a mapping of scenario fields (name, nodes, ...), got a list"],
    ),
    (
        "empty file",
        "",
        ["bad.yaml:1: expected a mapping of scenario fields (name, nodes, ...), got an empty file"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_scenario_messages(workdir: Path, text: str, expected: list[str]) -> None:
    assert messages(workdir, text) == expected


def test_scenario_error_is_a_config_error(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(workdir, "name: 3 4\nseed: x\n")
    error = info.value
    assert isinstance(error, ScenarioError)
    assert error.file == "bad.yaml"
    assert [(p.line, p.field) for p in error.problems] == [(1, "name"), (2, "seed")]
    assert str(error) == "\n".join(error.messages)


def test_missing_file_is_named(workdir: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario("nope.yaml")
    assert info.value.messages == ["nope.yaml: cannot read the file: No such file or directory"]


# -- networks, agents, references -----------------------------------------------------

NET_XML = """\
<net version="1.20">
  <junction id="J1" type="traffic_light" x="0" y="0"/>
  <junction id=":J1_0" type="internal" x="0" y="0"/>
  <junction id="J2" type="priority" x="0" y="0"/>
  <junction id="J3" type="traffic_light" x="0" y="0"/>
</net>
"""


def test_network_file_junctions_give_per_site_agents(workdir: Path) -> None:
    (workdir / "nets").mkdir()
    (workdir / "nets" / "city.net.xml").write_text(NET_XML)
    (workdir / "scen").mkdir()
    (workdir / "scen" / "city.yaml").write_text(
        textwrap.dedent(
            """\
            name: city
            nodes:
              agents:
                per_site: true
                prefix: cam-
                devices: [{id: extra, site: J3, memory_mb: 1024}]
            simulation:
              network: {file: ../nets/city.net.xml}
              plugin: functions.traffic.sim:plugin
              cameras: null
            faults:
              - {at_s: 5, kind: agent_crash, target: "agent:cam-J3"}
            """
        )
    )
    scenario = load_scenario("scen/city.yaml")
    assert scenario.site_ids() == ["J1", "J3"]
    agents = scenario.agent_nodes()
    assert [(a.id, a.site, a.memory_mb) for a in agents] == [
        ("cam-J1", "J1", 512),
        ("cam-J3", "J3", 512),
        ("extra", "J3", 1024),
    ]
    assert read_junctions(workdir / "nets" / "city.net.xml") == ["J1", "J3"]


def test_missing_network_file(workdir: Path) -> None:
    assert messages(
        workdir,
        """\
        name: bad
        simulation:
          network: {file: nowhere.net.xml}
          plugin: functions.traffic.sim:plugin
          cameras: null
        """,
    ) == [
        "bad.yaml:3: simulation.network.file: no such file 'nowhere.net.xml' "
        "(relative to the working directory)"
    ]


def test_device_site_must_be_a_junction(workdir: Path) -> None:
    assert messages(
        workdir,
        """\
        name: bad
        nodes:
          agents:
            devices: [{id: cam-1, site: Z9}]
        simulation:
          network: {grid: {rows: 1, cols: 2}}
          plugin: functions.traffic.sim:plugin
          cameras: null
        """,
    ) == [
        "bad.yaml:4: nodes.agents.devices[0].site: no site 'Z9' in the simulation (sites: A0, B0)"
    ]


def test_gpu_node_makes_a_cuda_module_feasible(workdir: Path) -> None:
    scenario = load(
        workdir,
        """\
        name: gpu
        nodes:
          ray:
            - {name: cloud, tier: cloud, gpus: 1, memory_mb: 8192}
        modules:
          - {name: detector, model: {registry: "detector@3"}, qos: {p95_ms: 10},
             tiers: [cloud], providers: [CUDAExecutionProvider], initial: cloud}
        """,
    )
    assert scenario.nodes.ray[0].providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_resolve_ref_reads_source_without_importing(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (tmp_path / "pkg" / "lib.py").write_text(
        textwrap.dedent(
            """\
            from os.path import join as joined
            import json
            try:
                from fast import speedy
            except ImportError:
                speedy = None
            if True:
                def inside(): ...
            answer: int = 42
            """
        )
    )
    (tmp_path / "star.py").write_text("from os import *\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    path = [str(tmp_path)]
    for name in ("joined", "json", "speedy", "inside", "answer"):
        assert resolve_ref(f"pkg.lib:{name}", path) is None, name
    assert resolve_ref("star:anything", path) is None
    assert resolve_ref("pkg.lib:missing", path) == "module 'pkg.lib' has no top-level 'missing'"
    assert resolve_ref("pkg.nope:x", path) == "no module 'pkg.nope' on the import path"
    assert (resolve_ref("broken:x", path) or "").startswith("module 'broken' cannot be parsed")
    assert "pkg" not in sys.modules


def test_reserved_labels_are_refused() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(
            "name: x\nnodes:\n  ray:\n    - {name: c, tier: cloud, labels: {mesh.tier: fog}}\n",
            file="x.yaml",
        )
    assert info.value.messages == [
        "x.yaml:4: nodes.ray[0].labels: expected no 'mesh.' labels (the mesh sets tier and "
        "site ones), got ['mesh.tier']"
    ]


# -- the CLI --------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(scenario_app, name="scenario")
    return app


def test_cli_validate_prints_every_problem_and_exits_2(workdir: Path) -> None:
    (workdir / "good.yaml").write_text("name: good\n")
    (workdir / "bad.yaml").write_text("name: bad\nseed: x\n")
    result = CliRunner().invoke(_cli(), ["scenario", "validate", "good.yaml", "bad.yaml"])
    assert result.exit_code == 2
    assert "OK good.yaml" in result.output
    assert "bad.yaml:2: seed: expected an integer, got 'x'" in result.output


def test_cli_validate_ok_exits_0(workdir: Path) -> None:
    (workdir / "good.yaml").write_text("name: good\n")
    result = CliRunner().invoke(_cli(), ["scenario", "validate", "good.yaml"])
    assert result.exit_code == 0, result.output


def test_cli_schema_prints_the_committed_schema() -> None:
    result = CliRunner().invoke(_cli(), ["scenario", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == json.loads((ROOT / "scenarios" / "schema.json").read_text())
