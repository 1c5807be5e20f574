"""Loading a scenario file: YAML with line numbers, then every check, every problem at once.

:func:`load_scenario` parses the YAML keeping each node's position, validates
it against :class:`~mesh.scenario._schema.Scenario`, then runs the semantic checks of
:mod:`mesh.scenario._checks`. It raises one :class:`ScenarioError` listing all
problems, each as ``file:line: field.path: what was expected``::

    scenarios/bad.yaml:12: modules[0].qos.p95_ms: expected a number > 0, got 'fast'
    scenarios/bad.yaml:14: modules[0].qos.p95: unknown field; did you mean 'p95_ms'?

Structural problems (YAML syntax, types, unknown fields) come first; the
semantic checks (references, feasibility, topics, cycles) run once the file is
structurally valid.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from mesh.core._errors import ConfigError
from mesh.scenario._checks import check_scenario
from mesh.scenario._fields import PATTERN_TEXT
from mesh.scenario._plugin import PluginLoadError, load_plugin
from mesh.scenario._schema import Scenario, SimulationDecl

__all__ = ["ScenarioError", "ScenarioProblem", "load_scenario", "parse_scenario"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ScenarioProblem:
    """One problem of a scenario file.

    Attributes:
        file: the file as it was named.
        line: 1-based line, or None when unknown.
        field: dotted path such as ``modules[0].qos.p95_ms`` ('' for the whole file).
        message: what was expected and what was found.
    """

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ScenarioError(ConfigError):
    """A scenario file is not valid; carries every problem found.

    Attributes:
        file: the file as it was named.
        problems: the problems, in line order.
        messages: each problem as ``file:line: field: message``.
    """

    def __init__(self, file: str, problems: Sequence[ScenarioProblem]) -> None:
        self.file = file
        self.problems = list(problems)
        self.messages = [str(p) for p in self.problems]
        super().__init__("\n".join(self.messages))


# -- YAML with positions ------------------------------------------------------------


def _compose(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ScenarioError(file, [_syntax_problem(exc, file)]) from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(
            file, [ScenarioProblem(file, None, "", f"invalid YAML: {exc}")]
        ) from exc
    finally:
        loader.dispose()
    return node, data


def _syntax_problem(exc: yaml.MarkedYAMLError, file: str) -> ScenarioProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.context and exc.problem:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        message += f" ({exc.context}{at})"
    return ScenarioProblem(file, line, "", message)


def _key(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _duplicates(node: yaml.Node, loc: Loc, out: list[tuple[Loc, int, int]]) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value in node.value:
            key = _key(key_node)
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key in first:
                    out.append(((*loc, key), line, first[key]))
                first.setdefault(key, line)
            _duplicates(value, (*loc, key if key is not None else "?"), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, (*loc, i), out)


def _lineno(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the YAML node at ``loc`` (a key's own line), else of its nearest parent."""
    if root is None:
        return None
    node: yaml.Node = root
    line = _lineno(node)
    for element in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value in node.value:
                if _key(key_node) == str(element):
                    line, node = _lineno(key_node), value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(element, int):
            if not 0 <= element < len(node.value):
                return line
            node = node.value[element]
            line = _lineno(node)
        else:
            return line
    return line


def _path(loc: Loc) -> str:
    out = ""
    for element in loc:
        if isinstance(element, int):
            out += f"[{element}]"
        elif re.fullmatch(r"[A-Za-z_][\w\-]*", element):
            out += f".{element}" if out else element
        else:
            out += f"[{element!r}]"
    return out


# -- pydantic errors as sentences ---------------------------------------------------


@dataclass(slots=True)
class _Target:
    loc: Loc
    field: FieldInfo | None
    annotation: Any
    owner: type[BaseModel] | None


def _strip(tp: Any) -> Any:
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _variants(tp: Any) -> dict[str, type[BaseModel]]:
    """Tag -> model of a union discriminated by ``kind`` (empty if it is not one)."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return {}
    out: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and "kind" in arg.model_fields:
            for tag in typing.get_args(_strip(arg.model_fields["kind"].annotation)):
                out[str(tag)] = arg
    return out


def _field(model: type[BaseModel], name: str) -> FieldInfo | None:
    """The field YAML spells ``name`` (its alias, e.g. ``from``, else its attribute name)."""
    return next(
        (info for attr, info in model.model_fields.items() if (info.alias or attr) == name), None
    )


def _target(loc: Loc, root: type[BaseModel] = Scenario) -> _Target:
    """Walk the schema along a pydantic location: drop union tags, find the field."""
    tp: Any = root
    clean: list[str | int] = []
    field: FieldInfo | None = None
    owner: type[BaseModel] | None = None
    for element in loc:
        tp = _strip(tp)
        variants = _variants(tp)
        if variants and element in variants:
            tp = variants[str(element)]
            continue
        if element == "[key]":
            continue
        clean.append(element)
        field = None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            field = _field(tp, str(element))
            tp = field.annotation if field is not None else Any
        elif typing.get_origin(tp) in (list, tuple, set, frozenset):
            tp = (typing.get_args(tp) or (Any,))[0]
        elif typing.get_origin(tp) is dict:
            tp = (typing.get_args(tp) or (Any, Any))[-1]
        else:
            tp = Any
    return _Target(tuple(clean), field, _strip(tp), owner)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    parts: list[str] = []
    for item in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(item, attr, None)
            if isinstance(item, annotated_types.BaseMetadata) and bound is not None:
                parts.append(f"{sign} {bound:g}" if isinstance(bound, float) else f"{sign} {bound}")
    return " " + " and ".join(parts) if parts else ""


def _number(target: _Target) -> str:
    word = "an integer" if target.annotation is int else "a number"
    return word + _bounds(target.field)


def _options(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


def _hint(value: object, options: Sequence[str]) -> str:
    if not isinstance(value, str):
        return ""
    match = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


_NUMERIC = {
    "int_type",
    "int_parsing",
    "int_from_float",
    "float_type",
    "float_parsing",
    "finite_number",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
}
_SHAPES = {
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _sentence(
    error: ErrorDetails, root: type[BaseModel] = Scenario, prefix: Loc = ()
) -> tuple[Loc, str]:
    """A pydantic error as (clean location, 'expected ..., got ...').

    ``root`` is the model validated; ``prefix`` where it sits in the scenario
    (a simulation plugin's settings sit under ``simulation``).
    """
    loc, message = _sentence_in(error, root)
    return (*prefix, *loc), message


def _sentence_in(error: ErrorDetails, root: type[BaseModel]) -> tuple[Loc, str]:
    kind = error["type"]
    target = _target(tuple(error["loc"]), root)
    loc = target.loc
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    got = _show(error.get("input"))
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "extra_forbidden":
        fields = (
            [i.alias or a for a, i in target.owner.model_fields.items()] if target.owner else []
        )
        hint = _hint(loc[-1], fields) if loc else ""
        return loc, "unknown field" + (hint or f"; expected one of: {', '.join(fields)}")
    if kind in _NUMERIC:
        return loc, f"expected {_number(target)}, got {got}"
    if kind in _SHAPES:
        return loc, f"expected {_SHAPES[kind]}, got {got}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        return loc, f"expected {expected}, got {got}{_hint(error.get('input'), _options(expected))}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = ", ".join(repr(t) for t in _variants(target.annotation))
        tag = ctx.get("tag")
        if kind == "union_tag_not_found":
            return (*loc, "kind"), f"required field is missing; expected one of {expected}"
        return (
            *loc,
            "kind",
        ), f"expected one of {expected}, got {tag!r}{_hint(tag, _options(expected))}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return (
            loc,
            f"expected {PATTERN_TEXT.get(pattern, f'a string matching {pattern}')}, got {got}",
        )
    if kind == "string_too_short":
        return loc, f"expected a non-empty string, got {got}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return loc, f"expected at least {n} item{'s' if n != 1 else ''}, got none"
    if kind in ("value_error", "assertion_error"):
        message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return loc, message
    message = str(error["msg"])
    return loc, f"{message[:1].lower()}{message[1:]}, got {got}"


# -- loading ------------------------------------------------------------------------


def parse_scenario(
    text: str,
    *,
    file: str = "<scenario>",
    source: Path | None = None,
    search_path: Sequence[str] | None = None,
) -> Scenario:
    """Parse and check scenario YAML text; see :func:`load_scenario`.

    Args:
        text: the YAML.
        file: how messages name the file.
        source: the file's path, for relative input paths (None = working directory).
        search_path: where 'module:function' references are looked up
            (default: the working directory, then ``sys.path``).

    Raises:
        ScenarioError: with every problem found.
    """
    root, data = _compose(text, file)
    problems: list[ScenarioProblem] = []
    duplicates: list[tuple[Loc, int, int]] = []
    if root is not None:
        _duplicates(root, (), duplicates)
    for loc, line, first in duplicates:
        problems.append(
            ScenarioProblem(file, line, _path(loc), f"duplicate key (first at line {first})")
        )
    if not isinstance(data, dict):
        got = "an empty file" if data is None else _show(data)
        problems.append(
            ScenarioProblem(
                file,
                _line(root, ()) or 1,
                "",
                f"expected a mapping of scenario fields (name, nodes, ...), got {got}",
            )
        )
        raise ScenarioError(file, problems)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc, message = _sentence(error)
            problems.append(ScenarioProblem(file, _line(root, loc), _path(loc), message))
        raise ScenarioError(file, _ordered(problems)) from None
    scenario._source = source
    if scenario.simulation is not None:
        problems.extend(_simulation(scenario, scenario.simulation, root, file))
        if problems:
            raise ScenarioError(file, _ordered(problems))
    for issue in check_scenario(scenario, search_path=search_path):
        problems.append(
            ScenarioProblem(file, _line(root, issue.loc), _path(issue.loc), issue.message)
        )
    if problems:
        raise ScenarioError(file, _ordered(problems))
    return scenario


def _simulation(
    scenario: Scenario, decl: SimulationDecl, root: yaml.Node | None, file: str
) -> list[ScenarioProblem]:
    """Load the simulation plugin, validate its settings, let it check them; sets the sites."""
    problems: list[ScenarioProblem] = []
    loc: Loc = ("simulation", "plugin")
    try:
        plugin = load_plugin(decl.plugin)
    except PluginLoadError as exc:
        return [ScenarioProblem(file, _line(root, loc), _path(loc), str(exc))]
    try:
        config = plugin.config_model.model_validate(decl.settings())
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            where, message = _sentence(error, plugin.config_model, ("simulation",))
            problems.append(ScenarioProblem(file, _line(root, where), _path(where), message))
        return problems
    for issue in plugin.check(config, scenario):
        problems.append(
            ScenarioProblem(file, _line(root, issue.loc), _path(issue.loc), issue.message)
        )
    if not problems:
        scenario._plugin = plugin
        scenario._sim_config = config
        scenario._sites = tuple(plugin.sites(config, scenario))
    return problems


def _ordered(problems: list[ScenarioProblem]) -> list[ScenarioProblem]:
    return sorted(problems, key=lambda p: p.line or 0)


def load_scenario(
    path: str | os.PathLike[str], *, search_path: Sequence[str] | None = None
) -> Scenario:
    """Read, validate and check a scenario file, before anything starts.

    Checks the types (``extra="forbid"``: unknown fields are errors, with a
    suggestion), then that references resolve (functions, stream and trigger
    functions declared, fault targets, link endpoints), that every module has a
    feasible placement on the declared hardware, that topics are valid and that
    the stream graph has no cycle.

    Example:
        >>> scenario = load_scenario("scenarios/small.yaml")  # doctest: +SKIP
        >>> [a.id for a in scenario.agent_nodes()]            # doctest: +SKIP
        ['j-A0', 'j-A1', 'j-B0', 'j-B1']

    Raises:
        ScenarioError: every problem, each ``file:line: field: what was expected``.
    """
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(
            file, [ScenarioProblem(file, None, "", f"cannot read the file: {why}")]
        ) from exc
    return parse_scenario(text, file=file, source=Path(file), search_path=search_path)
