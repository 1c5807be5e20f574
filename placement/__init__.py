"""Pure placement engine: where each inference module runs and who serves each site.

No I/O, no Ray, no clock reads: everything comes in as arguments and the same
input gives the same plan. Example::

    from placement import Link, Module, Node, Profile, Source, Topology, plan

    topo = Topology(
        nodes=(
            Node("cam-1", tier="edge", site="int-1", cost_per_h=0.01, memory_mb=512),
            Node("fog-1", tier="fog", site="depot", cost_per_h=0.3, servers=4),
        ),
        links=(Link("int-1", "depot", rtt_ms=4.0, bandwidth_mbps=100.0),),
    )
    profile = Profile({"edge": 6.0, "fog": 2.0}, memory_mb=150.0)
    counter = Module("counter", slo_p95_ms=20.0, profile=profile)
    p = plan(topo, [counter], [Source("counter", site="int-1", rate_per_s=10.0)])
    p.routes["counter", "int-1"].node          # 'cam-1'
    print(p.explain("counter", "int-1"))        # candidates, predicted p95, why

Policies: :data:`OURS` (cheapest within SLO, hysteresis), and the baselines
:data:`CLOUD_ONLY`, :data:`EDGE_ONLY`, :data:`FOGFLOW`; :func:`plan_exhaustive`
is the brute-force yardstick for small instances.
"""

from ._bruteforce import plan_exhaustive
from ._greedy import Ranking
from ._latency import MAX_RHO, predict_p95_ms, slowdown, transfer_ms
from ._model import (
    TIERS,
    CurrentPlacement,
    CurrentRoute,
    Link,
    Metrics,
    Module,
    Node,
    PlacementError,
    PlannerSettings,
    Profile,
    Source,
    Tier,
    Topology,
)
from ._plan import (
    Candidate,
    Decision,
    InfeasiblePlacementError,
    Move,
    Plan,
    PlanRoutes,
    Route,
    RouteColumns,
    Violation,
)
from ._planner import advance, plan
from ._policies import (
    CLOUD_ONLY,
    EDGE_ONLY,
    FOGFLOW,
    KEEP,
    OURS,
    POLICIES,
    CostPolicy,
    KeepPolicy,
    NearestPolicy,
    Policy,
)
from ._problem import Problem

__all__ = [
    "CLOUD_ONLY",
    "EDGE_ONLY",
    "FOGFLOW",
    "KEEP",
    "MAX_RHO",
    "OURS",
    "POLICIES",
    "TIERS",
    "Candidate",
    "CostPolicy",
    "CurrentPlacement",
    "CurrentRoute",
    "Decision",
    "InfeasiblePlacementError",
    "KeepPolicy",
    "Link",
    "Metrics",
    "Module",
    "Move",
    "NearestPolicy",
    "Node",
    "PlacementError",
    "Plan",
    "PlanRoutes",
    "PlannerSettings",
    "Policy",
    "Problem",
    "Profile",
    "Ranking",
    "Route",
    "RouteColumns",
    "Source",
    "Tier",
    "Topology",
    "Violation",
    "advance",
    "plan",
    "plan_exhaustive",
    "predict_p95_ms",
    "slowdown",
    "transfer_ms",
]
