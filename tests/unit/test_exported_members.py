"""The public API, pinned: ``mesh.__all__`` (the SDK) and each layer's ``__all__``.

Adding or removing a public name is a decision; these tests make it one (as
httpx's ``tests/test_exported_members.py`` does). Each layer's names resolve
lazily (``mesh.core._lazy``), so they are also checked to resolve at all, to the
object their private module defines, and without importing anything else.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest

import mesh

SDK = [
    "BackendError",
    "BatchResult",
    "Canary",
    "CancelledError",
    "ClusterNotRunningError",
    "ConfigError",
    "Drift",
    "FunctionTimeoutError",
    "InvalidArgumentsError",
    "InvocationError",
    "Mesh",
    "MeshError",
    "MeshSettings",
    "QoS",
    "RemoteFunctionError",
    "Resources",
    "Run",
    "RunRecord",
    "RunStatus",
    "Runner",
    "SQLiteStore",
    "SpecError",
    "StoreError",
    "TuneResult",
    "UnknownFunctionError",
    "UnsatisfiableError",
    "__version__",
    "connect_backend",
    "report",
]

LAYERS: dict[str, list[str]] = {
    "mesh.core": [
        "BackendError",
        "CancelledError",
        "ClusterNotRunningError",
        "ConfigError",
        "FunctionTimeoutError",
        "InvalidArgumentsError",
        "InvocationError",
        "MeshError",
        "MeshSettings",
        "MetricsRegistry",
        "RemoteFunctionError",
        "ServerThread",
        "SpecError",
        "StoreError",
        "UnknownFunctionError",
        "UnsatisfiableError",
        "cover_filters",
        "open_sqlite",
        "serve_asgi",
        "topic_covers",
        "topic_matches",
        "write_transaction",
    ],
    "mesh.sdk": [
        "COMPUTE_TIERS",
        "TIERS",
        "BatchSpec",
        "Canary",
        "Domain",
        "Drift",
        "FunctionKind",
        "FunctionSpec",
        "Mesh",
        "ModuleSpec",
        "QoS",
        "RegisteredFunction",
        "RegisteredModule",
        "Resources",
        "StreamSpec",
        "TuneSpec",
        "drift_topic",
        "load_apps",
        "report",
        "trial_reporter",
    ],
    "mesh.compute": [
        "SITE_LABEL",
        "TIER_LABEL",
        "BatchResult",
        "Call",
        "CallResult",
        "ComputeBackend",
        "Deployment",
        "LocalBus",
        "MessageBus",
        "NodeInfo",
        "Run",
        "RunRecord",
        "RunStatus",
        "Runner",
        "SQLiteStore",
        "Store",
        "StreamWorker",
        "TuneResult",
        "WindowOutcome",
        "check_satisfiable",
    ],
    "mesh.scenario": [
        "Issue",
        "LiveContext",
        "ModuleLatency",
        "PluginLoadError",
        "PrepareContext",
        "ReportSection",
        "Scenario",
        "ScenarioError",
        "ScenarioProblem",
        "ScenarioReport",
        "ScenarioRun",
        "SchemaModel",
        "SimulationPlugin",
        "SimulationReport",
        "SimulationRun",
        "TopicTemplate",
        "WallClock",
        "exactly_one",
        "fault_bands",
        "html_chart",
        "html_table",
        "load_plugin",
        "load_scenario",
        "parse_scenario",
        "run_scenario",
        "scenario_json_schema",
        "scenario_json_schema_text",
        "write_report",
    ],
    "mesh.security": [
        "SCOPES",
        "AuthError",
        "ForbiddenError",
        "TokenAuth",
        "TokenClaims",
        "TokenSigner",
    ],
    "mesh.models": [
        "DEFAULT_OPSET",
        "ArtifactError",
        "ArtifactInfo",
        "ArtifactNotFoundError",
        "ArtifactSigner",
        "ArtifactStore",
        "DataSnapshot",
        "ExportError",
        "ExportParityError",
        "ExportReport",
        "FreshData",
        "FreshDataError",
        "InvalidModelError",
        "InvalidRegistrationError",
        "InvalidSampleError",
        "InvalidSignatureError",
        "LatencyStat",
        "Lineage",
        "ModelNotFoundError",
        "ModelProfile",
        "ModelRegistry",
        "ModelSignature",
        "ModelSummary",
        "ModelVersion",
        "ProfileError",
        "ProviderProfile",
        "RegistryError",
        "SelectionMetric",
        "Stage",
        "StageError",
        "TensorSpec",
        "check_parity",
        "create_models_router",
        "export_onnx",
        "fresh_data",
        "measure_profile",
        "sha256_file",
        "verify_signature",
    ],
    "mesh.serving": [
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
    ],
    "mesh.serving.replica": [
        "ModelRunner",
        "MqttResponder",
        "PipelineHost",
        "ReplicaApp",
        "ReplicaOverloadedError",
        "ReplicaPipelines",
        "ReplicaStats",
        "choose_providers",
    ],
    "mesh.edge": [
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
    ],
    "mesh.edge.broker": [
        "BrokerHandle",
        "BrokerStartError",
        "EmbeddedBroker",
        "MosquittoBroker",
        "MosquittoConfig",
        "find_mosquitto",
        "free_port",
        "start_embedded_broker",
        "start_mosquitto",
    ],
    "mesh.control": [
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
    ],
    "mesh.ray": [
        "LocalCluster",
        "RayBackend",
        "RayNodeProbe",
        "RayReplicaLauncher",
        "prepare_ray_environment",
        "report_trial",
        "start_local_cluster",
    ],
    "mesh.runtime": [
        "ControlPlaneServices",
        "ControlPlaneSettings",
        "MqttProtocol",
        "build_services",
        "cluster_down",
        "cluster_up",
        "connect_backend",
        "read_cluster_file",
        "run_control_plane",
    ],
}


def test_mesh_exports_the_sdk() -> None:
    assert mesh.__all__ == SDK
    for name in mesh.__all__:
        assert hasattr(mesh, name), name


def test_sdk_names_are_defined_in_mesh() -> None:
    for name in mesh.__all__:
        module = getattr(getattr(mesh, name), "__module__", "mesh")
        assert module.startswith("mesh"), (name, module)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_exports(layer: str) -> None:
    package = importlib.import_module(layer)
    assert package.__doc__, f"{layer} says what the layer is for"
    assert package.__all__ == LAYERS[layer]
    for name in package.__all__:
        value = getattr(package, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("mesh."), (layer, name, value.__module__)
    assert set(package.__all__) <= set(dir(package))


def test_an_unknown_name_is_an_attribute_error() -> None:
    import mesh.serving

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        mesh.serving.Nope  # noqa: B018


def test_a_layer_imports_none_of_its_modules_until_asked() -> None:
    # A Ray worker importing mesh.ray._backend, or a replica importing
    # mesh.serving._oip, must not pull in the rest of their layer.
    code = (
        "import json, sys, mesh.serving._oip, mesh.edge, mesh.control, mesh.models; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mesh.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = set(json.loads(out))
    assert "mesh.serving._oip" in loaded
    for heavy in ("mesh.serving._gateway", "mesh.serving._manager", "mesh.edge._bus"):
        assert heavy not in loaded, heavy
    assert not any(m.startswith(("mesh.control.", "mesh.models._api")) for m in loaded), loaded
