"""A module deployed with a drift check or a canary, handed to the lifecycle services.

``POST /v1/modules`` (``mesh modules deploy --drift JSON --canary JSON``) calls
:meth:`LifecycleTracking.track` once the module serves: a drift check goes to
the drift service (scores per site from the module's events, drift events) and
the fresh-data service (the agents sample its inputs; its labels are kept); a
canary policy goes to the canary service. A scenario run hands its modules
over itself (:mod:`mesh.scenario._lifecycle`).

The placement store keeps each deployed module's spec (drift check and canary
policy with it); when the control plane starts again,
:meth:`LifecycleTracking.resume` hands the recorded modules that declare
either to the services once more, so the loop goes on across a restart (the
canary service picks up a candidate still under trial by itself).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from mesh.sdk._specs import ModuleSpec

if TYPE_CHECKING:
    from mesh.runtime._canary import CanaryService
    from mesh.runtime._drift import DriftService
    from mesh.runtime._fresh_data import FreshDataService

__all__ = ["LifecycleTracking", "RecordedModule"]

logger = logging.getLogger(__name__)


class RecordedModule(Protocol):
    """A placement store's deployment record, as far as resuming reads it."""

    @property
    def module(self) -> str: ...

    @property
    def spec_json(self) -> str: ...

    @property
    def version(self) -> str: ...


class LifecycleTracking:
    """Hands deployed modules to the services, which the composition root sets once built.

    Attributes:
        drift: the drift service (None until set).
        fresh_data: the fresh-data service (None until set).
        canary: the canary service (None until set).
    """

    def __init__(self) -> None:
        """No service yet."""
        self.drift: DriftService | None = None
        self.fresh_data: FreshDataService | None = None
        self.canary: CanaryService | None = None

    def track(self, spec: ModuleSpec, version: str) -> list[str]:
        """Track ``spec`` (served at ``version``, a stage name or ``v<n>``); the services named.

        Tracking a module again (deployed on one more agent) replaces its
        tracking and keeps what the services saw.
        """
        tracked: list[str] = []
        if spec.drift is not None:
            if self.drift is not None:
                self.drift.track(spec, version=version)
                tracked.append("drift")
            if self.fresh_data is not None:
                self.fresh_data.track(spec)
                tracked.append("fresh data")
        if spec.canary is not None and self.canary is not None:
            self.canary.track(spec)
            tracked.append("canary")
        if tracked:
            logger.info("module %s %s: tracked by %s", spec.name, version, ", ".join(tracked))
        return tracked

    def resume(self, records: Iterable[RecordedModule]) -> dict[str, list[str]]:
        """Track again the recorded modules that declare a drift check or a canary.

        One module recorded several times (one record per site) is tracked
        once. A record whose spec no longer parses, or that a service refuses
        (e.g. its version is gone from the registry), is skipped with a warning
        naming the module: the restart goes on and the module serves untracked.

        Returns:
            module -> the services that track it again.
        """
        latest: dict[str, RecordedModule] = {}
        for record in records:
            latest[record.module] = record
        resumed: dict[str, list[str]] = {}
        for name, record in sorted(latest.items()):
            try:
                spec = ModuleSpec.model_validate_json(record.spec_json)
            except ValidationError as exc:
                logger.warning(
                    "module %s: its recorded spec does not parse, not tracked: %s",
                    name,
                    exc.errors()[:1],
                )
                continue
            if spec.drift is None and spec.canary is None:
                continue
            try:
                tracked = self.track(spec, record.version)
            except Exception as exc:  # the restart goes on: the module serves untracked
                logger.warning("module %s: not tracked again after the restart: %s", name, exc)
                continue
            if tracked:
                resumed[name] = tracked
        return resumed
