"""Installing modules on edge agents: the serving manager's :class:`AgentInstaller`.

An install stores the artifact (content-addressed, where the artifact endpoint
serves it), publishes the agent's desired state with the module (a pre-signed
download URL, the sha256 and the Ed25519 signature over name, version and
sha256) under a version newer than any the agent holds, and waits until the
agent's observed state lists the module at that version. The agent downloads,
verifies and loads it; a failure comes back in the observed state and is raised.

This installer keeps each agent's modules and publishes them all in each
desired state (pipelines are not touched here).

Example:
    >>> installer = EdgeInstaller(edge, store=store, signer=signer,
    ...                           url_signer=url_signer, base_url=server.url)  # doctest: +SKIP
    >>> manager = ServingManager(routes, launcher, installer=installer)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edge_agent.protocol import DesiredState, ModuleSpec

from ._artifact_api import UrlSigner, signed_module_spec
from ._artifacts import ArtifactSigner, ArtifactStore
from ._edge_gateway import EdgeGateway, EdgeGatewayError
from ._serving import DeployError, ModelArtifact

__all__ = ["EdgeInstaller"]

logger = logging.getLogger(__name__)


class EdgeInstaller:
    """Puts modules on agents through the edge gateway.

    Args:
        edge: the connected edge gateway.
        store: the artifact store the artifact endpoint serves.
        signer: the control plane's artifact-signing key.
        url_signer: signs the agents' download URLs.
        base_url: the artifact endpoint as agents reach it.
        module_options: extra fields of each module entry (threads, max_batch, ...).
    """

    def __init__(
        self,
        edge: EdgeGateway,
        *,
        store: ArtifactStore,
        signer: ArtifactSigner,
        url_signer: UrlSigner,
        base_url: str,
        module_options: dict[str, Any] | None = None,
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
        self._lock = threading.Lock()

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

    def install(
        self, agent_id: str, module: str, artifact: ModelArtifact, timeout_s: float
    ) -> None:
        """Install ``artifact`` as ``module`` on ``agent_id`` and wait until it serves it.

        Raises:
            DeployError: the agent reported an error, or did not answer in time.
        """
        info = self._store.put_bytes(artifact.data)
        if info.sha256 != artifact.sha256:
            raise DeployError(
                f"{module} {artifact.version}: the bytes have sha256 "
                f"{info.sha256}, not {artifact.sha256}"
            )
        entry = signed_module_spec(
            module,
            artifact.version,
            info,
            agent_id=agent_id,
            base_url=self._base_url,
            signer=self._signer,
            url_signer=self._url_signer,
            **self._options,
        )
        with self._lock:
            modules = dict(self._modules.get(agent_id, {}))
            modules[module] = entry
            version = self._next_version(agent_id)
            desired = DesiredState(agent=agent_id, version=version, modules=list(modules.values()))
        try:
            self._edge.publish_desired(agent_id, desired)
            observed = self._edge.wait_for_observed(agent_id, version, timeout_s=timeout_s)
        except EdgeGatewayError as exc:
            raise DeployError(f"{module} {artifact.version} on agent {agent_id}: {exc}") from exc
        installed = {(m.name, m.version) for m in observed.installed}
        if (module, artifact.version) not in installed:
            errors = (
                "; ".join(f"{e.code}: {e.message}" for e in observed.errors if e.module == module)
                or "not installed"
            )
            raise DeployError(
                f"agent {agent_id} did not install {module} {artifact.version} "
                f"(desired version {version}): {errors}"
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
