"""The compute backend seam: what the runner needs from Ray, as a Protocol.

The Ray implementation lives in :mod:`mesh.ray._backend` (the Ray adapter, the
only package that imports ``ray``) and :func:`mesh.runtime._connect.connect_backend`
picks it; unit tests use an in-memory fake behind the same Protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh.core._errors import UnsatisfiableError
from mesh.sdk._registered import RegisteredFunction
from mesh.sdk._specs import FunctionSpec

__all__ = [
    "SITE_LABEL",
    "TIER_LABEL",
    "BatchResult",
    "Call",
    "CallResult",
    "ComputeBackend",
    "NodeInfo",
    "TuneResult",
    "check_satisfiable",
]

#: Node label that carries a Ray node's tier.
TIER_LABEL = "mesh.tier"
#: Node label that carries a Ray node's site.
SITE_LABEL = "mesh.site"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One compute node as the backend reports it."""

    node_id: str
    alive: bool
    labels: Mapping[str, str]
    resources_total: Mapping[str, float]
    address: str = ""
    is_head: bool = False

    @property
    def tier(self) -> str | None:
        """The node's ``mesh.tier`` label, if it has one."""
        return self.labels.get(TIER_LABEL)

    @property
    def site(self) -> str | None:
        """The node's ``mesh.site`` label, if it has one."""
        return self.labels.get(SITE_LABEL)


@dataclass(frozen=True, slots=True)
class CallResult:
    """What a finished invocation returned, and where it ran."""

    value: Any
    node_id: str


@dataclass(frozen=True, slots=True)
class TuneResult:
    """The outcome of a tune function: the best trial by the declared metric."""

    metric: str
    mode: str
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_value(self) -> Any:
        """The best trial's value of the declared metric."""
        return self.best_metrics.get(self.metric)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of a batch function: where its output dataset was written."""

    output_path: str
    num_rows: int
    columns: list[str]


class Call(Protocol):
    """A submitted invocation."""

    def result(self, timeout_s: float | None = None) -> CallResult:
        """Wait for the outcome.

        Raises:
            RemoteFunctionError: the function raised on its node.
            FunctionTimeoutError: ``timeout_s`` passed; the work was cancelled.
            CancelledError: :meth:`cancel` was called.
            BackendError: the backend failed.
        """
        ...

    def cancel(self) -> None:
        """Ask the backend to stop the work; :meth:`result` then raises CancelledError."""
        ...

    def done(self) -> bool:
        """Whether the outcome is known without waiting."""
        ...


class ComputeBackend(Protocol):
    """Runs registered functions on the nodes of their tier."""

    def nodes(self, *, refresh: bool = False) -> list[NodeInfo]:
        """Live and dead nodes, possibly from a short cache unless ``refresh``."""
        ...

    def submit(self, fn: RegisteredFunction, kwargs: Mapping[str, Any], *, run_id: str) -> Call:
        """Start ``fn(**kwargs)`` on a node of its tier; never blocks on the work."""
        ...

    def close(self) -> None:
        """Release the backend's connections (and an embedded cluster it owns)."""
        ...


def _requested(spec: FunctionSpec) -> dict[str, object]:
    wanted: dict[str, object] = {"tier": spec.tier, "CPU": spec.resources.cpus}
    if spec.site:
        wanted["site"] = spec.site
    if spec.resources.gpus:
        wanted["GPU"] = spec.resources.gpus
    if spec.resources.memory_mb:
        wanted["memory_mb"] = spec.resources.memory_mb
    wanted.update(spec.resources.custom)
    return wanted


def _offer(live: list[NodeInfo]) -> list[Mapping[str, object]]:
    return [
        {
            "node": n.node_id[:8],
            "tier": n.tier or "-",
            **({"site": n.site} if n.site else {}),
            **{k: v for k, v in n.resources_total.items() if k in ("CPU", "GPU")},
        }
        for n in live
    ]


def check_satisfiable(spec: FunctionSpec, nodes: list[NodeInfo]) -> NodeInfo:
    """Return a live node that could run ``spec``, or explain why none can.

    Ray leaves work pending forever when no node fits; the mesh refuses it at
    once instead, naming what was asked for and what the nodes offer.

    Raises:
        UnsatisfiableError: no live node carries the tier/site labels or has
            the resources in total.
    """
    live = [n for n in nodes if n.alive]
    tiered = [n for n in live if n.tier == spec.tier]
    if not tiered:
        raise UnsatisfiableError(
            spec.name, _requested(spec), _offer(live), f"no live node has tier {spec.tier!r}"
        )
    if spec.site:
        tiered = [n for n in tiered if n.site == spec.site]
        if not tiered:
            raise UnsatisfiableError(
                spec.name,
                _requested(spec),
                _offer(live),
                f"no live {spec.tier} node has site {spec.site!r}",
            )
    needs: dict[str, float] = {"CPU": spec.resources.cpus, **spec.resources.custom}
    if spec.resources.gpus:
        needs["GPU"] = spec.resources.gpus
    if spec.resources.memory_mb:
        needs["memory"] = spec.resources.memory_mb * 1024 * 1024
    short: list[str] = []
    for node in tiered:
        lacking = [k for k, v in needs.items() if node.resources_total.get(k, 0.0) < v]
        if not lacking:
            return node
        short.extend(f"{k} {node.resources_total.get(k, 0.0):g} < {needs[k]:g}" for k in lacking)
    raise UnsatisfiableError(
        spec.name,
        _requested(spec),
        _offer(live),
        f"no {spec.tier} node has the resources asked for ({'; '.join(sorted(set(short)))})",
    )
