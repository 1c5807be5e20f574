"""The agent's reconciler: desired state in; modules downloaded, verified, loaded and swapped.

:class:`DesiredStateReconciler` is mixed into :class:`edge_agent._agent.Agent`,
which holds the state it reads and writes (declared below). The network thread
only parses a desired state and hands it over (:meth:`_on_desired`); the
reconciler thread applies the newest one: each module is installed (with
retries on download errors), loaded and swapped in while the old version
serves; modules no longer desired are removed; then the pipelines follow and
the observed state is published. :meth:`_restore` serves the cached modules
before the broker is reached.
"""

from __future__ import annotations

import logging
import threading
import time

from ._budget import MemoryBudget
from ._cache import ArtifactError, Installed, ModuleCache
from ._clock import ClockOffset
from ._runtime import LoadedModel, ModuleLoadError, ModuleServer, load_model
from ._settings import AgentSettings
from ._transport import Message
from .protocol import (
    DesiredState,
    ErrorCode,
    ModuleError,
    ModuleSpec,
    ProtocolError,
    Route,
    parse_json,
)

__all__ = ["DesiredStateReconciler"]

logger = logging.getLogger(__name__)


class DesiredStateReconciler:
    """Applying desired states and restoring the cache; a mixin of ``Agent``."""

    # The agent's state, set in Agent.__init__.
    settings: AgentSettings
    agent_id: str
    _cache: ModuleCache
    _lock: threading.RLock
    _wake: threading.Condition
    _servers: dict[str, ModuleServer]
    memory_budget: MemoryBudget
    _installed: dict[str, Installed]
    _specs: dict[str, ModuleSpec]
    _routes: dict[str, Route]
    _errors: dict[str, ModuleError]
    _desired: DesiredState | None
    _version: int
    _pending: DesiredState | None
    _stopping: bool
    clock: ClockOffset

    def _sync_pipelines(self) -> None:
        """Start and stop pipelines to match the desired state (``Agent._sync_pipelines``)."""
        raise NotImplementedError

    def _publish_observed(self) -> None:
        """Publish the observed state (``Agent._publish_observed``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ restore

    def _restore(self) -> None:
        state = self._cache.load_state()
        for name, inst in state.installed.items():
            try:
                self._cache.check_signature(inst.spec)
                model = self._load(inst.spec, inst)
            except (ArtifactError, ModuleLoadError) as exc:
                logger.warning("module %s@%s: cached copy unusable: %s", name, inst.version, exc)
                continue
            self._activate(inst.spec, inst, model)
        desired = state.desired
        if desired is not None:
            self._desired, self._version = desired, desired.version
            for spec in desired.modules:
                self._specs[spec.name] = spec
                self._routes[spec.name] = spec.route
        self._sync_pipelines()
        if desired is not None:
            logger.info(
                "agent %s: restored desired version %d from cache", self.agent_id, desired.version
            )

    # ------------------------------------------------------------------ desired state

    def _on_desired(self, msg: Message) -> None:
        if not msg.payload:
            logger.info("agent %s: desired state cleared on the broker; keeping", self.agent_id)
            return
        try:
            desired = parse_json(
                msg.payload, DesiredState, max_bytes=self.settings.max_payload_bytes
            )
        except ProtocolError as exc:
            logger.warning("agent %s: desired state refused: %s", self.agent_id, exc)
            return
        if "ts" in desired.model_fields_set:  # stamped by the control plane (not defaulted)
            self.clock.observe(desired.ts, time.time())
        if desired.agent is not None and desired.agent != self.agent_id:
            logger.warning(
                "agent %s: desired state is for agent %s; refused", self.agent_id, desired.agent
            )
            return
        with self._lock:
            held = max(self._version, self._pending.version if self._pending else -1)
            if desired.version <= held:
                logger.info(
                    "agent %s: ignoring desired version %d (holding %d)",
                    self.agent_id,
                    desired.version,
                    held,
                )
                if desired.version == self._version:
                    self._publish_observed()  # e.g. the control plane restarted: re-acknowledge
                return
            self._pending = desired
            self._wake.notify_all()

    def _reconcile_loop(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                desired, self._pending = self._pending, None
            assert desired is not None
            try:
                self._apply(desired)
            except Exception:
                logger.exception(
                    "agent %s: applying desired version %d failed", self.agent_id, desired.version
                )

    def _apply(self, desired: DesiredState) -> None:
        logger.info(
            "agent %s: applying desired version %d (%d modules, %d pipelines)",
            self.agent_id,
            desired.version,
            len(desired.modules),
            len(desired.pipelines),
        )
        wanted = {m.name for m in desired.modules}
        for spec in desired.modules:
            if self._stopping:
                return
            self._apply_module(spec)
        for name in sorted((set(self._specs) | set(self._servers)) - wanted):
            self._remove_module(name)
        with self._lock:
            self._desired, self._version = desired, desired.version
        try:
            self._cache.save_state(desired, dict(self._installed))
        except OSError as exc:  # a full disk: serve and report all the same
            logger.error(
                "agent %s: desired version %d applied but not saved (%s); a restart "
                "before the next save starts from the one saved before",
                self.agent_id,
                desired.version,
                exc,
            )
        self._sync_pipelines()
        self._publish_observed()

    def _apply_module(self, spec: ModuleSpec) -> None:
        name = spec.name
        with self._lock:
            current_route = self._routes.get(name)
            if current_route is None or spec.route.epoch >= current_route.epoch:
                self._routes[name] = spec.route
            else:
                logger.warning(
                    "module %s: route epoch %d is older than %d; route kept",
                    name,
                    spec.route.epoch,
                    current_route.epoch,
                )
            self._specs[name] = spec
        if not spec.has_artifact:
            if name in self._servers:  # now remote-only: nothing local to keep
                self._drop_local(name)
            self._errors.pop(name, None)
            return
        inst = self._installed.get(name)
        server = self._servers.get(name)
        if (
            inst is not None
            and inst.sha256 == spec.sha256
            and inst.version == spec.version
            and server is not None
            and server.current is not None
        ):
            server.drift_stats = spec.drift_stats
            self._errors.pop(name, None)
            return
        try:
            installed = self._install_with_retries(spec)
            model = self._load(spec, installed)
        except (ArtifactError, ModuleLoadError) as exc:
            self._errors[name] = ModuleError(
                module=name, version=spec.version, code=exc.code, message=exc.reason
            )
            serving = server.current.version if server and server.current else None
            logger.error(
                "module %s@%s refused: %s (still serving %s)",
                name,
                spec.version,
                exc.reason,
                serving,
            )
            return
        self._activate(spec, installed, model)
        self._cache.remove(name, keep=installed.path)
        self._errors.pop(name, None)

    def _install_with_retries(self, spec: ModuleSpec) -> Installed:
        delay = 0.5
        for attempt in range(1, self.settings.download_retries + 1):
            try:
                return self._cache.install(spec)
            except ArtifactError as exc:
                if exc.code != ErrorCode.DOWNLOAD or attempt == self.settings.download_retries:
                    raise
                logger.warning(
                    "module %s@%s: download attempt %d failed (%s); retrying",
                    spec.name,
                    spec.version,
                    attempt,
                    exc.reason,
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _load(self, spec: ModuleSpec, inst: Installed) -> LoadedModel:
        return load_model(
            inst.path,
            name=spec.name,
            version=spec.version,
            sha256=inst.sha256,
            threads=spec.threads,
            providers=spec.providers,
            warmup_runs=spec.warmup_runs,
        )

    def _activate(self, spec: ModuleSpec, inst: Installed, model: LoadedModel) -> None:
        with self._lock:
            server = self._servers.get(spec.name)
            if server is None:
                server = ModuleServer(
                    spec.name,
                    max_queue=spec.max_queue,
                    workers=self.settings.workers,
                    max_batch=spec.max_batch,
                    budget=self.memory_budget,
                    # Batching copies a batch's inputs: a quarter of the budget at most.
                    max_batch_bytes=self.memory_budget.limit_bytes // 4,
                )
                self._servers[spec.name] = server
            server.drift_stats = spec.drift_stats
            server.swap(model)
            self._installed[spec.name] = inst
            self._specs.setdefault(spec.name, spec)
            self._routes.setdefault(spec.name, spec.route)

    def _drop_local(self, name: str) -> None:
        with self._lock:
            server = self._servers.pop(name, None)
            self._installed.pop(name, None)
        if server is not None:
            server.stop()
        self._cache.remove(name)

    def _remove_module(self, name: str) -> None:
        logger.info("module %s: no longer desired; removing", name)
        with self._lock:
            self._specs.pop(name, None)
            self._routes.pop(name, None)
            self._errors.pop(name, None)
        self._drop_local(name)
