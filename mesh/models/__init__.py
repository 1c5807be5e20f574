"""Models: ONNX export, latency profiles, the registry and signed artifacts.

:func:`export_onnx` checks the graph and its parity with the framework model;
:func:`measure_profile` times it per execution provider; the
:class:`ModelRegistry` versions models with their lineage and stages; the
:class:`ArtifactStore` keeps the files agents and replicas download, signed
by an :class:`ArtifactSigner`; :func:`create_models_router` is ``/v1/models``;
:class:`FreshData` keeps the inputs agents sampled and their labels, and
:func:`fresh_data` snapshots them for a training function.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.models._api import create_models_router
    from mesh.models._artifacts import (
        ArtifactError,
        ArtifactInfo,
        ArtifactNotFoundError,
        ArtifactSigner,
        ArtifactStore,
        InvalidSignatureError,
        sha256_file,
        verify_signature,
    )
    from mesh.models._export import (
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
    from mesh.models._fresh_data import (
        DataSnapshot,
        FreshData,
        FreshDataError,
        InvalidSampleError,
        fresh_data,
    )
    from mesh.models._profile import (
        LatencyStat,
        ModelProfile,
        ProfileError,
        ProviderProfile,
        measure_profile,
    )
    from mesh.models._registry import (
        InvalidRegistrationError,
        ModelNotFoundError,
        ModelRegistry,
        RegistryError,
        StageError,
    )
    from mesh.models._versions import Lineage, ModelSummary, ModelVersion, SelectionMetric, Stage

__all__ = [
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
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.models._api": ("create_models_router",),
        "mesh.models._artifacts": (
            "ArtifactError",
            "ArtifactInfo",
            "ArtifactNotFoundError",
            "ArtifactSigner",
            "ArtifactStore",
            "InvalidSignatureError",
            "sha256_file",
            "verify_signature",
        ),
        "mesh.models._export": (
            "DEFAULT_OPSET",
            "ExportError",
            "ExportParityError",
            "ExportReport",
            "InvalidModelError",
            "ModelSignature",
            "TensorSpec",
            "check_parity",
            "export_onnx",
        ),
        "mesh.models._fresh_data": (
            "DataSnapshot",
            "FreshData",
            "FreshDataError",
            "InvalidSampleError",
            "fresh_data",
        ),
        "mesh.models._profile": (
            "LatencyStat",
            "ModelProfile",
            "ProfileError",
            "ProviderProfile",
            "measure_profile",
        ),
        "mesh.models._registry": (
            "InvalidRegistrationError",
            "ModelNotFoundError",
            "ModelRegistry",
            "RegistryError",
            "StageError",
        ),
        "mesh.models._versions": (
            "Lineage",
            "ModelSummary",
            "ModelVersion",
            "SelectionMetric",
            "Stage",
        ),
    },
)
