"""The replica process: one model behind an OIP server, with batching.

:class:`ReplicaApp` serves ``/v2`` on its own socket; :class:`MqttResponder`
answers agents' offloaded requests and runs the pipelines handed over to it
(:class:`ReplicaPipelines`). Ray-agnostic: :mod:`mesh.ray` runs one in an actor.

Like every layer's ``__init__``, this one imports nothing itself: each name
loads from its private module on first use (:mod:`mesh.core._lazy`).
"""

from typing import TYPE_CHECKING

from mesh.core._lazy import lazy_exports

if TYPE_CHECKING:
    from mesh.serving.replica._batching import ReplicaOverloadedError
    from mesh.serving.replica._mqtt import MqttResponder
    from mesh.serving.replica._pipelines import PipelineHost, ReplicaPipelines
    from mesh.serving.replica._server import ModelRunner, ReplicaApp, choose_providers
    from mesh.serving.replica._stats import ReplicaStats

__all__ = [
    "ModelRunner",
    "MqttResponder",
    "PipelineHost",
    "ReplicaApp",
    "ReplicaOverloadedError",
    "ReplicaPipelines",
    "ReplicaStats",
    "choose_providers",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "mesh.serving.replica._batching": ("ReplicaOverloadedError",),
        "mesh.serving.replica._mqtt": ("MqttResponder",),
        "mesh.serving.replica._pipelines": (
            "PipelineHost",
            "ReplicaPipelines",
        ),
        "mesh.serving.replica._server": (
            "ModelRunner",
            "ReplicaApp",
            "choose_providers",
        ),
        "mesh.serving.replica._stats": ("ReplicaStats",),
    },
)
