"""Agents owed a version of a module: it is installed when they are back online.

The canary service promotes a candidate on the agents online at that moment and
rolls one back on its canary agents; an agent that was offline then, or whose
install failed, would go on serving the version it had. :class:`CatchUp` keeps
what each such agent should serve and, at each pass, installs it on those that
are online and do not serve it yet (one agent at a time, each bounded by
``install_timeout_s``). An agent that serves it already, or no longer holds the
module, is settled without an install; one whose installs fail ``max_tries``
times is given up (logged, and a ``note`` step says so). Each install or
give-up is a ``note`` lifecycle step of the version owed.

Example:
    >>> catch_up = CatchUp(registry, installer)                         # doctest: +SKIP
    >>> catch_up.owe("counter", "counter", "cam-3", "v4")               # doctest: +SKIP
    >>> catch_up.settle(edge.agents())  # cam-3 online again: v4 there  # doctest: +SKIP
    ['cam-3']
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from mesh.core._errors import MeshError
from mesh.edge._records import AgentView
from mesh.models._registry import ModelRegistry
from mesh.serving._contract import AgentInstaller, ModelArtifact

__all__ = ["CatchUp"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Owed:
    model: str
    version: str
    why: str
    tries: int = 0


class CatchUp:
    """Versions owed to agents that could not take them when decided.

    Args:
        registry: where the owed versions' artifacts and the notes go.
        installer: puts a version on an agent.
        install_timeout_s: how long one agent may take to install.
        max_tries: installs tried on an online agent before giving up.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        installer: AgentInstaller,
        *,
        install_timeout_s: float = 60.0,
        max_tries: int = 3,
    ) -> None:
        """Nothing owed yet."""
        self._registry = registry
        self._installer = installer
        self._install_timeout_s = install_timeout_s
        self._max_tries = max_tries
        self._owed: dict[tuple[str, str], _Owed] = {}  # (module, agent) -> owed
        self._lock = threading.Lock()

    def owe(self, model: str, module: str, agent: str, version: str, why: str = "") -> None:
        """``agent`` should serve ``version`` of ``module`` (replaces what it was owed)."""
        with self._lock:
            self._owed[(module, agent)] = _Owed(model, version, why)

    def forget(self, module: str, agents: Iterable[str] | None = None) -> None:
        """Owe nothing more for ``module`` (on ``agents`` only, when given)."""
        wanted = None if agents is None else set(agents)
        with self._lock:
            for key in [k for k in self._owed if k[0] == module]:
                if wanted is None or key[1] in wanted:
                    del self._owed[key]

    def owed(self) -> dict[tuple[str, str], str]:
        """(module, agent) -> the version owed."""
        with self._lock:
            return {key: owed.version for key, owed in self._owed.items()}

    def settle(self, views: Iterable[AgentView]) -> list[str]:
        """Install what is owed on the online agents among ``views``; returns those installed."""
        by_id = {v.agent_id: v for v in views}
        with self._lock:
            pending = list(self._owed.items())
        installed: list[str] = []
        for (module, agent), owed in pending:
            view = by_id.get(agent)
            if view is None or view.state != "online" or view.observed is None:
                continue  # still away: owed until it is back
            held = {m.name: m.version for m in view.observed.installed}
            if held.get(module, owed.version) == owed.version:
                self._drop(module, agent, owed)  # serves it already, or holds no module
                continue
            try:
                artifact = ModelArtifact.from_registry(self._registry, owed.model, owed.version)
                self._installer.install(agent, module, artifact, self._install_timeout_s)
            except MeshError as exc:
                owed.tries += 1
                if owed.tries >= self._max_tries and self._drop(module, agent, owed):
                    logger.error(
                        "canary: agent %s still serves %s %s, not %s: %s (given up)",
                        agent, module, held[module], owed.version, exc,
                    )  # fmt: skip
                    self._note(owed, module, agent, f"given up after {owed.tries} tries: {exc}")
                continue
            if self._drop(module, agent, owed):
                installed.append(agent)
                logger.info("canary: agent %s caught up with %s %s", agent, module, owed.version)
                self._note(owed, module, agent, "installed")
        return installed

    def _drop(self, module: str, agent: str, owed: _Owed) -> bool:
        """Forget ``owed`` unless something newer is owed since; whether it was."""
        with self._lock:
            if self._owed.get((module, agent)) is not owed:
                return False
            del self._owed[(module, agent)]
            return True

    def _note(self, owed: _Owed, module: str, agent: str, outcome: str) -> None:
        detail = {"module": module, "agent": agent, "caught_up": outcome, "why": owed.why}
        self._registry.lifecycle.record(owed.model, owed.version, "note", detail)
