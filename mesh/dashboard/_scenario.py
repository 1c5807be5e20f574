"""What a running scenario tells the dashboard: sim time, its faults, the plugin's live KPIs.

The scenario harness (``mesh run``, ``mesh demo``) holds the control plane's
:class:`ScenarioFeed` (``ControlPlaneServices.scenario``) and calls it as the
run goes: :meth:`ScenarioFeed.begin` with the planned faults,
:meth:`~ScenarioFeed.update` about once a second with the simulation's time
and KPIs (``SimulationRun.kpis()``), :meth:`~ScenarioFeed.fault` for each
fault the timeline starts or ends, :meth:`~ScenarioFeed.end` at the end. The
dashboard's Scenario page shows it; with no scenario the page says so.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["ScenarioFeed"]

#: KPI samples kept for the page's sparklines (one a second: ten minutes).
KPI_SAMPLES = 600
#: Fault log lines kept.
FAULT_LINES = 200


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


class ScenarioFeed:
    """The running scenario, as the dashboard shows it (thread-safe; every call is cheap).

    Args:
        clock: Unix time (injected in tests).

    Example:
        >>> feed = ScenarioFeed()
        >>> feed.begin("vibration", duration_s=60, planned=[{"at_s": 20, "kind": "cpu_hog"}])
        >>> feed.update(sim_s=21.0, wall_s=21.0, kpis={"served": 40})
        >>> feed.fault(20.0, "cpu_hog on agent j-B1 for 30 s")
        >>> feed.describe()["kpis"]
        {'served': 40}
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None
        self._samples: deque[dict[str, Any]] = deque(maxlen=KPI_SAMPLES)
        self._log: deque[dict[str, Any]] = deque(maxlen=FAULT_LINES)

    def begin(
        self,
        name: str,
        *,
        duration_s: float | None = None,
        planned: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """A run starts: its name, its length in sim seconds, its fault timeline.

        ``planned`` holds one mapping per fault: ``at_s``, ``kind`` and, where
        they apply, ``target`` and ``duration_s``.
        """
        with self._lock:
            self._samples.clear()
            self._log.clear()
            self._state = {
                "name": name,
                "started_at": self._clock(),
                "duration_s": duration_s,
                "planned": [{k: _jsonable(v) for k, v in f.items()} for f in planned],
                "sim_s": 0.0,
                "wall_s": 0.0,
                "kpis": {},
                "running": True,
            }

    def update(self, *, sim_s: float, wall_s: float, kpis: Mapping[str, Any]) -> None:
        """The simulation's time now and its KPIs (ignored when no run began)."""
        clean = {str(k): _jsonable(v) for k, v in kpis.items()}
        with self._lock:
            if self._state is None:
                return
            self._state.update(sim_s=sim_s, wall_s=wall_s, kpis=clean)
            self._samples.append({"sim_s": sim_s, **clean})

    def fault(self, sim_s: float, what: str) -> None:
        """A fault started or ended at sim time ``sim_s`` (``what`` in words)."""
        with self._lock:
            if self._state is not None:
                self._log.append({"sim_s": sim_s, "at": self._clock(), "what": what})

    def end(self) -> None:
        """The run ended (the page keeps showing its last state)."""
        with self._lock:
            if self._state is not None:
                self._state["running"] = False

    def describe(self) -> dict[str, Any] | None:
        """The run for the page (None when no scenario ran on this control plane)."""
        with self._lock:
            if self._state is None:
                return None
            return {
                **self._state,
                "kpi_history": list(self._samples),
                "log": list(self._log),
            }
