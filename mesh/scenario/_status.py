"""A running scenario as the dashboard sees it: ``GET /v1/scenario`` (read scope).

:class:`ScenarioStatus` is written by the run as it goes (the stage, the live
loop's clocks, the fault timeline, the narrator's lines, the simulation's live
KPIs) and read whole by :func:`scenario_router`'s one route, from another thread.
The control plane a scenario starts mounts it; a plain ``mesh up`` runs no
scenario and answers 404 there.

The JSON it answers::

    {"name": "small", "description": "...", "stage": "live",
     "sim_s": 44.0, "wall_s": 22.1, "duration_s": 120.0,
     "faults": [{"kind": "cpu_hog", "target": "agent:j-A0", "start": 40.0, "end": null}],
     "story": ["t=40 s cpu_hog on agent j-A0 (load 1) for 30 s", ...],
     "kpis": {"vehicles": 31, "arrived": 12, "mean_wait_s": 6.2}}

``end`` is null while a fault runs; ``kpis`` holds what the simulation plugin's
optional ``live_kpis()`` returns (empty for a plugin without it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["STORY_LINES", "ScenarioStatus", "scenario_router"]

#: The newest story lines kept (a long run's older ones are in the report).
STORY_LINES = 200


class ScenarioStatus:
    """What a scenario run has done so far, safe to read from any thread.

    Args:
        name: the scenario's name.
        description: its description.
        duration_s: its simulated length (None: until stopped).
    """

    def __init__(self, name: str, description: str, duration_s: float | None) -> None:
        """Nothing has happened yet: stage ``starting``."""
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {
            "name": name,
            "description": description,
            "stage": "starting",
            "sim_s": 0.0,
            "wall_s": 0.0,
            "duration_s": duration_s,
            "faults": [],
            "story": [],
            "kpis": {},
        }
        self._kpis: Callable[[], dict[str, Any]] | None = None

    def stage(self, name: str) -> None:
        """The run entered stage ``name``."""
        with self._lock:
            self._state["stage"] = name

    def clock(self, sim_s: float, wall_s: float) -> None:
        """The live loop's simulated and wall seconds now."""
        with self._lock:
            self._state["sim_s"], self._state["wall_s"] = sim_s, wall_s

    def faults(self, windows: list[dict[str, Any]]) -> None:
        """The faults so far: ``kind``, ``target``, ``start``, ``end`` (None while running)."""
        with self._lock:
            self._state["faults"] = [dict(w) for w in windows]

    def story(self, line: str) -> None:
        """One narrated line (the newest :data:`STORY_LINES` are kept)."""
        with self._lock:
            lines: list[str] = self._state["story"]
            lines.append(line)
            del lines[:-STORY_LINES]

    def live_kpis(self, read: Callable[[], dict[str, Any]] | None) -> None:
        """Where the simulation's live KPIs are read from, at each snapshot (None: none)."""
        with self._lock:
            self._kpis = read

    def snapshot(self) -> dict[str, Any]:
        """The whole state now (a copy), with the live KPIs read at this moment."""
        with self._lock:
            state = {
                **self._state,
                "faults": [dict(f) for f in self._state["faults"]],
                "story": list(self._state["story"]),
            }
            read = self._kpis
        if read is not None:
            try:
                state["kpis"] = dict(read())
            except Exception as exc:  # a plugin's trouble must not break the page
                state["kpis"] = {"error": str(exc)}
        return state


def scenario_router(status: ScenarioStatus, *, read: Any = None) -> APIRouter:
    """``GET /v1/scenario``: the running scenario's :meth:`ScenarioStatus.snapshot`.

    Args:
        status: the run's status.
        read: the ``read`` scope's dependency (the gateway's guard checks it too).
    """
    from fastapi import APIRouter, Depends  # only where a control plane is built

    router = APIRouter(prefix="/v1/scenario", tags=["scenario"])

    @router.get("", dependencies=[Depends(read)] if read is not None else [])
    def current() -> dict[str, Any]:
        """The running scenario: stage, clocks, faults, the story so far, live KPIs."""
        return status.snapshot()

    return router
