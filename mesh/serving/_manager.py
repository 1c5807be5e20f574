"""The serving manager: puts a module's replicas on nodes and keeps its route right.

Ray-agnostic. Replicas are started through a :class:`ReplicaLauncher` (the
Ray one, :class:`mesh.ray._replicas.RayReplicaLauncher`, pins each replica to
its tier with ``label_selector`` and lets Ray restart it), probed over their
own HTTP ``/stats`` (a :class:`ReplicaProbe`), and published in the
:class:`~mesh.serving._routes.RouteTable` the gateway reads. Unit tests use fakes
behind the same Protocols.

* :meth:`ServingManager.deploy` is make-before-break: the new version's
  replicas start and warm up, the route switches in one step (epoch + 1), the
  old endpoints drain (the gateway counts their requests out), then stop. If
  the new replicas cannot start, the old version keeps serving. Each switch
  is told to the :class:`PlacementRecorder` (:meth:`ServingManager.record_placements`)
  before the route changes: the record of where a module runs leads its route.
* :meth:`ServingManager.deploy_to_agent` puts a module on an edge agent (the
  agent downloads the signed artifact) and switches the route to it.
* A background loop (:meth:`tick`, in :mod:`mesh.serving._supervisor`)
  health-checks replicas apart from requests (a failed one leaves the route; a
  restarted one comes back with its new port; a dead one is replaced) and
  follows the module's autoscaling settings: ``ceil(in-flight /
  target_in_flight)`` replicas between ``min_replicas`` and ``max_replicas``,
  up quickly, down slowly, to zero only when ``min_replicas == 0`` (a request
  then wakes it). With ``standby=True`` it keeps a warm standby replica on
  another node and promotes it the moment the gateway finds a primary gone.

Errors::

    MeshError
    └── DeployError                a version could not be put in service (nothing changed)
        └── ReplicaFailedError     a replica died or failed to start

Example:
    >>> manager = ServingManager(routes, RayReplicaLauncher(), registry=registry)  # doctest: +SKIP
    >>> manager.start()                                                            # doctest: +SKIP
    >>> spec = app.modules["VehicleCounter"].spec                                  # doctest: +SKIP
    >>> manager.deploy(spec, "production", tier="fog")                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mesh.core._metrics import MetricsRegistry
from mesh.sdk._specs import COMPUTE_TIERS, ModuleSpec
from mesh.serving._autoscale import AutoscalePolicy, Autoscaler
from mesh.serving._contract import (
    AgentInstaller,
    DeployError,
    HttpProbe,
    ModelArtifact,
    ReplicaFailedError,
    ReplicaHandle,
    ReplicaLauncher,
    ReplicaProbe,
    ReplicaRequest,
    ReplicaStatus,
)
from mesh.serving._deployment import DeploymentView, PlacementRecorder
from mesh.serving._promotion import promotable_standby, promote
from mesh.serving._routes import AgentEndpoint, Endpoint, ModuleRoute, RouteTable
from mesh.serving._supervisor import (
    Deployment,
    Replica,
    ReplicaSupervisor,
    replica_id,
    wants_standby,
)

if TYPE_CHECKING:
    from mesh.models._registry import ModelRegistry, ModelVersion

__all__ = [
    "AgentInstaller",
    "DeployError",
    "DeploymentView",
    "HttpProbe",
    "ModelArtifact",
    "PhaseHook",
    "PlacementRecorder",
    "ReplicaFailedError",
    "ReplicaHandle",
    "ReplicaLauncher",
    "ReplicaProbe",
    "ReplicaRequest",
    "ReplicaStatus",
    "ServingManager",
    "wants_standby",
]

logger = logging.getLogger(__name__)

PhaseHook = Callable[[str], None]
"""Called with ``"ready"``, ``"switching"`` (before the route and its record change),
``"switched"``, ``"drained"`` and ``"removed"`` as a switch goes."""


def _phase(hook: PhaseHook | None, phase: str) -> None:
    if hook is not None:
        try:
            hook(phase)
        except Exception:  # a hook must not break a switch
            logger.exception("phase hook failed at %s", phase)


class ServingManager(ReplicaSupervisor):
    """Deploys module versions as replicas (or on agents) and keeps their routes right.

    Args:
        routes: the table the gateway reads.
        launcher: starts replicas (the Ray one in production).
        probe: reads replicas' ``/stats`` (default :class:`HttpProbe`).
        registry: resolves ``"production"``/``"v3"`` to artifacts in :meth:`deploy`.
        installer: puts modules on edge agents (for :meth:`deploy_to_agent`).
        metrics: where replica gauges and switch counters go.
        clock: monotonic seconds (injected in tests).
        period_s: the background loop's period.
        start_timeout_s: how long new replicas may take to serve.
        drain_timeout_s: how long old endpoints may take to finish their requests.
        unhealthy_after: failed health checks in a row before a replica leaves the route.
        autoscale_delays: overrides of :class:`AutoscalePolicy` delays (e.g. for tests).
        standby: keep a warm standby replica on another node for every module that
            is always on (``min_replicas >= 1``), so that the loss of a node costs no
            request (see :func:`wants_standby`).
    """

    def __init__(
        self,
        routes: RouteTable,
        launcher: ReplicaLauncher,
        *,
        probe: ReplicaProbe | None = None,
        registry: ModelRegistry | None = None,
        installer: AgentInstaller | None = None,
        metrics: MetricsRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        period_s: float = 0.5,
        start_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
        unhealthy_after: int = 3,
        autoscale_delays: dict[str, float] | None = None,
        standby: bool = False,
    ) -> None:
        """Nothing starts until :meth:`start` or :meth:`deploy`."""
        self.routes = routes
        self._launcher = launcher
        self._probe: ReplicaProbe = probe or HttpProbe()
        self._registry = registry
        self._installer = installer
        self._clock = clock
        self._period_s = period_s
        self._start_timeout_s = start_timeout_s
        self._drain_timeout_s = drain_timeout_s
        self._unhealthy_after = unhealthy_after
        self._delays = dict(autoscale_delays or {})
        self._standby = standby
        self._lost_nodes: dict[str, float] = {}
        self._deployments: dict[str, Deployment] = {}
        self._recorder: PlacementRecorder | None = None
        self._replacing: list[Callable[[str], object]] = []
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics = metrics or MetricsRegistry()
        metrics.gauge_callback(
            "mesh_replicas",
            "Replicas per module, version and state.",
            ("module", "version", "state"),
            self._replica_counts,
        )
        self._switches = metrics.counter(
            "mesh_route_switches_total",
            "Route switches (deploys, migrations, scaling).",
            ("module",),
        )
        self._epoch = metrics.gauge("mesh_route_epoch", "Current route epoch.", ("module",))
        self._lost = metrics.counter(
            "mesh_replicas_lost_total",
            "Replicas taken out of service as lost (their node or process gone).",
            ("module", "role"),
        )
        routes.on_change(self._route_changed)
        routes.on_demand(lambda _module: self._wake.set())
        routes.on_down(lambda _module, _endpoint: self._wake.set())  # a loss: act now

    # -- lifecycle

    def start(self) -> ServingManager:
        """Start the background health and autoscaling loop."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="mesh-serving", daemon=True)
            self._thread.start()
        return self

    def record_placements(self, recorder: PlacementRecorder) -> None:
        """Tell ``recorder`` where each module runs before its route switches (and on undeploy)."""
        self._recorder = recorder

    def on_replacing(self, hook: Callable[[str], object]) -> Callable[[], None]:
        """Call ``hook(module)`` after a redeploy's new replicas serve, before the old stop.

        Whatever still uses an old replica directly (a site's pipeline offloaded
        to it) moves to the new ones then, while the old still answers. Returns
        a function that removes the hook.
        """
        self._replacing.append(hook)

        def remove() -> None:
            if hook in self._replacing:
                self._replacing.remove(hook)

        return remove

    def close(self) -> None:
        """Stop the loop and every replica this manager started; routes are removed.

        The recorder is not told: what was recorded is served again after a restart.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        for module in list(self._deployments):
            self.undeploy(module, drain=False, forget=False)

    def __enter__(self) -> ServingManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop never dies: log and go on
                logger.exception("serving loop step failed")
            self._wake.wait(self._period_s)
            self._wake.clear()

    # -- deploying

    def _artifact(
        self, spec: ModuleSpec, version: str | ModelVersion | ModelArtifact
    ) -> ModelArtifact:
        if isinstance(version, ModelArtifact):
            return version
        if self._registry is None:
            raise DeployError(
                f"{spec.name}: pass a ModelArtifact, or give the manager a "
                "registry to resolve versions"
            )
        if isinstance(version, str):
            return ModelArtifact.from_registry(self._registry, spec.model, version)
        return ModelArtifact.from_version(
            version, self._registry.artifacts.read_bytes(version.sha256)
        )

    @staticmethod
    def _tier(spec: ModuleSpec, tier: str | None) -> str:
        if tier is None:
            tier = next((t for t in spec.tiers if t in COMPUTE_TIERS), None)
            if tier is None:
                raise DeployError(
                    f"{spec.name} runs only on {', '.join(spec.tiers)}; use "
                    "deploy_to_agent() for edge agents"
                )
        if tier not in COMPUTE_TIERS:
            raise DeployError(f"tier {tier!r} has no Ray nodes; use deploy_to_agent() for edge")
        if tier not in spec.tiers:
            raise DeployError(f"{spec.name} may run on {', '.join(spec.tiers)}, not {tier!r}")
        return tier

    def deploy(
        self,
        spec: ModuleSpec,
        version: str | ModelVersion | ModelArtifact = "production",
        *,
        tier: str | None = None,
        site: str | None = None,
        replicas: int | None = None,
        batching: str = "auto",
        on_phase: PhaseHook | None = None,
        node: str | None = None,
    ) -> ModuleRoute:
        """Serve ``version`` of the module on ``tier`` nodes, make-before-break.

        Args:
            spec: the module (name, model, tiers, resources, autoscaling).
            version: a registry reference (``"production"``, ``"v3"``), a
                registry version, or an artifact.
            tier: ``cloud`` or ``fog`` (default: the first compute tier the module allows).
            site: pin to nodes labelled with this ``mesh.site``.
            replicas: how many to start (default: as many as serve now, at least
                ``max(1, min_replicas)``).
            batching: the replicas' dynamic batching: ``auto``, ``on`` or ``off``.
            on_phase: told ``ready``, ``switched``, ``drained``, ``removed`` as they happen.
            node: pin the replicas to this Ray node (its id), e.g. the placement
                engine's choice; without it Ray may pick a node it still thinks alive.
                The module's warm standby, if it serves there, is promoted instead
                (:mod:`mesh.serving._promotion`).

        Returns:
            The new route (its epoch is one more than before).

        Raises:
            UnsatisfiableError: no live node can hold a replica, or ``node`` lost a
                replica lately (:meth:`lost_nodes`).
            DeployError: the replicas did not start; the previous version keeps serving.
        """
        tier = self._tier(spec, tier)
        lost = self._refuse_lost(spec.name, tier, node)
        artifact = self._artifact(spec, version)
        lock = self._module_lock(spec.name)
        with lock:
            old = self._deployments.get(spec.name)
            serving = len(old.serving()) if old is not None and old.agent is None else 0
            count = (
                replicas
                if replicas is not None
                else min(spec.max_replicas, max(1, spec.min_replicas, serving))
            )
            if count < 1:
                raise DeployError(f"{spec.name}: replicas must be at least 1, got {count}")
            started = time.monotonic()
            warm = (
                promotable_standby(
                    old, artifact, tier, node, batching, probe=self._probe, down=self.routes.down()
                )
                if count == 1
                else None
            )
            if warm is not None and old is not None:
                fresh, old = promote(old, warm, tier, site)  # the loop starts a new standby
            else:
                fresh = self._start_with_spare(
                    spec, artifact, tier, site, count, batching, node, lost, started
                )
            _phase(on_phase, "ready")
            new = Deployment(
                spec,
                artifact,
                tier,
                site,
                fresh,
                lock=lock,
                batching=batching,
                autoscaler=Autoscaler(AutoscalePolicy.of(spec, **self._delays)),
                node=node,
                wants_standby=self._standby and wants_standby(spec),
            )
            route = self._switch(
                new,
                old,
                f"{count} {tier} replica(s) ready after {time.monotonic() - started:.1f} s"
                + (" (its warm standby, promoted)" if warm is not None else ""),
                on_phase,
            )
        if warm is not None:
            self._wake.set()  # its new standby: now, not in a period
        return route

    def deploy_to_agent(
        self,
        spec: ModuleSpec,
        agent_id: str,
        version: str | ModelVersion | ModelArtifact = "production",
        *,
        timeout_s: float = 60.0,
        on_phase: PhaseHook | None = None,
    ) -> ModuleRoute:
        """Serve the module on an edge agent and switch its route there, make-before-break.

        ``on_phase`` is told ``ready``, ``switched``, ``drained``, ``removed`` as they happen.

        Raises:
            DeployError: no installer, or the agent did not install it (nothing changed).
        """
        if self._installer is None:
            raise DeployError("the serving manager has no agent installer (edge bus)")
        if "edge" not in spec.tiers:
            raise DeployError(f"{spec.name} may run on {', '.join(spec.tiers)}, not on edge")
        artifact = self._artifact(spec, version)
        lock = self._module_lock(spec.name)
        with lock:
            old = self._deployments.get(spec.name)
            self._installer.install(agent_id, spec.name, artifact, timeout_s)
            _phase(on_phase, "ready")
            new = Deployment(spec, artifact, "edge", None, agent=agent_id, lock=lock)
            route = self._switch(new, old, f"agent {agent_id}", on_phase)
        return route

    def _module_lock(self, module: str) -> threading.Lock:
        """The lock that serialises deploys and reconcile steps of one module."""
        with self._lock:
            lock = self._locks.get(module)
            if lock is None:
                lock = self._locks[module] = threading.Lock()
            return lock

    def _start_replicas(
        self,
        spec: ModuleSpec,
        artifact: ModelArtifact,
        tier: str,
        site: str | None,
        count: int,
        batching: str,
        node: str | None = None,
        avoid: frozenset[str] = frozenset(),
        then: Callable[[], object] = lambda: None,  # once they are asked for, before the wait
    ) -> dict[str, Replica]:
        started: dict[str, Replica] = {}
        try:
            for _ in range(count):
                request = ReplicaRequest(
                    spec.name,
                    artifact,
                    tier,
                    site,
                    spec.resources,
                    replica_id(spec.name, artifact.version),
                    batching,
                    node=node,
                    avoid_nodes=tuple(sorted(avoid)),
                )
                handle = self._launcher.launch(request)
                started[handle.replica_id] = Replica(handle, artifact.version)
            then()
            deadline = time.monotonic() + self._start_timeout_s
            while any(r.endpoint is None for r in started.values()):
                for replica in started.values():
                    if replica.endpoint is None:
                        replica.endpoint = replica.handle.poll()
                if time.monotonic() > deadline:
                    waiting = [k for k, r in started.items() if r.endpoint is None]
                    raise DeployError(
                        f"{spec.name} {artifact.version}: {len(waiting)} of {count} replicas "
                        f"on {tier} did not serve within {self._start_timeout_s:g} s "
                        f"({', '.join(waiting)}); the previous version keeps serving"
                    )
                time.sleep(0.02)
        except BaseException:
            for replica in started.values():
                replica.handle.stop()
            raise
        for replica in started.values():
            replica.state, replica.tier, replica.site = "serving", tier, site
        return started

    def _switch(
        self,
        new: Deployment,
        old: Deployment | None,
        where: str,
        on_phase: PhaseHook | None = None,
    ) -> ModuleRoute:
        """Record ``new``, publish its endpoints in one step, then drain and stop ``old``'s."""
        spec = new.spec
        _phase(on_phase, "switching")
        self._record(new)
        with self._lock:
            self._deployments[spec.name] = new
        route = self.routes.set(
            spec.name,
            new.artifact.version,
            new.endpoints(),
            signature=new.artifact.signature,
            tier=new.tier,
            scale_from_zero=spec.min_replicas == 0 and new.agent is None,
            slo_ms=spec.qos.p95_latency_ms,
            standby=new.standby_endpoints(),
        )
        logger.info(
            "%s %s serves on %s (route epoch %d)",
            spec.name,
            new.artifact.version,
            where,
            route.epoch,
        )
        _phase(on_phase, "switched")
        if old is not None:
            # An old agent stays installed (a local fallback for its pipelines); its
            # requests through the gateway finish there.
            agents: list[Endpoint] = (
                [AgentEndpoint(old.agent, old.artifact.version)]
                if old.agent is not None and old.agent != new.agent
                else []
            )
            if old.replicas:
                self._before_stopping(spec.name)
            self._drain_and_stop(spec.name, list(old.replicas.values()), agents, on_phase)
        else:
            _phase(on_phase, "drained")
            _phase(on_phase, "removed")
        return route

    def _before_stopping(self, module: str) -> None:
        """The :meth:`on_replacing` hooks, each on its own (one failing stops no other)."""
        for hook in list(self._replacing):
            try:
                hook(module)
            except Exception:
                logger.exception("%s: a hook before the old replicas stop failed", module)

    def _drain_and_stop(
        self,
        module: str,
        replicas: list[Replica],
        agents: list[Endpoint] | None = None,
        on_phase: PhaseHook | None = None,
    ) -> None:
        endpoints: list[Endpoint] = [r.endpoint for r in replicas if r.endpoint is not None]
        endpoints += agents or []
        if endpoints and not self.routes.wait_drained(endpoints, self._drain_timeout_s):
            logger.warning(
                "%s: %d old endpoint(s) still had requests after %.0f s; stopping",
                module,
                len(endpoints),
                self._drain_timeout_s,
            )
        deadline = time.monotonic() + self._drain_timeout_s
        for replica in replicas:
            # Other clients (agents offloading) may still be served: wait for the replica.
            while replica.endpoint is not None and time.monotonic() < deadline:
                stats = self._probe.stats(replica.endpoint, 1.0)
                if stats is None or not stats.get("in_flight"):
                    break
                time.sleep(0.02)
        _phase(on_phase, "drained")
        for replica in replicas:
            replica.handle.stop()
            logger.info(
                "%s: replica %s (%s) stopped", module, replica.handle.replica_id, replica.version
            )
        _phase(on_phase, "removed")

    def undeploy(self, module: str, *, drain: bool = True, forget: bool = True) -> None:
        """Stop routing ``module`` and stop its replicas (after they drain, unless ``drain``).

        With ``forget``, the recorder (:meth:`record_placements`) forgets it first.
        """
        if forget and self._recorder is not None:
            try:
                self._recorder.forget_placement(module)
            except Exception:  # the record is the restart's: say so, undeploy all the same
                logger.exception("%s: could not forget its placement record", module)
        with self._lock:
            deployment = self._deployments.pop(module, None)
        self.routes.remove(module)
        if deployment is None:
            return
        with deployment.lock:
            replicas = list(deployment.replicas.values())
            if drain:
                self._drain_and_stop(module, replicas)
            else:
                for replica in replicas:
                    replica.handle.stop()
        logger.info("%s undeployed", module)

    # -- observing

    def deployments(self) -> list[DeploymentView]:
        """What serves each module now, by module."""
        with self._lock:
            deployments = [self._deployments[m] for m in sorted(self._deployments)]
        return [d.view() for d in deployments]

    def status(self, module: str | None = None) -> list[ReplicaStatus]:
        """Replicas (and agents) per module, with their last stats."""
        with self._lock:
            deployments = [
                d for m, d in sorted(self._deployments.items()) if module is None or m == module
            ]
        return [status for d in deployments for status in d.statuses()]

    def _replica_counts(self) -> Iterable[tuple[tuple[str, ...], float]]:
        counts: dict[tuple[str, ...], float] = {}
        with self._lock:
            deployments = list(self._deployments.values())
        for d in deployments:
            for r in list(d.replicas.values()):
                key = (d.spec.name, r.version, r.status_state)
                counts[key] = counts.get(key, 0) + 1
        return counts.items()

    def _route_changed(self, old: ModuleRoute | None, new: ModuleRoute | None) -> None:
        route = new or old
        assert route is not None
        self._switches.labels(route.module).inc()
        self._epoch.labels(route.module).set(new.epoch if new else 0)
