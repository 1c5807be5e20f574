"""What a scenario's types cannot say: references, feasibility, topics, cycles.

:func:`check_scenario` returns every problem it finds as an :class:`Issue`
(a field location such as ``("modules", 0, "providers")`` and a message);
:mod:`mesh.scenario._load` turns locations into ``file:line``. Nothing here
imports user code (the loader imports a simulation plugin, which checks its
own block): ``module:function`` references are found on the import path
and their module's source is parsed for a top-level definition.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import ModuleSpec
from pathlib import Path

from mesh.core._topics import topic_matches
from mesh.scenario._decls import ModuleDecl
from mesh.scenario._faults import drift_issue
from mesh.scenario._fields import GPU_PROVIDERS
from mesh.scenario._nodes import AgentNode, RayNode
from mesh.scenario._schema import Scenario

__all__ = ["Issue", "check_scenario", "relative_to", "resolve_ref"]

Loc = tuple[str | int, ...]
TIERS = ("cloud", "fog", "edge")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: where (a field location) and what was expected."""

    loc: Loc
    message: str


def _hint(name: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _listing(names: Sequence[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


# -- references ---------------------------------------------------------------------


def _find_spec(module: str, search_path: Sequence[str]) -> tuple[ModuleSpec | None, str]:
    """The spec of ``module`` without importing it (nor its parents); else the missing name."""
    parts = module.split(".")
    paths: list[str] = list(search_path)
    spec: ModuleSpec | None = None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        loaded = sys.modules.get(full)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        if spec is None:
            spec = importlib.machinery.PathFinder.find_spec(full, paths)
        if spec is None and i == 0:
            spec = importlib.util.find_spec(full)  # meta-path finders (editable installs)
        if spec is None:
            return None, full
        if i < len(parts) - 1:
            if spec.submodule_search_locations is None:
                return None, ".".join(parts[: i + 2])
            paths = list(spec.submodule_search_locations)
    return spec, module


def _collect(body: list[ast.stmt], names: set[str]) -> bool:
    """Add the top-level names bound in ``body``; True when the module is open-ended."""
    open_ended = False
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            open_ended |= node.name == "__getattr__"
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                open_ended |= alias.name == "*"
                names.add(alias.asname or alias.name)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            open_ended |= _collect(node.body, names)
            for part in ("orelse", "finalbody"):
                open_ended |= _collect(getattr(node, part, []), names)
            for handler in getattr(node, "handlers", []):
                open_ended |= _collect(handler.body, names)
    return open_ended


@lru_cache(maxsize=64)
def _top_level(path: str, mtime_ns: int) -> tuple[frozenset[str], bool, str | None]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (OSError, UnicodeDecodeError) as exc:
        return frozenset(), True, f"cannot read {path}: {exc}"
    except SyntaxError as exc:
        return frozenset(), True, f"{path}:{exc.lineno}: syntax error: {exc.msg}"
    names: set[str] = set()
    open_ended = _collect(tree.body, names)
    return frozenset(names), open_ended, None


def resolve_ref(ref: str, search_path: Sequence[str] | None = None) -> str | None:
    """Why ``'package.module:name'`` does not resolve, or None when it does.

    The module is found on ``search_path`` (default: the working directory, then
    ``sys.path``) without being imported, and ``name`` must be bound at the top
    level of its source (a def, class, assignment or import).

    Example:
        >>> resolve_ref("mesh.core._topics:topic_matches") is None
        True
        >>> resolve_ref("mesh.core._topics:topic_matchs")
        "module 'mesh.core._topics' has no top-level 'topic_matchs'; did you mean 'topic_matches'?"
    """
    module, _, name = ref.partition(":")
    paths = [os.getcwd(), *sys.path] if search_path is None else list(search_path)
    loaded = sys.modules.get(module)
    if loaded is not None and hasattr(loaded, name):
        return None
    spec, missing = _find_spec(module, paths)
    if spec is None:
        return f"no module {missing!r} on the import path"
    origin = spec.origin
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None  # compiled or namespace: nothing to read without importing
    names, open_ended, error = _top_level(origin, os.stat(origin).st_mtime_ns)
    if error is not None:
        return f"module {module!r} cannot be parsed: {error}"
    if name in names or open_ended:
        return None
    public = sorted(n for n in names if not n.startswith("_"))
    return f"module {module!r} has no top-level {name!r}{_hint(name, public)}"


# -- the checks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Host:
    name: str
    tier: str
    providers: tuple[str, ...]
    memory_mb: int
    cpus: float


def _hosts(ray: list[RayNode], agents: list[AgentNode]) -> list[_Host]:
    hosts = [_Host(n.name, n.tier, n.providers, n.memory_mb, n.cpus) for n in ray]
    hosts += [_Host(a.id, "edge", a.providers, a.memory_mb, a.cpus) for a in agents]
    return hosts


class _Checker:
    def __init__(self, scenario: Scenario, search_path: Sequence[str] | None) -> None:
        self.s = scenario
        self.search_path = search_path
        self.issues: list[Issue] = []
        self.ray = scenario.nodes.ray
        self.node_names = [n.name for n in self.ray]
        self.agents: list[AgentNode] = []
        self.hosts: list[_Host] = []
        self.sites: list[str] = []

    def add(self, loc: Loc, message: str) -> None:
        self.issues.append(Issue(loc, message))

    def run(self) -> list[Issue]:
        self.simulation()
        self.nodes()
        self.links()
        self.functions()
        self.modules()
        self.streams()
        self.triggers()
        self.faults()
        return self.issues

    def _unique(self, section: Loc, field: str | None, values: Sequence[str], what: str) -> None:
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            if value in first:
                loc: Loc = (*section, i) if field is None else (*section, i, field)
                self.add(loc, f"duplicate {what} {value!r} (also item {first[value]})")
            else:
                first[value] = i

    def simulation(self) -> None:
        self.sites = self.s.site_ids()
        if self.s.simulation is not None and self.s.duration_s is not None:
            self.add(
                ("duration_s",),
                "expected no duration_s with a simulation (the simulation ends the run)",
            )
        if self.s.faults and self.s.end_s() is None:
            self.add(
                ("faults",),
                "faults need a live phase: a simulation, or duration_s for a scenario without one",
            )

    def nodes(self) -> None:
        s = self.s
        self._unique(("nodes", "ray"), "name", self.node_names, "node name")
        if s.head_node() is None:
            tiers = ", ".join(sorted({n.tier for n in self.ray}))
            self.add(
                ("nodes", "ray"),
                f"expected at least one cloud node (the first is the Ray head), got tiers: {tiers}",
            )
        pool = s.nodes.agents
        if pool.per_site and s.simulation is None:
            self.add(
                ("nodes", "agents", "per_site"),
                "per_site needs a simulation (it has the sites)",
            )
        self.agents = s.agent_nodes()
        self.hosts = _hosts(self.ray, self.agents)
        generated = {a.id for a in self.agents[: len(self.agents) - len(pool.devices)]}
        seen: dict[str, int] = {}
        for i, device in enumerate(pool.devices):
            loc: Loc = ("nodes", "agents", "devices", i)
            if device.id in generated:
                self.add((*loc, "id"), f"duplicate agent id {device.id!r} (per_site makes it)")
            elif device.id in seen:
                self.add(
                    (*loc, "id"), f"duplicate agent id {device.id!r} (also item {seen[device.id]})"
                )
            elif device.id in self.node_names:
                self.add((*loc, "id"), f"agent id {device.id!r} is also a Ray node's name")
            seen.setdefault(device.id, i)
            if s.simulation is not None and self.sites and device.site not in self.sites:
                self.add(
                    (*loc, "site"),
                    f"no site {device.site!r} in the simulation"
                    f"{_hint(device.site, self.sites)} (sites: {_listing(self.sites)})",
                )

    def links(self) -> None:
        agent_ids = [a.id for a in self.agents]
        sites = sorted({n.site_name for n in self.ray} | {a.site for a in self.agents})
        known = {"cloud", "fog", "edge", *self.node_names, *agent_ids, *sites}
        tier_nodes = {t: self._tier_hosts(t) for t in TIERS}
        seen: dict[frozenset[str], int] = {}
        for i, link in enumerate(self.s.links):
            for field, end in (("from", link.from_), ("to", link.to)):
                if end not in known:
                    self.add(
                        ("links", i, field),
                        f"unknown endpoint {end!r}: expected a tier (cloud, fog, edge), a Ray "
                        f"node, an agent or a site{_hint(end, sorted(known))}",
                    )
                elif end in TIERS and not tier_nodes[end]:
                    self.add(("links", i, field), f"no {end} node is declared")
            pair = frozenset((link.from_, link.to))
            if pair in seen:
                self.add(("links", i), f"duplicate link {link.key!r} (also item {seen[pair]})")
            seen.setdefault(pair, i)

    def _tier_hosts(self, tier: str) -> list[_Host]:
        return [h for h in self.hosts if h.tier == tier]

    def functions(self) -> None:
        self._unique(("functions",), None, self.s.functions, "function")
        for i, ref in enumerate(self.s.functions):
            problem = resolve_ref(ref, self.search_path)
            if problem is not None:
                self.add(("functions", i), f"cannot resolve {ref!r}: {problem}")

    def _declared(self, loc: Loc, ref: str) -> None:
        if ref in self.s.functions:
            return
        by_name = {f.partition(":")[2]: f for f in self.s.functions}
        match = difflib.get_close_matches(ref.partition(":")[2], list(by_name), n=1, cutoff=0.6)
        hint = f"; did you mean {by_name[match[0]]!r}?" if match else "; add it there"
        self.add(loc, f"{ref!r} is not listed under functions{hint}")

    def modules(self) -> None:
        self._unique(("modules",), "name", [m.name for m in self.s.modules], "module")
        for i, module in enumerate(self.s.modules):
            loc: Loc = ("modules", i)
            source = module.model
            if source.train is not None:
                self._declared((*loc, "model", "train"), source.train)
            if source.tune is not None:
                self._declared((*loc, "model", "tune"), source.tune)
            if source.path is not None and not self.s.resolve_path(source.path).is_file():
                self.add(
                    (*loc, "model", "path"),
                    f"no such file {source.path!r} (relative to {relative_to(self.s)})",
                )
            if module.handler is not None:
                problem = resolve_ref(module.handler, self.search_path)
                if problem is not None:
                    self.add((*loc, "handler"), f"cannot resolve {module.handler!r}: {problem}")
            self._placement(i, module)
            self._source(loc, module)

    def _source(self, loc: Loc, module: ModuleDecl) -> None:
        src = module.source
        if src is None:
            return
        if "edge" not in module.tiers:
            self.add(
                (*loc, "source"),
                "a source feeds the module on the agents: expected 'edge' in its tiers, "
                f"got {module.tiers}",
            )
        if not self.agents:
            self.add((*loc, "source"), "a source feeds the module on the agents: no agent declared")
        if src.path is not None and "{" not in src.path:
            if not self.s.resolve_path(src.path).is_file():
                self.add(
                    (*loc, "source", "path"),
                    f"no such file {src.path!r} (relative to {relative_to(self.s)})",
                )
        elif src.path is not None:
            rest = src.path.replace("{site}", "").replace("{out}", "")
            if "{" in rest or "}" in rest:
                self.add(
                    (*loc, "source", "path"),
                    f"expected only '{{site}}' and '{{out}}' as placeholders, got {src.path!r}",
                )

    def _fit(self, module: ModuleDecl, hosts: list[_Host]) -> tuple[list[_Host], str, str]:
        """Hosts that can run ``module``; else why not and which field is at fault."""
        if not hosts:
            return [], "none is declared", "tiers"
        wanted = set(module.providers)
        with_provider = [h for h in hosts if wanted & set(h.providers)]
        if not with_provider:
            return [], f"none offers {' or '.join(module.providers)}", "providers"
        fits = [h for h in with_provider if h.memory_mb >= module.memory_mb]
        if not fits:
            most = max(h.memory_mb for h in with_provider)
            return [], f"{most} MiB at most, it needs {module.memory_mb} MiB", "memory_mb"
        fits_cpu = [h for h in fits if h.cpus >= module.cpus]
        if not fits_cpu:
            most_cpus = max(h.cpus for h in fits)
            return [], f"{most_cpus:g} CPUs at most, it needs {module.cpus:g}", "cpus"
        return fits_cpu, "", ""

    def _placement(self, i: int, module: ModuleDecl) -> None:
        loc: Loc = ("modules", i)
        reasons: dict[str, str] = {}
        fields: set[str] = set()
        feasible: dict[str, list[_Host]] = {}
        for tier in module.tiers:
            hosts, reason, field = self._fit(module, self._tier_hosts(tier))
            if hosts:
                feasible[tier] = hosts
            else:
                reasons[tier] = reason
                fields.add(field)
        if not feasible:
            grouped: dict[str, list[str]] = {}
            for tier_name, reason in reasons.items():
                grouped.setdefault(reason, []).append(tier_name)
            why = "; ".join(f"{', '.join(tiers)}: {reason}" for reason, tiers in grouped.items())
            # Point at the field to change; a missing tier only matters when nothing else does.
            specific = fields - {"tiers"} or fields
            at: Loc = (*loc, specific.pop()) if len(specific) == 1 else loc
            self.add(
                at,
                f"module {module.name!r} has no feasible placement ({why})"
                + _provider_note(module, reasons),
            )
        initial = module.initial
        if initial is None:
            return
        where: Loc = (*loc, "initial")
        tiers = ", ".join(module.tiers)
        if initial in TIERS:
            if initial not in module.tiers:
                self.add(where, f"initial placement {initial!r} is not one of its tiers ({tiers})")
            elif feasible and initial not in feasible:
                self.add(
                    where, f"initial placement {initial!r} is not feasible: {reasons[initial]}"
                )
            return
        host = next((h for h in self.hosts if h.name == initial), None)
        if host is None:
            names = [*module.tiers, *self.node_names, *(a.id for a in self.agents)]
            self.add(
                where,
                f"unknown placement {initial!r}{_hint(initial, names)}; expected one of its "
                f"tiers ({tiers}), a Ray node or an agent",
            )
        elif host.tier not in module.tiers:
            self.add(where, f"{initial!r} is {_kind(host.tier)}, not in its tiers ({tiers})")
        elif not self._fit(module, [host])[0]:
            self.add(where, f"{initial!r} cannot host it: {self._fit(module, [host])[1]}")

    def _runs_on(self, loc: Loc, tier: str, node: str | None) -> None:
        if node is None:
            if not self._tier_hosts(tier):
                self.add((*loc, "tier"), f"no {tier} node is declared")
            return
        match = next((n for n in self.ray if n.name == node), None)
        if match is None:
            self.add(
                (*loc, "node"),
                f"no Ray node {node!r}{_hint(node, self.node_names)} "
                f"(nodes: {_listing(self.node_names)})",
            )
        elif match.tier != tier:
            self.add((*loc, "node"), f"{node!r} is {_kind(match.tier)}, expected {_kind(tier)}")

    def streams(self) -> None:
        streams = self.s.streams
        self._unique(("streams",), "name", [st.name for st in streams], "stream")
        for i, stream in enumerate(streams):
            self._declared(("streams", i, "function"), stream.function)
            self._runs_on(("streams", i), stream.tier, stream.node)
        edges = {
            i: [
                j
                for j, other in enumerate(streams)
                if a.output is not None and topic_matches(other.input, a.output)
            ]
            for i, a in enumerate(streams)
        }
        for cycle in _cycles(edges):
            names = " -> ".join(streams[k].name for k in [*cycle, cycle[0]])
            self.add(
                ("streams", cycle[0], "output"),
                f"stream cycle {names} (each output matches the next one's input)",
            )

    def triggers(self) -> None:
        triggers = self.s.triggers
        names = [t.name for t in triggers]
        self._unique(("triggers",), "name", names, "trigger")
        end = self._end_s()
        for i, trigger in enumerate(triggers):
            self._declared(("triggers", i, "function"), trigger.function)
            self._runs_on(("triggers", i), trigger.tier, None)
            if trigger.after is not None and trigger.after not in names:
                self.add(
                    ("triggers", i, "after"),
                    f"no trigger {trigger.after!r}{_hint(trigger.after, names)}"
                    f" (triggers: {_listing(names)})",
                )
            if end is not None and trigger.at_s is not None and trigger.at_s >= end:
                self.add(("triggers", i, "at_s"), _after_end(trigger.at_s, end))
        index = {t.name: i for i, t in enumerate(triggers)}
        edges: dict[int, list[int]] = {i: [] for i in range(len(triggers))}
        for i, trigger in enumerate(triggers):
            if trigger.after in index:
                edges[index[trigger.after]].append(i)
        for cycle in _cycles(edges):
            chain = " -> ".join(triggers[k].name for k in [*cycle, cycle[0]])
            self.add(
                ("triggers", cycle[0], "after"),
                f"trigger cycle {chain} (each runs after the previous)",
            )

    def _end_s(self) -> float | None:
        return self.s.end_s()

    def faults(self) -> None:
        agent_ids = list(dict.fromkeys(a.id for a in self.agents))
        node_names = list(dict.fromkeys(self.node_names))
        head = self.s.head_node()
        links = {frozenset((link.from_, link.to)) for link in self.s.links}
        link_names = [link.key for link in self.s.links]
        allowed = {
            "cpu_hog": ("agent", "node"),
            "link_delay": ("link",),
            "agent_restart": ("agent",),
            "agent_crash": ("agent",),
            "node_remove": ("node",),
            "drift": ("site", "agent"),
        }
        forms = {"agent": "'agent:<id>'", "node": "'node:<name>'", "link": "'link:<a>-><b>'"}
        forms["site"] = "'site:<site>'"
        end = self._end_s()
        for i, fault in enumerate(self.s.faults):
            loc: Loc = ("faults", i, "target")
            if end is not None and fault.at_s >= end:
                self.add(("faults", i, "at_s"), _after_end(fault.at_s, end))
            kind, _, name = fault.target.partition(":")
            if "->" in fault.target and not fault.target.startswith("link:"):
                kind, name = "link", fault.target
            ok = allowed[fault.kind]
            if kind not in ok or not name:
                expected = " or ".join(forms[k] for k in ok)
                self.add(loc, f"expected {expected} for {fault.kind}, got {fault.target!r}")
            elif kind == "agent" and name not in agent_ids:
                self.add(
                    loc,
                    f"no agent {name!r}{_hint(name, agent_ids)} (agents: {_listing(agent_ids)})",
                )
            elif kind == "node" and name not in node_names:
                self.add(
                    loc,
                    f"no Ray node {name!r}{_hint(name, node_names)} "
                    f"(nodes: {_listing(node_names)})",
                )
            elif kind == "link" and frozenset(name.split("->", 1)) not in links:
                self.add(
                    loc,
                    f"no link {name!r}{_hint(name, link_names)} (links: {_listing(link_names)})",
                )
            elif fault.kind == "node_remove" and head is not None and name == head.name:
                self.add(loc, f"cannot remove the Ray head {name!r} (the first cloud node)")
            elif fault.kind == "drift" and (why := drift_issue(self.s, kind, name)) is not None:
                self.add(loc, why)


def relative_to(scenario: Scenario) -> str:
    """How messages name the directory relative input paths start from."""
    base = scenario.base_dir
    return "the working directory" if str(base) == "." else f"{base}/"


def _kind(tier: str) -> str:
    return "an edge agent" if tier == "edge" else f"a {tier} node"


def _provider_note(module: ModuleDecl, reasons: dict[str, str]) -> str:
    """Why a provider is missing: GPU providers need gpus > 0; agents list theirs."""
    missing = [t for t, r in reasons.items() if r.startswith("none offers")]
    notes = []
    if set(module.providers) & GPU_PROVIDERS and {"cloud", "fog"} & set(missing):
        notes.append("a Ray node offers GPU providers only with gpus > 0")
    if "edge" in missing:
        notes.append("agents offer the providers they list")
    return f"; {'; '.join(notes)}" if notes else ""


def _after_end(at_s: float, end_s: float) -> str:
    return f"at {at_s:g} s, not before the live phase ends at {end_s:g} s"


def _cycles(edges: dict[int, list[int]]) -> list[list[int]]:
    """One shortest cycle per strongly connected part of a small graph, in index order."""
    nodes = sorted(edges)
    reach: dict[int, set[int]] = {}
    for start in nodes:
        seen: set[int] = set()
        stack = list(edges[start])
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(edges[k])
        reach[start] = seen
    done: set[int] = set()
    cycles: list[list[int]] = []
    for start in nodes:
        if start in done or start not in reach[start]:
            continue
        done |= {k for k in reach[start] if start in reach[k]}
        # Breadth-first from start back to itself: the shortest cycle through it.
        parent: dict[int, int] = {}
        frontier = [start]
        while frontier and start not in parent:
            nxt: list[int] = []
            for k in frontier:
                for m in edges[k]:
                    if m not in parent:
                        parent[m] = k
                        nxt.append(m)
            frontier = nxt
        path = [parent[start]]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(path[::-1])
    return cycles


def check_scenario(scenario: Scenario, *, search_path: Sequence[str] | None = None) -> list[Issue]:
    """Every problem of a structurally valid scenario, in file order of sections.

    Args:
        scenario: the parsed scenario.
        search_path: where ``module:function`` references are looked up
            (default: the working directory, then ``sys.path``).
    """
    return _Checker(scenario, search_path).run()
