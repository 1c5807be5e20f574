"""The traffic simulation's settings: the ``simulation:`` block of a traffic scenario.

Validated by the mesh's scenario loader through the plugin's ``config_model``
(pydantic, ``extra="forbid"``), so a mistake is reported with the file, the
line and the field, like any other part of the scenario::

    simulation:
      plugin: functions.traffic.sim:plugin
      network: {grid: {rows: 3, cols: 3}}
      demand: {level: peak, duration_s: 600}
      cameras: {module: counter, counts: "traffic/{site}/counts",
                impairments: {miss_rate: 0.05, reach_m: 150}}
      baselines: [fixed, actuated]

The cameras' ``impairments`` default to
:class:`~functions.traffic.impairments.Impairments`' defaults; ``null`` makes
them perfect.

Example:
    >>> TrafficConfig.model_validate({"network": {"grid": {"rows": 2, "cols": 2}}}).sites()
    ['A0', 'A1', 'B0', 'B1']
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from functions.traffic.impairments import Impairments
from mesh.scenario import SchemaModel, TopicTemplate, exactly_one

__all__ = [
    "CameraImpairments",
    "Cameras",
    "Demand",
    "GridNetwork",
    "Network",
    "TrafficConfig",
]


class GridNetwork(SchemaModel):
    """A generated grid of signalised junctions (SUMO netgenerate --grid)."""

    rows: int = Field(ge=1, le=26, description="Junctions per column (y).")
    cols: int = Field(ge=1, le=26, description="Junctions per row (x).")
    length_m: float = Field(200.0, ge=20, le=5000, description="Edge length in metres.")
    lanes: int = Field(1, ge=1, le=4, description="Lanes per direction.")

    def junction_ids(self) -> list[str]:
        """Junction ids as netgenerate names them: column letter, row number (A0, A1, B0, ...)."""
        return [f"{chr(ord('A') + x)}{y}" for x in range(self.cols) for y in range(self.rows)]


class Network(SchemaModel):
    """The road network: exactly one of grid, file."""

    grid: GridNetwork | None = Field(None, description="Generate a grid network.")
    file: str | None = Field(
        None, min_length=1, description="A SUMO .net.xml, relative to the scenario file."
    )

    @model_validator(mode="after")
    def _one(self) -> Network:
        exactly_one(self, ("grid", "file"), "a network")
        return self


class Demand(SchemaModel):
    """Traffic demand: random trips whose rate follows a profile."""

    level: Literal["light", "medium", "peak", "directional"] = Field(
        "medium",
        description="light/medium: steady; peak: rises to a morning peak and falls; "
        "directional: peak, mostly in one direction.",
    )
    duration_s: float = Field(
        600.0, gt=0, le=86_400, description="Simulated seconds; the run ends then."
    )
    seed: int | None = Field(None, description="Random seed of the trips; None = scenario seed.")
    scale: float = Field(1.0, gt=0, le=10, description="Multiplies the level's vehicle rate.")


_DEFAULT = Impairments()


class CameraImpairments(SchemaModel):
    """What the cameras get wrong (:mod:`functions.traffic.impairments`); unset = the default."""

    miss_rate: float = Field(
        _DEFAULT.miss_rate,
        ge=0,
        lt=1,
        description="Chance that a vehicle in view goes undetected, per vehicle and frame.",
    )
    ghost_rate: float = Field(
        _DEFAULT.ghost_rate,
        ge=0,
        le=100,
        description="False (car-sized) vehicles per approach frame, on average.",
    )
    jitter_m: float = Field(
        _DEFAULT.jitter_m,
        ge=0,
        le=50,
        description="Standard deviation of a detected vehicle's position error, in metres.",
    )
    occluder_length_m: float = Field(
        _DEFAULT.occluder_length_m,
        gt=0,
        le=100,
        description="Vehicles at least this long (vans, trucks, buses) hide the ones behind.",
    )
    occlusion_m: float = Field(
        _DEFAULT.occlusion_m,
        ge=0,
        le=100,
        description="Metres behind an occluder's rear within which its lane's vehicles "
        "are hidden; 0 = no occlusion.",
    )
    reach_m: float | None = Field(
        _DEFAULT.reach_m,
        gt=0,
        le=1000,
        description="Metres from the stop line the camera sees (rounded to whole cells); "
        "null = the whole frame (240 m).",
    )

    def to_impairments(self) -> Impairments:
        """The renderer's settings."""
        return Impairments(**self.model_dump())


class Cameras(SchemaModel):
    """The junction cameras: which module counts their frames, where the counts go."""

    module: str = Field(
        "counter",
        description="The module the cameras feed: it needs an mqtt source whose topic "
        "the cameras publish on.",
    )
    counts: TopicTemplate = Field(
        "traffic/{site}/counts",
        description="Topic (under no prefix) each junction's counts go to, for the signal "
        "controller; '{site}' is the junction.",
    )
    impairments: CameraImpairments | None = Field(
        default_factory=CameraImpairments,
        description="Occlusion, missed and ghost detections, position jitter and limited "
        "reach of every camera (on by default); null = perfect cameras. The counter's "
        "trainer gets the same settings as '{camera_impairments}'.",
    )

    truth: TopicTemplate | None = Field(
        "traffic/{site}/truth",
        description="Topic (under no prefix) each frame's exact counts go to, truth_delay_s "
        "after the frame (the labels a drift check and retraining use); null = none.",
    )
    truth_delay_s: float = Field(
        3.0, ge=0, le=600, description="Wall seconds between a frame and its ground truth."
    )

    def camera_impairments(self) -> Impairments:
        """The renderer's settings (:meth:`Impairments.none` when null)."""
        if self.impairments is None:
            return Impairments.none()
        return self.impairments.to_impairments()


class TrafficConfig(SchemaModel):
    """The SUMO simulation a traffic scenario drives (its ``simulation:`` block)."""

    network: Network = Field(description="The road network.")
    demand: Demand = Field(default_factory=Demand, description="The traffic demand.")
    step_s: float = Field(1.0, gt=0, le=10, description="Simulated seconds per SUMO step.")
    speedup: float = Field(
        1.0, ge=0, description="Simulated seconds per wall second; 0 = as fast as possible."
    )
    camera_every_s: float = Field(
        1.0, gt=0, description="Each junction's camera frame period, in simulated seconds."
    )
    controller: Literal["adaptive", "fixed", "actuated", "delay_based"] = Field(
        "adaptive",
        description="Who sets the signals: adaptive = the mesh's stream functions; "
        "others are SUMO's own programs.",
    )
    baselines: list[Literal["fixed", "actuated", "delay_based"]] = Field(
        default_factory=list, description="SUMO programs run on the same demand to compare."
    )
    cameras: Cameras | None = Field(
        default_factory=Cameras,
        description="The junction cameras; null = none (SUMO's fallback rotation everywhere).",
    )

    def sites(self) -> list[str]:
        """Junction ids of a grid network (a network file's are read by the plugin)."""
        return self.network.grid.junction_ids() if self.network.grid is not None else []
