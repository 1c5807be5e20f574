"""Properties of the planner on random small instances, checked against brute force.

The guarantee under test (see ``placement/_greedy.py``):

* whatever it returns as feasible is feasible (same model, checked independently);
* it is never cheaper than the optimum and never below the lower bound, and when
  it claims ``optimal`` it is exactly the brute-force optimum;
* it is 1-move optimal: no route could move alone to a cheaper candidate
  without breaking an SLO, a capacity or a memory limit;
* same input (in any order) gives the same plan.

Beyond the guarantee, a seeded batch pins the measured quality: how often the
fast planner finds a plan when one exists, and how often it is exactly optimal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from placement import (
    Link,
    Metrics,
    Module,
    Node,
    Plan,
    PlannerSettings,
    Profile,
    Source,
    Topology,
    plan,
    plan_exhaustive,
)
from placement._evaluate import evaluate
from placement._model import CurrentPlacement
from placement._problem import build_problem

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Derandomized and without an example database: the same examples on every run, no files.
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@dataclass(frozen=True)
class Instance:
    topology: Topology
    modules: list[Module]
    sources: list[Source]
    metrics: Metrics


def random_instance(rng: random.Random) -> Instance:
    """1-3 junctions, 0-2 fog nodes, a cloud node; 1-3 modules; tight memory and load."""
    n_sites, n_modules = rng.randint(1, 3), rng.randint(1, 3)
    nodes: list[Node] = []
    links: list[Link] = []
    for s in range(n_sites):
        if rng.random() < 0.9:
            nodes.append(
                Node(
                    f"e{s}",
                    tier="edge",
                    site=f"s{s}",
                    cost_per_h=rng.choice([0.0, 0.01, 0.02]),
                    servers=rng.randint(1, 2),
                    memory_mb=rng.choice([200.0, 400.0, 1000.0]),
                    max_utilisation=rng.uniform(0.6, 0.95),
                )
            )
        links.append(
            Link(
                f"s{s}",
                "fog",
                rtt_ms=rng.uniform(1, 10),
                bandwidth_mbps=rng.choice([5.0, 50.0, 1000.0]),
            )
        )
    for f in range(rng.randint(0, 2)):
        nodes.append(
            Node(
                f"f{f}",
                tier="fog",
                site="fog",
                cost_per_h=rng.uniform(0.1, 0.5),
                servers=rng.randint(1, 4),
                memory_mb=rng.choice([300.0, 1000.0, 4000.0]),
                max_utilisation=rng.uniform(0.6, 0.95),
            )
        )
    nodes.append(
        Node(
            "c0",
            tier="cloud",
            site="dc",
            cost_per_h=rng.uniform(1, 4),
            servers=rng.randint(2, 8),
            memory_mb=8000.0,
            providers=frozenset({CUDA, CPU}),
        )
    )
    links.append(Link("fog", "dc", rtt_ms=rng.uniform(5, 30)))
    modules = []
    for m in range(n_modules):
        e = rng.uniform(2, 15)
        modules.append(
            Module(
                f"m{m}",
                slo_p95_ms=rng.uniform(8, 60),
                profile=Profile(
                    {"edge": e, "fog": e / 3, CUDA: e / 10},
                    memory_mb=rng.choice([100.0, 150.0, 250.0]),
                ),
                request_bytes=rng.choice([0, 2000, 30000]),
            )
        )
    sources = [
        Source(f"m{m}", f"s{s}", rng.uniform(1, 80))
        for s in range(n_sites)
        for m in range(n_modules)
        if rng.random() < 0.8
    ]
    background = {n.name: rng.uniform(0, 0.5) for n in nodes}
    return Instance(
        Topology(tuple(nodes), tuple(links)),
        modules,
        sources,
        Metrics(node_utilisation=background, utilisation_includes_current=False),
    )


instances = st.integers(min_value=0, max_value=2**32 - 1).map(
    lambda seed: random_instance(random.Random(seed))
)


def fast(inst: Instance) -> Plan:
    return plan(inst.topology, inst.modules, inst.sources, metrics=inst.metrics)


def best(inst: Instance) -> Plan:
    return plan_exhaustive(inst.topology, inst.modules, inst.sources, metrics=inst.metrics)


def same_cost(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def check_feasible_by_hand(inst: Instance, p: Plan) -> None:
    """Recompute what 'feasible' promises from the public figures alone."""
    nodes = {n.name: n for n in inst.topology.nodes}
    memory = {m.name: m.profile.memory_mb for m in inst.modules}
    for route in p.routes.values_list():
        assert route.predicted_p95_ms <= route.slo_p95_ms * (1 + 1e-9), route
    used: dict[str, float] = {}
    for module, hosts in p.replicas.items():
        for host in hosts:
            used[host] = used.get(host, 0.0) + memory[module]
    for host, mb in used.items():
        assert mb <= nodes[host].memory_mb * (1 + 1e-9), (host, mb)
        assert p.node_utilisation[host] <= nodes[host].max_utilisation + 1e-9, host


@SETTINGS
@given(instances)
def test_feasible_plans_are_feasible_and_never_beat_the_optimum(inst: Instance) -> None:
    p, opt = fast(inst), best(inst)
    assert p.cost_lower_bound_per_h <= p.cost_per_h + 1e-12 or not p.feasible
    if p.feasible:
        check_feasible_by_hand(inst, p)
        assert opt.feasible  # the search space includes the fast plan
        assert p.cost_per_h >= opt.cost_per_h - 1e-9 * max(1.0, opt.cost_per_h)
        assert opt.cost_per_h >= p.cost_lower_bound_per_h - 1e-9 * max(1.0, opt.cost_per_h)
    if p.optimal:
        assert same_cost(p.cost_per_h, opt.cost_per_h)
    if not opt.feasible:
        assert not p.feasible
        assert p.violations or p.overloaded


@SETTINGS
@given(instances)
def test_no_single_route_can_move_to_a_cheaper_candidate(inst: Instance) -> None:
    p = fast(inst)
    problem = build_problem(
        inst.topology,
        inst.modules,
        inst.sources,
        metrics=inst.metrics,
        current=CurrentPlacement(),
        now_s=0.0,
        settings=PlannerSettings(),
    )
    node_index = {name: i for i, name in enumerate(problem.node_names)}
    cols = np.full(problem.n_demands, -1, dtype=np.int64)
    for d in range(problem.n_demands):
        route = p.routes.get(
            (problem.module_names[problem.demand_module[d]], problem.sites[problem.demand_site[d]])
        )
        if route is not None:
            cols[d] = int(np.flatnonzero(problem.cand_node[d] == node_index[route.node])[0])
    base = evaluate(problem, cols)
    assert same_cost(base.cost_per_h, p.cost_per_h)
    if not base.feasible:
        return
    for d in range(problem.n_demands):
        for k in np.flatnonzero(problem.cand_valid[d]):
            if problem.cand_cost[d, k] >= problem.cand_cost[d, cols[d]] * (1 - 1e-9):
                continue
            moved = cols.copy()
            moved[d] = k
            assert not evaluate(problem, moved).feasible, (d, k)
    # The explanations say the same: nothing ranked ahead of the winner "fits".
    for decision in p.decisions():
        ahead = decision.candidates[: [c.status for c in decision.candidates].index("chosen")]
        assert all(c.status != "fits" for c in ahead), str(decision)


@SETTINGS
@given(instances, st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(inst: Instance, rng: random.Random) -> None:
    a = fast(inst)
    nodes, links, sources = list(inst.topology.nodes), list(inst.topology.links), list(inst.sources)
    modules = list(inst.modules)
    for seq in (nodes, links, sources, modules):
        rng.shuffle(seq)
    b = plan(Topology(tuple(nodes), tuple(links)), modules, sources, metrics=inst.metrics)
    assert a.routes == b.routes
    assert (a.cost_per_h, a.headroom, a.violations) == (b.cost_per_h, b.headroom, b.violations)


@SETTINGS
@given(instances)
def test_overloaded_nodes_are_all_reported(inst: Instance) -> None:
    p = fast(inst)
    nodes = {n.name: n for n in inst.topology.nodes}
    hosts = {r.node for r in p.routes.values_list()}
    for host in hosts:
        if p.node_utilisation[host] > nodes[host].max_utilisation + 1e-9:
            assert host in p.overloaded


def test_measured_quality_against_brute_force() -> None:
    """On 300 seeded instances: a plan whenever one exists, and nearly always the optimum.

    Measured when written: 150 instances have a feasible plan; the planner
    finds one for all of them, exactly optimal for 149 (99.3 %), worst gap
    15 %, mean gap 0.1 % (over 400 seeds: 98.5 % exact, worst 44 %). The
    bounds leave room for harmless changes, not for a regression.
    """
    feasible = found = exact = 0
    gaps: list[float] = []
    for seed in range(300):
        inst = random_instance(random.Random(seed))
        opt = best(inst)
        if not opt.feasible:
            continue
        feasible += 1
        p = fast(inst)
        if not p.feasible:
            continue
        found += 1
        gap = (p.cost_per_h - opt.cost_per_h) / max(opt.cost_per_h, 1e-12)
        gaps.append(gap)
        exact += gap <= 1e-9
    assert feasible >= 100
    assert found / feasible >= 0.98
    assert exact / found >= 0.96
    assert sum(gaps) / len(gaps) <= 0.02
    assert max(gaps) <= 0.5
