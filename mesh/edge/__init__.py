"""The control plane's MQTT side: everything that talks to edge agents.

:class:`EdgeBus` (the agents' registry, requests, events and subscriptions),
the :class:`EdgeInstaller` (serving's ``AgentInstaller``; pipeline routes),
the :class:`SourceHandover`, enrolment, and the artifact endpoint agents
download from. The brokers are :mod:`mesh.edge.broker`. With :mod:`mesh.serving.replica`
and :mod:`edge_agent`, the only code that imports paho.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.edge._agent_store import AgentRecord, EnrolmentStore
    from mesh.edge._artifact_api import (
        ArtifactServer,
        UrlSigner,
        artifact_router,
        create_artifact_app,
        serve_in_thread,
    )
    from mesh.edge._bus import EdgeBus
    from mesh.edge._enrolment import (
        BrokerCredentials,
        EdgeSettings,
        EnrolmentError,
        EnrolmentResult,
        control_plane_credentials,
        enroll,
        revoke,
    )
    from mesh.edge._handover import SourceHandover
    from mesh.edge._install import EdgeInstaller, offload_target
    from mesh.edge._records import (
        AgentView,
        EdgeBusError,
        EdgeBusStats,
        EdgeConnectionError,
        EdgeInferenceError,
        EdgeRequestTimeoutError,
        HealthSink,
        HeartbeatSample,
        InferResult,
    )
    from mesh.edge._registry import AgentRegistry

__all__ = [
    "AgentRecord",
    "AgentRegistry",
    "AgentView",
    "ArtifactServer",
    "BrokerCredentials",
    "EdgeBus",
    "EdgeBusError",
    "EdgeBusStats",
    "EdgeConnectionError",
    "EdgeInferenceError",
    "EdgeInstaller",
    "EdgeRequestTimeoutError",
    "EdgeSettings",
    "EnrolmentError",
    "EnrolmentResult",
    "EnrolmentStore",
    "HealthSink",
    "HeartbeatSample",
    "InferResult",
    "SourceHandover",
    "UrlSigner",
    "artifact_router",
    "control_plane_credentials",
    "create_artifact_app",
    "enroll",
    "offload_target",
    "revoke",
    "serve_in_thread",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.edge._agent_store": (
            "AgentRecord",
            "EnrolmentStore",
        ),
        "mesh.edge._artifact_api": (
            "ArtifactServer",
            "UrlSigner",
            "artifact_router",
            "create_artifact_app",
            "serve_in_thread",
        ),
        "mesh.edge._bus": ("EdgeBus",),
        "mesh.edge._enrolment": (
            "BrokerCredentials",
            "EdgeSettings",
            "EnrolmentError",
            "EnrolmentResult",
            "control_plane_credentials",
            "enroll",
            "revoke",
        ),
        "mesh.edge._handover": ("SourceHandover",),
        "mesh.edge._install": (
            "EdgeInstaller",
            "offload_target",
        ),
        "mesh.edge._records": (
            "AgentView",
            "EdgeBusError",
            "EdgeBusStats",
            "EdgeConnectionError",
            "EdgeInferenceError",
            "EdgeRequestTimeoutError",
            "HealthSink",
            "HeartbeatSample",
            "InferResult",
        ),
        "mesh.edge._registry": ("AgentRegistry",),
    },
)
