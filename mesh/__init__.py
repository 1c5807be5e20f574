"""fogmesh: a serverless function mesh across cloud, fog and edge.

Register functions and modules on an app with decorators, then run them on a
tier-labelled Ray cluster through a :class:`Runner`::

    from mesh import Mesh, Resources

    app = Mesh("traffic")

    @app.function(tier="fog", resources=Resources(cpus=0.5), timeout_s=30)
    def count(site: str) -> int: ...

This namespace is the SDK a user writes against: the app, its options, the
runner and its results, :func:`report`, the settings and the errors. The
operational parts are exported by their layer: :mod:`mesh.serving`,
:mod:`mesh.edge`, :mod:`mesh.models`, :mod:`mesh.control`, … (see ARCHITECTURE.md).

``import mesh`` never imports Ray: the Ray backend loads when first used.
"""

from mesh.compute._backend import BatchResult, TuneResult
from mesh.compute._runner import Run, Runner
from mesh.compute._runs import RunRecord, RunStatus, SQLiteStore
from mesh.core._errors import (
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
from mesh.core._settings import MeshSettings
from mesh.runtime._connect import connect_backend
from mesh.sdk._app import Mesh
from mesh.sdk._report import report
from mesh.sdk._specs import Canary, Drift, QoS, Resources

__version__ = "0.1.0"

__all__ = [
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
