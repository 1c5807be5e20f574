"""Serving modules over the Open Inference Protocol.

The OIP codec and its errors, the :class:`RouteTable`, the HTTP
:class:`Gateway`, the :class:`ServingManager` (make-before-break deploys) and
its autoscaler, ``/v1/modules``, and the contracts the layers above implement:
:class:`ReplicaLauncher` (the Ray launcher in :mod:`mesh.ray`),
:class:`AgentInstaller` and :class:`EdgeInference` (the edge in :mod:`mesh.edge`).
The replica process itself is :mod:`mesh.serving.replica`.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.serving._api import create_modules_router
    from mesh.serving._autoscale import AutoscalePolicy, Autoscaler
    from mesh.serving._contract import (
        AgentErrorReply,
        AgentInstaller,
        DeployError,
        HttpProbe,
        ModelArtifact,
        ReplicaFailedError,
        ReplicaHandle,
        ReplicaLauncher,
        ReplicaMqtt,
        ReplicaProbe,
        ReplicaRequest,
        ReplicaStatus,
    )
    from mesh.serving._gateway import EdgeInference, Gateway, LatencyObserver
    from mesh.serving._gateway_app import GatewayApp, create_gateway_app
    from mesh.serving._leases import Lease, LeaseList, PipelineSource
    from mesh.serving._manager import DeploymentView, ServingManager
    from mesh.serving._oip import (
        HEADER_LENGTH,
        InferenceInputError,
        ModelNotReadyError,
        ModelNotServedError,
        ServingError,
        UpstreamError,
        UpstreamTimeoutError,
        decode_request,
        decode_response,
        encode_request,
        encode_response,
    )
    from mesh.serving._routes import (
        AgentEndpoint,
        Endpoint,
        ModuleRoute,
        ReplicaEndpoint,
        RouteTable,
    )

__all__ = [
    "HEADER_LENGTH",
    "AgentEndpoint",
    "AgentErrorReply",
    "AgentInstaller",
    "AutoscalePolicy",
    "Autoscaler",
    "DeployError",
    "DeploymentView",
    "EdgeInference",
    "Endpoint",
    "Gateway",
    "GatewayApp",
    "HttpProbe",
    "InferenceInputError",
    "LatencyObserver",
    "Lease",
    "LeaseList",
    "ModelArtifact",
    "ModelNotReadyError",
    "ModelNotServedError",
    "ModuleRoute",
    "PipelineSource",
    "ReplicaEndpoint",
    "ReplicaFailedError",
    "ReplicaHandle",
    "ReplicaLauncher",
    "ReplicaMqtt",
    "ReplicaProbe",
    "ReplicaRequest",
    "ReplicaStatus",
    "RouteTable",
    "ServingError",
    "ServingManager",
    "UpstreamError",
    "UpstreamTimeoutError",
    "create_gateway_app",
    "create_modules_router",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.serving._api": ("create_modules_router",),
        "mesh.serving._autoscale": (
            "AutoscalePolicy",
            "Autoscaler",
        ),
        "mesh.serving._contract": (
            "AgentErrorReply",
            "AgentInstaller",
            "DeployError",
            "HttpProbe",
            "ModelArtifact",
            "ReplicaFailedError",
            "ReplicaHandle",
            "ReplicaLauncher",
            "ReplicaMqtt",
            "ReplicaProbe",
            "ReplicaRequest",
            "ReplicaStatus",
        ),
        "mesh.serving._gateway": (
            "EdgeInference",
            "Gateway",
            "LatencyObserver",
        ),
        "mesh.serving._gateway_app": (
            "GatewayApp",
            "create_gateway_app",
        ),
        "mesh.serving._leases": (
            "Lease",
            "LeaseList",
            "PipelineSource",
        ),
        "mesh.serving._manager": (
            "DeploymentView",
            "ServingManager",
        ),
        "mesh.serving._oip": (
            "HEADER_LENGTH",
            "InferenceInputError",
            "ModelNotReadyError",
            "ModelNotServedError",
            "ServingError",
            "UpstreamError",
            "UpstreamTimeoutError",
            "decode_request",
            "decode_response",
            "encode_request",
            "encode_response",
        ),
        "mesh.serving._routes": (
            "AgentEndpoint",
            "Endpoint",
            "ModuleRoute",
            "ReplicaEndpoint",
            "RouteTable",
        ),
    },
)
