"""Running functions: the :class:`ComputeBackend` Protocol and what it returns.

The :class:`Runner` (argument checks, satisfiability, retries, timeouts) and
its run store, and stream workers. The Ray implementation of the Protocol is
:mod:`mesh.ray`, above this layer; unit tests use an in-memory fake.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.compute._backend import (
        SITE_LABEL,
        TIER_LABEL,
        BatchResult,
        Call,
        CallResult,
        ComputeBackend,
        NodeInfo,
        TuneResult,
        check_satisfiable,
    )
    from mesh.compute._runner import Run, Runner
    from mesh.compute._runs import Deployment, RunRecord, RunStatus, SQLiteStore, Store
    from mesh.compute._streams import LocalBus, MessageBus, StreamWorker, WindowOutcome

__all__ = [
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
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.compute._backend": (
            "BatchResult",
            "Call",
            "CallResult",
            "ComputeBackend",
            "NodeInfo",
            "SITE_LABEL",
            "TIER_LABEL",
            "TuneResult",
            "check_satisfiable",
        ),
        "mesh.compute._runner": (
            "Run",
            "Runner",
        ),
        "mesh.compute._runs": (
            "Deployment",
            "RunRecord",
            "RunStatus",
            "SQLiteStore",
            "Store",
        ),
        "mesh.compute._streams": (
            "LocalBus",
            "MessageBus",
            "StreamWorker",
            "WindowOutcome",
        ),
    },
)
