"""Saturated marks: the (module, node) pairs where a module missed its SLO.

The placement controller marks a node *saturated* for a module when the
module's observed p95 there stayed over its SLO for a window, when every
replica there failed, or when an agent's pipeline of the module missed it. The
engine then treats the node as full for that module. A mark is lifted when
canary inferences on the node meet the SLO again (an agent keeps the module
installed after it moved, so it can still be probed), or after
``saturation_ttl_s``.

Example:
    >>> marks = SaturationMarks(ControllerSettings(), lambda m, n: None, clock=lambda: 0.0)
    >>> marks.mark("counter", "cam-07", 31.0), ("counter", "cam-07") in marks
    (True, True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.control._settings import ControllerSettings
from mesh.control._snapshot import Snapshot
from mesh.serving._manager import DeploymentView

__all__ = ["SaturationMarks"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Mark:
    since: float
    p95_ms: float
    last_canary: float = -math.inf


class SaturationMarks:
    """The controller's saturated marks, changed from its loop thread only.

    Args:
        settings: the controller's knobs (TTL, canary period, SLO margin).
        canary: runs one canary inference of a module on a node
            (:meth:`Monitors.run_canary`); its result arrives in the snapshots.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        settings: ControllerSettings,
        canary: Callable[[str, str], object],
        clock: Callable[[], float],
    ) -> None:
        """No node is marked."""
        self._settings = settings
        self._canary = canary
        self._clock = clock
        self._marks: dict[tuple[str, str], _Mark] = {}

    def __contains__(self, key: object) -> bool:
        """Whether ``(module, node)`` is marked."""
        return key in self._marks

    def pairs(self) -> frozenset[tuple[str, str]]:
        """Every marked (module, node), as a copy."""
        return frozenset(self._marks)

    def nodes(self, module: str) -> frozenset[str]:
        """The nodes marked saturated for ``module``."""
        return frozenset(n for (m, n) in self._marks if m == module)

    def mark(self, module: str, node: str, p95_ms: float, *, since: float | None = None) -> bool:
        """Mark ``node`` saturated for ``module`` (now, or at ``since``); False if it was."""
        if (module, node) in self._marks:
            return False
        self._marks[module, node] = _Mark(self._clock() if since is None else since, p95_ms)
        return True

    def relieve(
        self,
        views: Mapping[str, DeploymentView],
        snapshot: Snapshot,
        now: float,
        serving: Mapping[str, str],
    ) -> None:
        """Probe saturated nodes the module left; lift the mark when they meet the SLO.

        Args:
            views: what serves each module now (its SLO); a module gone loses its marks.
            snapshot: this round's snapshot (node states, canary latency).
            now: this round's time.
            serving: module -> the node serving it now (not probed: its requests tell).
        """
        s = self._settings
        for key, mark in list(self._marks.items()):
            module, node = key
            view = views.get(module)
            if view is None or now - mark.since > s.saturation_ttl_s:
                del self._marks[key]
                logger.info("%s on %s: saturated mark expired", module, node)
                continue
            if serving.get(module) == node:
                continue  # still serving there: the gateway's numbers tell
            state = snapshot.nodes.get(node)
            if state is None or not state.alive or state.kind != "agent":
                continue  # nothing to probe: the TTL lifts it
            if now - mark.last_canary >= s.canary_period_s:
                mark.last_canary = now
                self._canary(module, node)
            canary = snapshot.canaries.get(key)
            target = view.spec.qos.p95_latency_ms * (1.0 - s.slo_margin)
            if (
                canary is not None
                and canary.count >= 5
                and canary.errors == 0
                and canary.p95_ms <= target
            ):
                del self._marks[key]
                logger.info(
                    "%s on %s: canary p95 %.1f ms <= %.1f ms: no longer saturated",
                    module,
                    node,
                    canary.p95_ms,
                    target,
                )
