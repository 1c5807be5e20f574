"""A replica's drift summaries: what its model computed, for the control plane's drift check.

The same summaries an edge agent puts in its heartbeats
(:class:`edge_agent._drift_stats.DriftStats`: each inference's mean input and
mean outputs, one sample per row of the batch axis), read by one caller through
the replica's ``GET /drift``, which takes the window and starts a new one.

Summarising costs each inference ~20 us, so a replica summarises only while it
is asked to: each ``GET /drift`` (the control plane's
:class:`~mesh.runtime._replica_drift.ReplicaDriftFeed`, for modules whose drift
check reads inputs or outputs) keeps it summarising for :data:`LEASE_S` more;
a module nobody tracks pays one clock read per inference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent._drift_stats import DriftStats

__all__ = ["LEASE_S", "ReplicaDrift"]

#: How long one ``GET /drift`` keeps a replica summarising (the feed reads every second).
LEASE_S = 30.0


class ReplicaDrift:
    """Summaries of one replica's inferences, while a reader keeps asking for them.

    Args:
        version: the version the replica serves (named in each summary).
        first_input: the name of the model's first input (the one summarised).
        clock: monotonic seconds (injected in tests).

    Example:
        >>> import numpy as np
        >>> drift = ReplicaDrift("v1", "x")
        >>> drift.observe({"x": np.ones((1, 4))}, {"y": np.ones((1, 1))})  # not asked: skipped
        >>> drift.take() is None  # asks: summarising from now on
        True
        >>> drift.observe({"x": np.ones((1, 4))}, {"y": np.ones((1, 1))})
        >>> drift.take().outputs["y"].count
        1
    """

    def __init__(
        self, version: str, first_input: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Not summarising until the first :meth:`take`."""
        self._version = version
        self._first = first_input
        self._clock = clock
        self._stats = DriftStats()
        self._until = -1.0

    @property
    def active(self) -> bool:
        """Whether inferences are summarised now (a reader asked within :data:`LEASE_S`)."""
        return self._clock() < self._until

    def observe(self, feeds: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """Summarise one run of the model (a no-op unless :attr:`active`); never raises."""
        if self._clock() < self._until:
            self._stats.observe_arrays(self._version, feeds.get(self._first), outputs)

    def take(self) -> dict[str, Any] | None:
        """The window's summary as JSON (None: nothing ran); summarise for :data:`LEASE_S` more."""
        self._until = self._clock() + LEASE_S
        summary = self._stats.take()
        return None if summary is None else summary.model_dump()
