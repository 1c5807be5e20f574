"""Placement policies: ours and the baselines it is measured against.

A policy ranks each demand's candidates and sets the utilisation each may
reach; the shared engine (``_greedy.assign``) does the capacity accounting.
So a policy is a few lines, and all policies are compared on equal terms:

- :data:`OURS` -- cheapest candidate predicted within its SLO on a node with
  room, then the most headroom; with hysteresis and a minimum dwell time.
- :data:`CLOUD_ONLY` / :data:`EDGE_ONLY` -- the same rule restricted to one
  tier: what a single-tier deployment gets.
- :data:`FOGFLOW` -- FogFlow's rule: the nearest node that is not overloaded,
  blind to SLO and cost.
- :data:`KEEP` -- no decision at all: every route stays where it is, so the
  plan is the current placement's prediction under new metrics (the
  controller's "predicted violation" trigger, and benchmark ground truth).

Write your own by implementing :class:`Policy`: ``rank(problem)`` returns a
:class:`Ranking` (which candidates are allowed, the utilisation cap of each,
the keys to prefer by) from the arrays of a :class:`Problem`. For example, a
policy that keeps ours but never uses the cloud::

    no_cloud = CostPolicy(name="no_cloud", tiers=frozenset({"edge", "fog"}))
    plan(topology, modules, sources, policy=no_cloud)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ._greedy import Ranking
from ._model import TIERS, Tier
from ._problem import Problem

__all__ = [
    "CLOUD_ONLY",
    "EDGE_ONLY",
    "FOGFLOW",
    "KEEP",
    "OURS",
    "POLICIES",
    "CostPolicy",
    "KeepPolicy",
    "NearestPolicy",
    "Policy",
]

_TIER_CODE = {tier: code for code, tier in enumerate(TIERS)}


@runtime_checkable
class Policy(Protocol):
    """Ranks candidates for the engine.

    Example:
        >>> isinstance(OURS, Policy)
        True
    """

    @property
    def name(self) -> str:
        """Short name used in plans, benchmarks and explanations."""
        ...

    @property
    def rule(self) -> str:
        """One sentence saying how it chooses (quoted in every explanation)."""
        ...

    @property
    def slo_aware(self) -> bool:
        """Whether it rejects candidates predicted over the SLO."""
        ...

    def rank(self, problem: Problem) -> Ranking:
        """Preferences and caps for every demand and candidate of ``problem``."""
        ...


def _tier_mask(problem: Problem, tiers: frozenset[Tier]) -> npt.NDArray[np.bool_]:
    if tiers == frozenset(TIERS):
        return problem.cand_valid
    codes = np.array(sorted(_TIER_CODE[t] for t in tiers), dtype=np.int64)
    safe = np.where(problem.cand_node >= 0, problem.cand_node, 0)
    out: npt.NDArray[np.bool_] = problem.cand_valid & np.isin(problem.node_tier[safe], codes)
    return out


@dataclass(frozen=True, slots=True)
class CostPolicy:
    """Lowest cost among candidates predicted within the SLO, then most headroom.

    With ``hysteresis``, a route that meets its SLO stays during the minimum
    dwell time; after it, a move needs a saving above ``cost_margin`` and a
    target predicted within ``slo * (1 - slo_margin)`` (see
    :class:`PlannerSettings`).

    Example:
        >>> CostPolicy(name="fog_and_cloud", tiers=frozenset({"fog", "cloud"})).name
        'fog_and_cloud'
    """

    name: str = "ours"
    tiers: frozenset[Tier] = frozenset(TIERS)
    hysteresis: bool = True

    @property
    def rule(self) -> str:
        """How it chooses."""
        where = "" if self.tiers == frozenset(TIERS) else f" on {'/'.join(sorted(self.tiers))}"
        return f"cheapest{where} candidate predicted within its SLO on a node with room"

    @property
    def slo_aware(self) -> bool:
        """It is."""
        return True

    def rank(self, problem: Problem) -> Ranking:
        """Rank by cost, then headroom; caps from the SLO (hysteresis band for moves)."""
        settings = problem.settings
        allowed = _tier_mask(problem, self.tiers)
        safe = np.where(problem.cand_node >= 0, problem.cand_node, 0)
        rho = problem.node_background[safe] + problem.cand_load
        slow = problem.tables.slowdown(problem.node_row[safe].ravel(), rho.ravel())
        with np.errstate(invalid="ignore"):
            p95 = (
                problem.cand_rtt
                + problem.cand_transfer
                + problem.cand_service * slow.reshape(rho.shape)
            )
        slo = problem.demand_slo[:, None]
        headroom = np.where(allowed, (slo - np.nan_to_num(p95, nan=np.inf)) / slo, -np.inf)
        primary = np.where(allowed, problem.cand_cost, np.inf)
        secondary = -headroom
        cap = problem.cand_cap.copy()
        pinned = np.full(problem.n_demands, -1, dtype=np.int64)
        start = None
        if self.hysteresis:
            start = problem.incumbent_col
            rows = np.flatnonzero(problem.incumbent_node >= 0)
            inc = problem.incumbent_col[rows]
            # Moving anywhere but the incumbent needs the tighter threshold.
            cap[rows] = problem.cand_cap_entry[rows]
            here = rows[inc >= 0]
            col = inc[inc >= 0]
            cap[here, col] = problem.cand_cap[here, col]
            dwelling = problem.now_s - problem.since_s[here] < settings.min_dwell_s
            pinned[here[dwelling]] = col[dwelling]
            # Past the dwell time the incumbent wins ties and small savings.
            primary[here, col] = primary[here, col] * (1.0 - settings.cost_margin)
            secondary[here, col] = -np.inf
        return Ranking(
            allowed=allowed,
            cap=cap,
            cap_fallback=problem.cand_cap,
            primary=primary,
            secondary=secondary,
            pinned=pinned,
            by_regret=True,
            start=start,
        )


@dataclass(frozen=True, slots=True)
class NearestPolicy:
    """FogFlow's rule: the nearest node (lowest RTT) that is not overloaded.

    Ties go to the lower tier (edge, then fog, then cloud). Demands claim
    nodes in (module, site) order; SLOs and cost play no part.

    Example:
        >>> NearestPolicy().rule
        'nearest node that is not overloaded'
    """

    name: str = "fogflow"

    @property
    def rule(self) -> str:
        """How it chooses."""
        return "nearest node that is not overloaded"

    @property
    def slo_aware(self) -> bool:
        """It is not."""
        return False

    def rank(self, problem: Problem) -> Ranking:
        """Rank by RTT, then tier; cap at each node's overload threshold."""
        allowed = problem.cand_valid
        safe = np.where(problem.cand_node >= 0, problem.cand_node, 0)
        cap = np.where(allowed, problem.node_max_util[safe], -1.0)
        return Ranking(
            allowed=allowed,
            cap=cap,
            cap_fallback=cap,
            primary=np.where(allowed, problem.cand_rtt, np.inf),
            secondary=problem.node_tier[safe].astype(np.float64),
            pinned=np.full(problem.n_demands, -1, dtype=np.int64),
            by_regret=False,
        )


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """Every route stays on its current node; routes with none stay unplaced.

    Example:
        >>> KeepPolicy().name
        'current'
    """

    name: str = "current"

    @property
    def rule(self) -> str:
        """How it chooses."""
        return "keep the current node"

    @property
    def slo_aware(self) -> bool:
        """It reports SLO misses but acts on none."""
        return True

    def rank(self, problem: Problem) -> Ranking:
        """Only the incumbent column is allowed, with no cap (predict, don't repair)."""
        cols = np.arange(problem.cand_node.shape[1])
        allowed = problem.cand_valid & (cols[None, :] == problem.incumbent_col[:, None])
        cap = np.where(allowed, 2.0, -1.0)
        return Ranking(
            allowed=allowed,
            cap=cap,
            cap_fallback=cap,
            primary=np.zeros(cap.shape),
            secondary=np.zeros(cap.shape),
            pinned=np.full(problem.n_demands, -1, dtype=np.int64),
            by_regret=False,
        )


OURS = CostPolicy()
"""Our policy: cheapest within SLO with room, then most headroom; hysteresis and dwell."""

CLOUD_ONLY = CostPolicy(name="cloud_only", tiers=frozenset({"cloud"}))
"""Baseline: everything in the cloud (cheapest cloud node within SLO with room)."""

EDGE_ONLY = CostPolicy(name="edge_only", tiers=frozenset({"edge"}))
"""Baseline: everything on the source's own edge device."""

FOGFLOW = NearestPolicy()
"""Baseline: FogFlow's rule, nearest node that is not overloaded."""

KEEP = KeepPolicy()
"""Not a planner: predicts the current placement under the given metrics."""

POLICIES: Mapping[str, Policy] = MappingProxyType(
    {p.name: p for p in (OURS, CLOUD_ONLY, EDGE_ONLY, FOGFLOW, KEEP)}
)
"""The shipped policies by name."""
