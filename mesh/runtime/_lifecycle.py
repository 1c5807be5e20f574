"""A module deployed with a drift check or a canary, handed to the lifecycle services.

``POST /v1/modules`` (``mesh modules deploy --drift JSON --canary JSON``) calls
:meth:`LifecycleTracking.track` once the module serves: a drift check goes to
the drift service (scores per site from the module's events, drift events) and
the fresh-data service (the agents sample its inputs; its labels are kept); a
canary policy goes to the canary service. A scenario run hands its modules
over itself (:mod:`mesh.scenario._lifecycle`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mesh.sdk._specs import ModuleSpec

if TYPE_CHECKING:
    from mesh.runtime._canary import CanaryService
    from mesh.runtime._drift import DriftService
    from mesh.runtime._fresh_data import FreshDataService

__all__ = ["LifecycleTracking"]

logger = logging.getLogger(__name__)


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
