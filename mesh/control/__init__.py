"""Placement control: where each module and each site's pipeline runs.

The :class:`PlacementController` runs the placement engine (:mod:`placement`)
in a reconcile loop and carries out its moves make-before-break through the
:class:`MigrationExecutor`; :class:`Monitors` hold the latency, node and
round-trip series it plans from; the :class:`PlacementStore` records plans,
pins and migrations; :func:`create_placements_router` is ``/v1/placements``.
Ray nodes and edge agents are reached only through this layer's Protocols
(:class:`NodeProbe`, :class:`AgentSource`, :class:`PipelineRouter`, …), which
:mod:`mesh.ray` and :mod:`mesh.edge` implement.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.control._api import create_placements_router
    from mesh.control._controller import PlacementController
    from mesh.control._migrations import (
        MigrationExecutor,
        ModuleDeployer,
        PipelineRouter,
        RequestCounter,
        Target,
    )
    from mesh.control._monitors import Monitors
    from mesh.control._pipeline_sites import PipelineSite
    from mesh.control._pipelines import PipelinePlacer
    from mesh.control._probes import (
        AgentRequests,
        AgentSource,
        CanaryProbe,
        EdgeCanary,
        NodeProbe,
        PathProbe,
        RttProbe,
    )
    from mesh.control._settings import (
        AgentSnapshot,
        ControllerSettings,
        EdgeAgents,
        ModelVersions,
        RoundResult,
        ServedModules,
    )
    from mesh.control._snapshot import NodeSample, NodeState, Snapshot
    from mesh.control._store import (
        DeploymentRecord,
        MigrationRecord,
        Pin,
        PipelineRecord,
        PlacementStore,
        PlanRecord,
    )

__all__ = [
    "AgentRequests",
    "AgentSnapshot",
    "AgentSource",
    "CanaryProbe",
    "ControllerSettings",
    "DeploymentRecord",
    "EdgeAgents",
    "EdgeCanary",
    "MigrationExecutor",
    "MigrationRecord",
    "ModelVersions",
    "ModuleDeployer",
    "Monitors",
    "NodeProbe",
    "NodeSample",
    "NodeState",
    "PathProbe",
    "Pin",
    "PipelinePlacer",
    "PipelineRecord",
    "PipelineRouter",
    "PipelineSite",
    "PlacementController",
    "PlacementStore",
    "PlanRecord",
    "RequestCounter",
    "RoundResult",
    "RttProbe",
    "ServedModules",
    "Snapshot",
    "Target",
    "create_placements_router",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.control._api": ("create_placements_router",),
        "mesh.control._controller": ("PlacementController",),
        "mesh.control._migrations": (
            "MigrationExecutor",
            "ModuleDeployer",
            "PipelineRouter",
            "RequestCounter",
            "Target",
        ),
        "mesh.control._monitors": ("Monitors",),
        "mesh.control._pipeline_sites": ("PipelineSite",),
        "mesh.control._pipelines": ("PipelinePlacer",),
        "mesh.control._probes": (
            "AgentRequests",
            "AgentSource",
            "CanaryProbe",
            "EdgeCanary",
            "NodeProbe",
            "PathProbe",
            "RttProbe",
        ),
        "mesh.control._settings": (
            "AgentSnapshot",
            "ControllerSettings",
            "EdgeAgents",
            "ModelVersions",
            "RoundResult",
            "ServedModules",
        ),
        "mesh.control._snapshot": (
            "NodeSample",
            "NodeState",
            "Snapshot",
        ),
        "mesh.control._store": (
            "DeploymentRecord",
            "MigrationRecord",
            "Pin",
            "PipelineRecord",
            "PlacementStore",
            "PlanRecord",
        ),
    },
)
