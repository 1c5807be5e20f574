"""What a user writes functions with: imports only :mod:`mesh.core`.

The :class:`Mesh` app and its decorators, the specs they validate into
(:class:`Resources`, :class:`QoS`, …), loading apps from files, and
:func:`report` for tune trials (a backend installs the reporter with
:func:`trial_reporter`).

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.sdk._app import Mesh
    from mesh.sdk._loader import load_apps
    from mesh.sdk._registered import RegisteredFunction, RegisteredModule
    from mesh.sdk._report import report, trial_reporter
    from mesh.sdk._specs import (
        COMPUTE_TIERS,
        TIERS,
        BatchSpec,
        Canary,
        Domain,
        Drift,
        FunctionKind,
        FunctionSpec,
        ModuleSpec,
        QoS,
        Resources,
        StreamSpec,
        TuneSpec,
        drift_topic,
    )

__all__ = [
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
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.sdk._app": ("Mesh",),
        "mesh.sdk._loader": ("load_apps",),
        "mesh.sdk._registered": (
            "RegisteredFunction",
            "RegisteredModule",
        ),
        "mesh.sdk._report": (
            "report",
            "trial_reporter",
        ),
        "mesh.sdk._specs": (
            "BatchSpec",
            "Canary",
            "Drift",
            "drift_topic",
            "COMPUTE_TIERS",
            "Domain",
            "FunctionKind",
            "FunctionSpec",
            "ModuleSpec",
            "QoS",
            "Resources",
            "StreamSpec",
            "TIERS",
            "TuneSpec",
        ),
    },
)
