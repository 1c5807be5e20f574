"""A candidate version's replica beside production's, taking a share of the module's requests.

:class:`ReplicaCanary` is the serving side of a canary on cloud/fog replicas
(the canary service, :mod:`mesh.runtime._canary`, decides when):

* :meth:`ReplicaCanary.start` launches one replica of the candidate on the
  tier (and site) production serves on, waits until it serves (warm), and only
  then adds its endpoint to the module's route with
  :meth:`~mesh.serving._routes.RouteTable.set_canary`: make-before-break, the
  gateway sends it ``share`` of the requests from the next one on;
* :meth:`ReplicaCanary.stop` takes it out of the route, waits until its
  requests drained (:meth:`~mesh.serving._routes.RouteTable.wait_drained`,
  then the replica's own ``/stats`` for clients other than the gateway) and
  stops it; production's replicas are not touched;
* :meth:`ReplicaCanary.tally` reads what the gateway already records per
  module, version and node (``mesh_inference_latency_seconds`` and
  ``mesh_inference_requests_total`` of its :class:`~mesh.core._metrics.MetricsRegistry`):
  requests, failed ones (5xx) and the latency histogram of one version, so
  windows are differences of two tallies (:meth:`VersionTally.minus`).

The candidate replica is not supervised by the serving manager (it is not
part of the module's deployment): if it stops answering, the gateway marks it
down (:meth:`~mesh.serving._routes.RouteTable.mark_down`), every request goes
to production, and :meth:`ReplicaCanary.is_down` tells the canary service.

Example:
    >>> trials = ReplicaCanary(manager.routes, launcher, metrics=metrics)    # doctest: +SKIP
    >>> candidate = trials.start(spec, v2, tier="fog", site=None, share=0.25)  # doctest: +SKIP
    >>> trials.tally("counter", candidate.version).requests                 # doctest: +SKIP
    12
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.core._metrics import HistogramSnapshot, MetricsRegistry
from mesh.sdk._specs import ModuleSpec
from mesh.serving._contract import (
    DeployError,
    HttpProbe,
    ModelArtifact,
    ReplicaFailedError,
    ReplicaHandle,
    ReplicaLauncher,
    ReplicaProbe,
    ReplicaRequest,
)
from mesh.serving._deployment import replica_id
from mesh.serving._routes import ReplicaEndpoint, RouteTable

__all__ = ["CandidateReplica", "ReplicaCanary", "VersionTally"]

logger = logging.getLogger(__name__)

#: The gateway's metrics read by :meth:`ReplicaCanary.tally` (:mod:`mesh.serving._gateway`).
_LATENCY = ("mesh_inference_latency_seconds", "Inference latency at the gateway.")
_REQUESTS = ("mesh_inference_requests_total", "Inference requests answered, by status code.")
_LABELS = ("module", "version", "node")


@dataclass(frozen=True, slots=True)
class CandidateReplica:
    """A candidate's replica in a module's route, beside production's.

    Attributes:
        module: the module.
        version: the candidate version it serves.
        endpoint: its socket (in the route's ``canary``).
        tier: where it serves (production's tier).
        site: production's site pin, if any.
        share: the share of the module's requests it takes.
        handle: its replica handle (stopped by :meth:`ReplicaCanary.stop`).
    """

    module: str
    version: str
    endpoint: ReplicaEndpoint
    tier: str
    site: str | None
    share: float
    handle: ReplicaHandle = field(repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready form (lifecycle steps)."""
        return {
            "replica": self.endpoint.replica_id,
            "node": self.endpoint.node_id,
            "tier": self.tier,
            "site": self.site,
            "share": self.share,
        }


@dataclass(frozen=True, slots=True)
class VersionTally:
    """What the gateway counted for one version of a module so far (or over a window).

    Attributes:
        requests: requests answered (any status).
        failures: of those, answered 5xx (the mesh failed them or they timed out).
        latency: the latency histogram of the answered ones (seconds).
    """

    requests: int
    failures: int
    latency: HistogramSnapshot

    def minus(self, earlier: VersionTally) -> VersionTally:
        """What was counted since ``earlier``."""
        latency = (
            self.latency.minus(earlier.latency)
            if self.latency.bounds == earlier.latency.bounds
            else self.latency
        )
        return VersionTally(
            self.requests - earlier.requests, self.failures - earlier.failures, latency
        )

    @property
    def p95_ms(self) -> float | None:
        """The p95 latency in ms (bucket estimate); None without requests."""
        q = self.latency.quantile(0.95)
        return None if q is None else q * 1000.0


class ReplicaCanary:
    """Starts a candidate's replica beside production's, weighs it into the route, stops it.

    Args:
        routes: the route table the gateway reads (the serving manager's).
        launcher: starts replicas (the Ray one; the serving manager's own).
        metrics: the registry the gateway records in (for :meth:`tally`).
        probe: reads a replica's ``/stats`` (in flight at the stop).
        start_timeout_s: how long the candidate replica may take to serve.
        drain_timeout_s: how long its requests may take to finish at the stop.
    """

    def __init__(
        self,
        routes: RouteTable,
        launcher: ReplicaLauncher,
        *,
        metrics: MetricsRegistry | None = None,
        probe: ReplicaProbe | None = None,
        start_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
    ) -> None:
        """Nothing starts until :meth:`start`."""
        self.routes = routes
        self._launcher = launcher
        self._metrics = metrics or MetricsRegistry()
        self._probe: ReplicaProbe = probe or HttpProbe()
        self._start_timeout_s = start_timeout_s
        self._drain_timeout_s = drain_timeout_s

    def start(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        *,
        tier: str,
        site: str | None,
        share: float,
        node: str | None = None,
    ) -> CandidateReplica:
        """Serve ``artifact`` on one more replica and send it ``share`` of the requests.

        The route takes it only once it serves (make-before-break).

        Raises:
            ValueError: ``share`` is not in (0, 1).
            DeployError: the module has no route, or the replica did not serve
                within ``start_timeout_s`` (it is stopped; the route is unchanged).
            UnsatisfiableError: no live node of ``tier`` can hold it.
        """
        if not 0.0 < share < 1.0:
            raise ValueError(f"{spec.name}: a canary share must be in (0, 1), got {share}")
        if self.routes.get(spec.name) is None:
            raise DeployError(f"{spec.name} has no route: nothing to try a candidate beside")
        request = ReplicaRequest(
            spec.name,
            artifact,
            tier,
            site,
            spec.resources,
            replica_id(spec.name, artifact.version),
            node=node,
        )
        handle = self._launcher.launch(request)
        try:
            endpoint = self._wait_serving(handle, spec.name, artifact.version)
            candidate = CandidateReplica(
                spec.name, artifact.version, endpoint, tier, site, share, handle
            )
            if self.routes.set_canary(spec.name, [endpoint], share) is None:
                raise DeployError(f"{spec.name} lost its route while its candidate started")
        except BaseException:
            handle.stop()
            raise
        logger.info(
            "%s %s: candidate replica %s serves %.0f%% of requests beside production",
            spec.name,
            artifact.version,
            endpoint.replica_id,
            share * 100,
        )
        return candidate

    def _wait_serving(self, handle: ReplicaHandle, module: str, version: str) -> ReplicaEndpoint:
        deadline = time.monotonic() + self._start_timeout_s
        while True:  # bounded by the deadline
            try:
                endpoint = handle.poll()
            except ReplicaFailedError as exc:
                raise DeployError(f"{module} {version}: candidate replica failed: {exc}") from exc
            if endpoint is not None:
                return endpoint
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{module} {version}: candidate replica {handle.replica_id} did not "
                    f"serve within {self._start_timeout_s:g} s"
                )
            time.sleep(0.05)

    def stop(self, candidate: CandidateReplica) -> bool:
        """Out of the route, drained, stopped; returns whether it drained in time.

        Production's endpoints are not touched. Idempotent.
        """
        route = self.routes.get(candidate.module)
        if route is not None and candidate.endpoint in route.canary:
            left = [e for e in route.canary if e != candidate.endpoint]
            self.routes.set_canary(candidate.module, left, route.canary_share if left else 0.0)
        drained = self.routes.wait_drained([candidate.endpoint], self._drain_timeout_s)
        deadline = time.monotonic() + self._drain_timeout_s
        while drained and time.monotonic() < deadline:  # agents' offloads, say
            stats = self._probe.stats(candidate.endpoint, 1.0)
            if stats is None or not stats.get("in_flight"):
                break
            time.sleep(0.02)
        candidate.handle.stop()
        logger.info(
            "%s %s: candidate replica %s %s and stopped",
            candidate.module,
            candidate.version,
            candidate.endpoint.replica_id,
            "drained" if drained else "not drained in time",
        )
        return drained

    def is_down(self, candidate: CandidateReplica) -> bool:
        """Whether the gateway marked the candidate replica down (it refused or reset)."""
        return self.routes.is_down(candidate.endpoint)

    def tally(self, module: str, version: str, *, skip_nodes: Iterable[str] = ()) -> VersionTally:
        """What the gateway counted for ``version`` of ``module`` so far, on every node.

        ``skip_nodes``: nodes left out (edge agents, whose figures come from their
        heartbeats).
        """
        skip = frozenset(skip_nodes)
        latency = self._metrics.histogram(_LATENCY[0], _LATENCY[1], _LABELS)
        counter = self._metrics.counter(_REQUESTS[0], _REQUESTS[1], (*_LABELS, "code"))

        def ours(labels: dict[str, str]) -> bool:
            return (
                labels.get("module") == module
                and labels.get("version") == version
                and labels.get("node") not in skip
            )

        cumulative: dict[float, float] = {}
        total = 0.0
        for family in latency.collect():
            for sample in family.samples:
                if not ours(sample.labels):
                    continue
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    cumulative[le] = cumulative.get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
        requests = failures = 0
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and ours(sample.labels):
                    requests += int(sample.value)
                    if sample.labels.get("code", "").startswith("5"):
                        failures += int(sample.value)
        return VersionTally(requests, failures, _snapshot(cumulative, total))


def _snapshot(cumulative: dict[float, float], total: float) -> HistogramSnapshot:
    """Per-bucket counts from cumulative ones summed over label sets (``le`` -> count)."""
    bounds = tuple(sorted(le for le in cumulative if not math.isinf(le)))
    running = [int(cumulative[le]) for le in bounds] + [int(cumulative.get(math.inf, 0.0))]
    counts = [c - p for c, p in zip(running, [0, *running[:-1]], strict=True)]
    return HistogramSnapshot(bounds, counts, total)
