"""Exceptions raised by the mesh.

Every error the mesh raises derives from :class:`MeshError`, so callers can
catch one root. The tree::

    MeshError
    ├── SpecError                  a decorator or spec was misused (at decoration time)
    ├── ConfigError                settings or a file could not be read or validated
    │   └── ScenarioError          (mesh.scenario._load) a scenario file is invalid; every problem
    ├── UnknownFunctionError       no function of that name is registered
    ├── InvalidArgumentsError      arguments do not fit the function's signature
    ├── UnsatisfiableError         no node has the tier / resources asked for
    ├── BackendError               the compute backend (Ray) failed or is not reachable
    │   └── ClusterNotRunningError no cluster is up where one was expected
    ├── InvocationError            a function ran and did not produce a result
    │   ├── RemoteFunctionError    the function raised; carries the remote traceback
    │   ├── FunctionTimeoutError   it ran past ``timeout_s`` and was cancelled
    │   └── CancelledError         it was cancelled by the caller
    ├── StoreError                 the run store could not be read or written
    ├── ServingError               (mesh.serving._oip) an inference request could not be served
    │   ├── InferenceInputError    tensors do not fit the model's signature (HTTP 400)
    │   ├── ModelNotServedError    no such module is served (HTTP 404)
    │   ├── ModelNotReadyError     the module has no ready endpoint yet (HTTP 503)
    │   └── UpstreamError          the replica or agent failed
    │       └── UpstreamTimeoutError
    ├── DeployError                (mesh.serving._manager) a module version could not be deployed
    │   └── ReplicaFailedError
    ├── RegistryError, ExportError, ProfileError   (models: registry, export, profile)
    ├── ArtifactError              (mesh.models._artifacts) store, signature
    ├── EdgeBusError           (mesh.edge._records) MQTT connection, timeout, remote error
    ├── EnrolmentError, BrokerStartError
    └── AuthError, ForbiddenError  (mesh.security._auth) HTTP 401 / 403

The placement engine (package ``placement``) imports nothing of ``mesh``; its
``PlacementError`` derives from ``ValueError``.

Exceptions carry structured attributes; their messages hold the numbers and
names that matter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "BackendError",
    "CancelledError",
    "ClusterNotRunningError",
    "ConfigError",
    "FunctionTimeoutError",
    "InvalidArgumentsError",
    "InvocationError",
    "MeshError",
    "RemoteFunctionError",
    "SpecError",
    "StoreError",
    "UnknownFunctionError",
    "UnsatisfiableError",
]


class MeshError(Exception):
    """Root of every error the mesh raises."""


class SpecError(MeshError, TypeError):
    """A decorator or spec was used wrongly; raised at decoration time."""


class ConfigError(MeshError, ValueError):
    """Settings or a file could not be read or validated."""


class UnknownFunctionError(MeshError, LookupError):
    """No function of that name is registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        hint = _closest(name, self.known)
        listing = ", ".join(self.known) if self.known else "none are registered"
        message = f"unknown function {name!r}"
        if hint:
            message += f"; did you mean {hint!r}?"
        message += f" (registered: {listing})"
        super().__init__(message)


class InvalidArgumentsError(MeshError, TypeError):
    """Arguments do not fit the function's signature.

    Attributes:
        function: the function's name.
        problems: one line per wrong argument.
        signature: the expected signature, as text.
    """

    def __init__(self, function: str, problems: list[str], signature: str) -> None:
        self.function = function
        self.problems = problems
        self.signature = signature
        lines = "; ".join(problems)
        super().__init__(f"bad arguments for {function}{signature}: {lines}")


class UnsatisfiableError(MeshError):
    """No node in the cluster can run the work as asked.

    Attributes:
        function: the function's name.
        requested: what was asked for (tier, resources).
        available: what the cluster's nodes offer, one entry per node.
    """

    def __init__(
        self,
        function: str,
        requested: Mapping[str, object],
        available: list[Mapping[str, object]],
        reason: str,
    ) -> None:
        self.function = function
        self.requested = dict(requested)
        self.available = available
        offer = (
            "; ".join(", ".join(f"{k}={v}" for k, v in node.items()) for node in available)
            or "no live nodes"
        )
        super().__init__(f"cannot run {function}: {reason} (nodes: {offer})")


class BackendError(MeshError, RuntimeError):
    """The compute backend failed or could not be reached."""


class ClusterNotRunningError(BackendError):
    """No cluster is up where one was expected."""


class InvocationError(MeshError, RuntimeError):
    """A function was started and did not produce a result."""

    def __init__(self, message: str, *, function: str, run_id: str) -> None:
        self.function = function
        self.run_id = run_id
        super().__init__(message)


class RemoteFunctionError(InvocationError):
    """The function raised on a remote node.

    Attributes:
        remote_type: the qualified name of the exception it raised.
        remote_message: that exception's message.
        remote_traceback: the traceback as formatted on the remote node.
    """

    def __init__(
        self,
        *,
        function: str,
        run_id: str,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(
            f"{function} raised {remote_type}: {remote_message} (run {run_id})\n"
            f"remote traceback:\n{remote_traceback}",
            function=function,
            run_id=run_id,
        )


class FunctionTimeoutError(InvocationError, TimeoutError):
    """The function ran past its ``timeout_s`` and was cancelled."""

    def __init__(self, *, function: str, run_id: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            f"{function} did not finish within timeout_s={timeout_s:g} and was cancelled "
            f"(run {run_id})",
            function=function,
            run_id=run_id,
        )


class CancelledError(InvocationError):
    """The caller cancelled the function before it finished."""


class StoreError(MeshError, RuntimeError):
    """The run store could not be read or written."""


def _closest(name: str, options: list[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return matches[0] if matches else None
