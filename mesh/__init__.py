"""fogmesh: a serverless function mesh across cloud, fog and edge.

Register functions and modules on an app with decorators, then run them on a
tier-labelled Ray cluster through a :class:`Runner`::

    from mesh import Mesh, Resources

    app = Mesh("traffic")

    @app.function(tier="fog", resources=Resources(cpus=0.5), timeout_s=30)
    def count(site: str) -> int: ...

``import mesh`` never imports Ray: the Ray backend loads when first used.
"""

from ._app import Mesh, RegisteredFunction, RegisteredModule
from ._backend import (
    SITE_LABEL,
    TIER_LABEL,
    BatchResult,
    Call,
    CallResult,
    ComputeBackend,
    NodeInfo,
    TuneResult,
    check_satisfiable,
    connect_backend,
)
from ._errors import (
    BackendError,
    CancelledError,
    ClusterNotRunningError,
    ConfigError,
    FunctionTimeoutError,
    InvalidArgumentsError,
    InvocationError,
    MeshError,
    RemoteFunctionError,
    SpecError,
    StoreError,
    UnknownFunctionError,
    UnsatisfiableError,
)
from ._export import (
    DEFAULT_OPSET,
    ExportError,
    ExportParityError,
    ExportReport,
    InvalidModelError,
    ModelSignature,
    TensorSpec,
    check_parity,
    export_onnx,
)
from ._loader import load_apps
from ._profile import LatencyStat, ModelProfile, ProfileError, ProviderProfile, measure_profile
from ._registry import (
    InvalidRegistrationError,
    Lineage,
    ModelNotFoundError,
    ModelRegistry,
    ModelSummary,
    ModelVersion,
    RegistryError,
    SelectionMetric,
    Stage,
    StageError,
)
from ._report import report
from ._runner import Run, Runner
from ._settings import MeshSettings
from ._specs import (
    COMPUTE_TIERS,
    TIERS,
    BatchSpec,
    Domain,
    FunctionKind,
    FunctionSpec,
    ModuleSpec,
    QoS,
    Resources,
    StreamSpec,
    TuneSpec,
)
from ._store import Deployment, RunRecord, RunStatus, SQLiteStore, Store
from ._streams import LocalBus, MessageBus, StreamWorker, WindowOutcome, topic_matches

__version__ = "0.1.0"

__all__ = [
    "COMPUTE_TIERS",
    "DEFAULT_OPSET",
    "SITE_LABEL",
    "TIERS",
    "TIER_LABEL",
    "BackendError",
    "BatchResult",
    "BatchSpec",
    "Call",
    "CallResult",
    "CancelledError",
    "ClusterNotRunningError",
    "ComputeBackend",
    "ConfigError",
    "Deployment",
    "Domain",
    "ExportError",
    "ExportParityError",
    "ExportReport",
    "FunctionKind",
    "FunctionSpec",
    "FunctionTimeoutError",
    "InvalidArgumentsError",
    "InvalidModelError",
    "InvalidRegistrationError",
    "InvocationError",
    "LatencyStat",
    "Lineage",
    "LocalBus",
    "Mesh",
    "MeshError",
    "MeshSettings",
    "MessageBus",
    "ModelNotFoundError",
    "ModelProfile",
    "ModelRegistry",
    "ModelSignature",
    "ModelSummary",
    "ModelVersion",
    "ModuleSpec",
    "NodeInfo",
    "ProfileError",
    "ProviderProfile",
    "QoS",
    "RegisteredFunction",
    "RegisteredModule",
    "RegistryError",
    "RemoteFunctionError",
    "Resources",
    "Run",
    "RunRecord",
    "RunStatus",
    "Runner",
    "SQLiteStore",
    "SelectionMetric",
    "SpecError",
    "Stage",
    "StageError",
    "Store",
    "StoreError",
    "StreamSpec",
    "StreamWorker",
    "TensorSpec",
    "TuneResult",
    "TuneSpec",
    "UnknownFunctionError",
    "UnsatisfiableError",
    "WindowOutcome",
    "__version__",
    "check_parity",
    "check_satisfiable",
    "connect_backend",
    "export_onnx",
    "load_apps",
    "measure_profile",
    "report",
    "topic_matches",
]
