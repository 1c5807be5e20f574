"""Installing modules on edge agents: the serving manager's :class:`AgentInstaller`.

An install stores the artifact (content-addressed, where the artifact endpoint
serves it), publishes the agent's desired state with the module (a pre-signed
download URL, the sha256 and the Ed25519 signature over name, version and
sha256) under a version newer than any the agent holds, and waits until the
agent's observed state lists the module at that version. The agent downloads,
verifies and loads it; a failure comes back in the observed state and is raised.
An install of what the agent serves already (the same version and sha256 kept
here and reported installed, no error) publishes nothing: each retained rewrite
costs the broker a save and the agent a reconcile, for a fleet-wide rollout too.

This installer keeps each agent's modules and publishes them all in each
desired state (pipelines are not touched here). :meth:`EdgeInstaller.set_sampling`
sets a module's sampling policy (its agents upload pipeline inputs for retraining)
on every entry of it, those published from then on included;
:meth:`EdgeInstaller.set_drift_stats` likewise turns on the per-inference drift
summaries of the modules the drift service tracks (off for the rest).

:meth:`EdgeInstaller.set_route` switches where an agent's pipelines run a
module (make-before-break, DESIGN section 6): the same modules are published
with that module's route changed and its route epoch + 1, and it returns once
the agent reports the new epoch. The agent applies a route to the next
pipeline input: one in flight finishes where it started, and a failed offload
is retried once on the other side. A module with no artifact on the agent is
remote-only (its route offloads). The target of an offload route is a node
that answers ``{p}/modules/{module}/infer/{target}``: an agent id, or a replica
id (replicas started with MQTT settings answer there; :func:`offload_target`).

A ``remote`` route hands the pipeline's source to the replica as well
(:mod:`mesh.edge._handover`): the replica is given a lease on the source
and listens before the agent is switched, and both switches carry the same
split time, so every frame runs once, on one side or the other.

Example:
    >>> installer = EdgeInstaller(edge, store=store, signer=signer,
    ...                           url_signer=url_signer, base_url=server.url)  # doctest: +SKIP
    >>> manager = ServingManager(routes, launcher, installer=installer)      # doctest: +SKIP
    >>> target = offload_target(manager.routes.get("counter").endpoints[0])  # doctest: +SKIP
    >>> installer.set_route("cam-07", "counter", "offload", target, 10.0)    # doctest: +SKIP
    3
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

from edge_agent.protocol import DesiredState, ModuleSpec, ObservedState, Route, SamplingPolicy
from mesh.core._errors import MeshError
from mesh.edge._artifact_api import UrlSigner, signed_module_spec
from mesh.edge._bus import EdgeBus, EdgeBusError
from mesh.edge._handover import SourceHandover
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.serving._leases import Lease, PipelineSource
from mesh.serving._manager import DeployError, ModelArtifact
from mesh.serving._routes import AgentEndpoint, Endpoint

# PipelineSource is defined in mesh.serving._leases; still exported here for its old importers.
__all__ = ["EdgeInstaller", "PipelineSource", "offload_target"]


#: The version a remote-only module entry carries when none is given.
REMOTE_VERSION = "remote"


def offload_target(endpoint: Endpoint) -> str:
    """The node id an agent's offload route names to reach ``endpoint``.

    A replica (started with MQTT settings) answers on its replica id; an agent on its id.

    Example:
        >>> from mesh.serving._routes import ReplicaEndpoint
        >>> offload_target(ReplicaEndpoint("counter-v1-3f2a1b", "n1", "10.0.0.5", 8000, "v1"))
        'counter-v1-3f2a1b'
    """
    if isinstance(endpoint, AgentEndpoint):
        return endpoint.agent_id
    return endpoint.replica_id


logger = logging.getLogger(__name__)


class EdgeInstaller:
    """Puts modules on agents through the edge bus.

    Args:
        edge: the connected edge bus.
        store: the artifact store the artifact endpoint serves.
        signer: the control plane's artifact-signing key.
        url_signer: signs the agents' download URLs.
        base_url: the artifact endpoint as agents reach it.
        module_options: extra fields of each module entry (threads, max_batch, ...).
        handover: the replicas' source leases (default: one on ``edge``, made on
            first use by a ``remote`` route).
    """

    def __init__(
        self,
        edge: EdgeBus,
        *,
        store: ArtifactStore,
        signer: ArtifactSigner,
        url_signer: UrlSigner,
        base_url: str,
        module_options: dict[str, Any] | None = None,
        handover: SourceHandover | None = None,
    ) -> None:
        """Keep the agents' module lists in memory."""
        self._edge = edge
        self._store = store
        self._signer = signer
        self._url_signer = url_signer
        self._base_url = base_url
        self._options = dict(module_options or {})
        self._modules: dict[str, dict[str, ModuleSpec]] = {}
        self._versions: dict[str, int] = {}
        self._epochs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        # One desired-state change per agent at a time: each starts from the last one kept.
        self._agent_locks: dict[str, threading.Lock] = {}
        self._handover = handover
        # (agent, module) -> the replica holding its source, and the source.
        self._remote: dict[tuple[str, str], tuple[str, PipelineSource]] = {}
        self._sampling: dict[str, SamplingPolicy] = {}
        self._drift_stats: set[str] = set()  # modules whose agents summarise inferences

    @property
    def handover(self) -> SourceHandover:
        """The replicas' source leases (started on first use)."""
        with self._lock:
            if self._handover is None:
                self._handover = SourceHandover(self._edge, self._edge.prefix)
            return self._handover

    def close(self) -> None:
        """Stop listening for the replicas' lease acknowledgements."""
        with self._lock:
            handover, self._handover = self._handover, None
        if handover is not None:
            handover.close()

    def _next_version(self, agent_id: str) -> int:
        view = self._edge.agent(agent_id)
        held = 0
        if view is not None:
            held = max(
                view.observed.version if view.observed is not None else 0, view.desired_version or 0
            )
        version = max(self._versions.get(agent_id, 0), held) + 1
        self._versions[agent_id] = version
        return version

    def _agent_lock(self, agent_id: str) -> threading.Lock:
        with self._lock:
            return self._agent_locks.setdefault(agent_id, threading.Lock())

    def _publish_and_wait(
        self, agent_id: str, modules: dict[str, ModuleSpec], timeout_s: float, what: str
    ) -> tuple[int, ObservedState]:
        with self._lock:
            version = self._next_version(agent_id)
        desired = DesiredState(agent=agent_id, version=version, modules=list(modules.values()))
        try:
            self._edge.publish_desired(agent_id, desired)
            observed = self._edge.wait_for_observed(agent_id, version, timeout_s=timeout_s)
        except EdgeBusError as exc:
            raise DeployError(f"{what} on agent {agent_id}: {exc}") from exc
        return version, observed

    def install(
        self, agent_id: str, module: str, artifact: ModelArtifact, timeout_s: float
    ) -> None:
        """Install ``artifact`` as ``module`` on ``agent_id`` and wait until it serves it.

        The module keeps the route it had on the agent (see :meth:`set_route`).

        Raises:
            DeployError: the agent reported an error, or did not answer in time.
        """
        info = self._store.put_bytes(artifact.data)
        if info.sha256 != artifact.sha256:
            raise DeployError(
                f"{module} {artifact.version}: the bytes have sha256 "
                f"{info.sha256}, not {artifact.sha256}"
            )
        with self._agent_lock(agent_id):
            with self._lock:
                modules = dict(self._modules.get(agent_id, {}))
            previous = modules.get(module)
            if _unchanged(
                self._edge,
                agent_id,
                previous,
                artifact,
                self._sampling.get(module),
                module in self._drift_stats,
            ):
                logger.info(
                    "agent %s serves %s %s already: desired state not rewritten",
                    agent_id,
                    module,
                    artifact.version,
                )
                return
            entry = signed_module_spec(
                module,
                artifact.version,
                info,
                agent_id=agent_id,
                base_url=self._base_url,
                signer=self._signer,
                url_signer=self._url_signer,
                route=previous.route if previous is not None else None,
                **self._options,
            )
            modules[module] = entry.model_copy(
                update={
                    "sampling": self._sampling.get(module),
                    "drift_stats": module in self._drift_stats,
                }
            )
            version, observed = self._publish_and_wait(
                agent_id, modules, timeout_s, f"{module} {artifact.version}"
            )
            installed = {(m.name, m.version) for m in observed.installed}
            if (module, artifact.version) not in installed:
                raise DeployError(
                    f"agent {agent_id} did not install {module} {artifact.version} "
                    f"(desired version {version}): {_errors(observed, module)}"
                )
            with self._lock:
                self._modules[agent_id] = modules
        logger.info(
            "agent %s serves %s %s (desired version %d)",
            agent_id,
            module,
            artifact.version,
            version,
        )

    def set_route(
        self,
        agent_id: str,
        module: str,
        route_mode: Literal["local", "offload", "remote"],
        target: str | None,
        timeout_s: float,
        *,
        version: str | None = None,
        route_timeout_ms: int | None = None,
        fallback_local: bool | None = None,
        source: PipelineSource | None = None,
    ) -> int:
        """Switch where ``agent_id``'s pipelines run ``module``; returns the new route epoch.

        The agent's modules are published again with this one's route changed and
        its route epoch one past the last (this installer's or the agent's, if
        higher); the call returns once the agent reports that epoch. A module the
        agent does not hold becomes a remote-only entry (``route_mode`` must then
        be ``offload``), named ``version`` (default ``"remote"``).

        Args:
            agent_id: the agent.
            module: the module its pipelines feed.
            route_mode: ``"local"`` (its own ONNX Runtime), ``"offload"``, or
                ``"remote"`` (the replica ``target`` takes the source too).
            target: for ``offload``, the replica answering the agent's offload
                requests (its id, see :func:`offload_target`; another agent cannot
                be one: agents take inference requests only from the control
                plane); for ``remote``, a replica id.
            timeout_s: how long to wait for the agent.
            version: the version of a new remote-only entry.
            route_timeout_ms: how long the agent waits for an offloaded answer
                (default: the route's current value).
            fallback_local: whether a failed offload runs locally when the module is
                installed (default: the route's current value).
            source: the pipeline's source, for ``remote``.

        Raises:
            DeployError: a route that cannot be (offload without a target, local for
                a remote-only module, remote without a source), the replica did
                not take the source, or the agent did not report the new epoch
                in time or reported an error; this installer then keeps the route
                it had (a source already handed over stays with the replica: the
                agent follows the retained desired state when it can).

        Example:
            >>> installer.set_route("cam-07", "counter", "offload",
            ...                     "counter-v1-3f2a1b", timeout_s=10)  # doctest: +SKIP
            1
        """
        with self._agent_lock(agent_id):
            with self._lock:
                modules = dict(self._modules.get(agent_id, {}))
                known = self._epochs.get((agent_id, module), 0)
            current = modules.get(module)
            base = current.route if current is not None else Route()
            epoch = max(known, base.epoch, _observed_epoch(self._edge, agent_id, module)) + 1
            held = self._remote.get((agent_id, module))
            split = self.handover.split_time() if route_mode == "remote" or held else None
            changes: dict[str, Any] = {
                "mode": route_mode,
                "target": target if route_mode != "local" else None,
                "epoch": epoch,
                "since_ts": split,
            }
            if route_timeout_ms is not None:
                changes["timeout_ms"] = route_timeout_ms
            if fallback_local is not None:
                changes["fallback_local"] = fallback_local
            try:
                route = Route.model_validate({**base.model_dump(), **changes})
                if current is not None:
                    entry = ModuleSpec.model_validate({**current.model_dump(), "route": route})
                else:
                    entry = ModuleSpec(
                        name=module,
                        version=version or REMOTE_VERSION,
                        route=route,
                        sampling=self._sampling.get(module),
                        drift_stats=module in self._drift_stats,
                    )
            except ValueError as exc:  # pydantic's ValidationError, with the field at fault
                raise DeployError(
                    f"route of {module} on agent {agent_id} cannot be {route_mode}"
                    f"{f' to {target}' if target else ''}: {exc}"
                ) from exc
            modules[module] = entry
            where = f"{route_mode}{f' to {target}' if route_mode != 'local' else ''}"
            if route_mode == "remote":
                assert target is not None and split is not None  # the route validated
                split = self._hand_over(agent_id, module, target, source, split, held, timeout_s)
                route = route.model_copy(update={"since_ts": split})
                modules[module] = entry.model_copy(update={"route": route})
            try:
                version_sent, observed = self._publish_and_wait(
                    agent_id, modules, timeout_s, f"route of {module} ({where}, epoch {epoch})"
                )
            finally:
                stays = route_mode == "remote" and held is not None and held[0] == target
                if held is not None and split is not None and not stays:
                    # The agent's desired state (retained) has the new route: whenever
                    # it follows, frames from the split on are its, not the replica's.
                    replica, old = held
                    self.handover.release(module, replica, old.site, old.stream, split)
                    if self._remote.get((agent_id, module)) == held:
                        del self._remote[(agent_id, module)]
            reported = next((m for m in observed.installed if m.name == module), None)
            if reported is None or reported.route_epoch < epoch:
                got = "nothing" if reported is None else f"epoch {reported.route_epoch}"
                raise DeployError(
                    f"agent {agent_id} did not switch {module} to {where} (route epoch "
                    f"{epoch}, desired version {version_sent}; it reports {got}): "
                    f"{_errors(observed, module, 'no error reported')}"
                )
            with self._lock:
                self._modules[agent_id] = modules
                self._epochs[(agent_id, module)] = epoch
        logger.info(
            "agent %s runs %s %s (route epoch %d, desired version %d)",
            agent_id,
            module,
            where,
            epoch,
            version_sent,
        )
        return epoch

    def set_sampling(self, module: str, policy: SamplingPolicy | None) -> list[str]:
        """Set ``module``'s sampling policy on every agent holding it (None: stop sampling).

        Each agent whose entry changes gets its desired state again (a version
        newer, nothing else changed: the agent reloads nothing); installs and
        routes from now on carry the policy too. Does not wait for the agents
        (the desired state is retained; an agent applies it when it can).

        Returns:
            The agents whose desired state was published, sorted.
        """
        with self._lock:
            if policy is None:
                self._sampling.pop(module, None)
            else:
                self._sampling[module] = policy
        published = self._republish(module, "sampling", policy)
        logger.info(
            "sampling of %s %s on %d agent(s)", module, "set" if policy else "off", len(published)
        )
        return published

    def set_drift_stats(self, module: str, on: bool) -> list[str]:
        """Have every agent holding ``module`` summarise its inferences for drift (or stop).

        What the drift service asks for the modules whose check reads inputs or
        outputs (a summary costs an inference ~20 us, so the rest skip it). As
        :meth:`set_sampling`: a newer desired state for each agent whose entry
        changes (nothing reloads), installs and routes from now on carry it, and
        nothing waits for the agents.

        Returns:
            The agents whose desired state was published, sorted.
        """
        with self._lock:
            if on:
                self._drift_stats.add(module)
            else:
                self._drift_stats.discard(module)
        published = self._republish(module, "drift_stats", on)
        logger.info("drift summaries of %s %s on %d agent(s)", module, on, len(published))
        return published

    def _republish(self, module: str, name: str, value: Any) -> list[str]:
        """Set field ``name`` of ``module``'s entry on every agent holding it; publish those.

        Each changed agent's desired state goes out (a version newer, in order
        under its agent lock); agents whose entry has the value already are left.
        """
        with self._lock:
            holders = sorted(a for a, held in self._modules.items() if module in held)
        published = []
        for agent_id in holders:
            with self._agent_lock(agent_id):  # desired states go out in version order
                with self._lock:
                    modules = dict(self._modules.get(agent_id, {}))
                    entry = modules.get(module)
                    if entry is None or getattr(entry, name) == value:
                        continue
                    modules[module] = entry.model_copy(update={name: value})
                    version = self._next_version(agent_id)
                    self._modules[agent_id] = modules
                desired = DesiredState(
                    agent=agent_id, version=version, modules=list(modules.values())
                )
                try:
                    self._edge.publish_desired(agent_id, desired)
                except EdgeBusError as exc:  # retained and queued: it goes out on reconnecting
                    logger.warning(
                        "agent %s: %s of %s not acknowledged: %s", agent_id, name, module, exc
                    )
            published.append(agent_id)
        return published

    def _hand_over(
        self,
        agent_id: str,
        module: str,
        replica: str,
        source: PipelineSource | None,
        split: float,
        held: tuple[str, PipelineSource] | None,
        timeout_s: float,
    ) -> float:
        """Give ``replica`` the source from ``split`` on; returns the split time kept.

        The replica listens when this returns.
        """
        if held is not None and held[0] == replica:
            return split  # it has it already
        if source is None:
            raise DeployError(f"route of {module} on agent {agent_id} cannot be remote: no source")
        lease = Lease(source.site, agent_id, source.topic, source.stream, split)
        try:
            split = self.handover.assign(module, replica, lease, timeout_s)
        except MeshError as exc:
            raise DeployError(f"route of {module} on agent {agent_id}: {exc}") from exc
        self._remote[(agent_id, module)] = (replica, source)
        return split


def _unchanged(
    edge: EdgeBus,
    agent_id: str,
    kept: ModuleSpec | None,
    artifact: ModelArtifact,
    sampling: SamplingPolicy | None,
    drift_stats: bool,
) -> bool:
    """Whether ``kept`` is ``artifact`` already (same sampling and drift summaries), installed.

    Then a new desired state would change nothing but its version and the URL's
    expiry, and cost the agent a reconcile and the broker a retained rewrite.
    """
    if kept is None or (kept.version, kept.sha256) != (artifact.version, artifact.sha256):
        return False
    if kept.sampling != sampling or kept.drift_stats != drift_stats:
        return False
    view = edge.agent(agent_id)
    observed = view.observed if view is not None else None
    if observed is None or any(e.module == kept.name for e in observed.errors):
        return False
    return any(
        m.name == kept.name and m.version == kept.version and m.sha256 in (None, kept.sha256)
        for m in observed.installed
    )


def _errors(observed: ObservedState, module: str, default: str = "not installed") -> str:
    return (
        "; ".join(f"{e.code}: {e.message}" for e in observed.errors if e.module == module)
        or default
    )


def _observed_epoch(edge: EdgeBus, agent_id: str, module: str) -> int:
    """The route epoch the agent last reported for ``module`` (0 if none)."""
    view = edge.agent(agent_id)
    observed = view.observed if view is not None else None
    if observed is None:
        return 0
    return max((m.route_epoch for m in observed.installed if m.name == module), default=0)
