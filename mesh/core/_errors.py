"""Exceptions raised by the mesh: one tree, one root, one HTTP status per class.

Every error the mesh raises derives from :class:`MeshError`, so callers can catch
one root. Each layer defines its own errors in its own module (the module is named
in parentheses below) and derives them from this tree. The tree, with the HTTP status
each class answers with when it reaches a client (blank: inherited from the parent)::

    MeshError                            500  the root
    ├── SpecError                             a decorator or spec was misused (at decoration time)
    ├── ConfigError                           settings or a file could not be read or validated
    │   └── ScenarioError                     (scenario._load) a scenario file is invalid
    ├── UnknownFunctionError             404  no function of that name is registered
    ├── InvalidArgumentsError            422  arguments do not fit the function's signature
    ├── UnsatisfiableError               409  no node has the tier / resources asked for
    ├── BackendError                     503  the compute backend (Ray) failed or is not reachable
    │   └── ClusterNotRunningError            no cluster is up where one was expected
    ├── InvocationError                       a function ran and did not produce a result
    │   ├── RemoteFunctionError               the function raised; carries the remote traceback
    │   ├── FunctionTimeoutError         504  it ran past ``timeout_s`` and was cancelled
    │   └── CancelledError                    it was cancelled by the caller
    ├── StoreError                       503  the run store could not be read or written
    │   └── StoreDamagedError                 (core._sqlite_check) mesh.db failed its check
    ├── RequestError                     400  the HTTP request itself is wrong
    │   ├── NotFoundError                404  no such route, or no such thing at it
    │   ├── MethodNotAllowedError        405  the route does not take that method
    │   ├── RequestTimeoutError          408  the request was not sent within the read timeout
    │   ├── RequestTooLargeError         413  the body is over the limit
    │   └── InvalidRequestError          422  path, query or body do not validate
    ├── AuthError                        401  (security._auth) no, bad, forged or expired token
    │   └── ArtifactAuthError                 (edge._artifact_api) no valid agent credential
    ├── ForbiddenError                   403  (security._auth) the token lacks the scope
    ├── ServingError                     500  (serving._oip) an inference could not be served
    │   ├── InferenceInputError          400  tensors do not fit the model's signature
    │   ├── ModelNotServedError          404  no such module or version is served
    │   ├── ModelNotReadyError           503  known, but no replica or agent is ready
    │   ├── OverloadedError              503  the replica's or agent's queue is full; try another
    │   │   └── ReplicaOverloadedError        (serving.replica._batching)
    │   └── UpstreamError                502  the replica or agent failed
    │       └── UpstreamTimeoutError     504  it did not answer in time
    ├── UpstreamConnectionError          502  (serving._upstream) a connection to a replica broke
    ├── DeployError                      409  (serving._contract) a version was not put in service
    │   └── ReplicaFailedError                a replica died for good or failed to start
    ├── MigrationBusyError               409  (control._migrations) the module is already moving
    ├── RegistryError                    503  (models._registry) the model registry failed
    │   ├── ModelNotFoundError           404  no model, version or stage matches
    │   ├── InvalidRegistrationError     422  a malformed name, code version, metric or lineage
    │   └── StageError                   409  e.g. a rollback with nothing to roll back to
    ├── InvalidModelError                422  (models._export) bytes that are not a valid ONNX model
    ├── ExportError                           (models._export) torch could not export the model
    │   └── ExportParityError                 ONNX Runtime's outputs differ from torch's
    ├── ProfileError                     503  (models._profile) no ONNX Runtime to profile with
    ├── FreshDataError                   404  (models._fresh_data) no labelled fresh samples yet
    │   └── InvalidSampleError           422  a sampled input or a label is malformed
    ├── ArtifactError                         (models._artifacts) store, signing, verification
    │   ├── ArtifactNotFoundError        404  no artifact with that sha256
    │   └── InvalidSignatureError             a signature does not verify
    ├── EdgeBusError                     502  (edge._records) the edge bus could not do it
    │   ├── EdgeConnectionError               the broker refused or cannot be reached
    │   ├── EdgeRequestTimeoutError      504  no reply within ``timeout_s``
    │   └── EdgeInferenceError                the agent answered with an error code
    ├── EnrolmentError                        (edge._passwords) an agent could not be enrolled
    ├── BrokerStartError                      (edge.broker._handle) the MQTT broker did not start
    └── ControlPlaneError                     (cli._modules) the CLI's client: the control plane
                                              is down or answered with an error

The status is declared once, on the class (:attr:`MeshError.http_status`), and
inherited down the tree. Why on the class and not in a table: this is the lowest
layer and cannot import the serving, model or edge errors, while a class can say
what it means to a client where it is defined. :mod:`mesh.core._http_errors` is
the one place that reads it: every HTTP server of the mesh turns exceptions into
a status and the one JSON body there, and ``tests/unit/test_errors.py`` pins the
status of every class in this tree (a new class fails it until it is listed).

An agent's errors arrive over MQTT as an ``edge_agent.protocol.ErrorCode``; the
gateway turns each code into one class of this tree
(:data:`mesh.serving._agent_errors.AGENT_ERRORS`), so they answer clients through the
same contract (``overloaded`` is 503, as an overloaded replica is).

The placement engine (package ``placement``) and the edge agent (``edge_agent``)
import nothing of ``mesh``; their errors derive from ``ValueError`` and
``RuntimeError``, and the mesh turns them into errors of this tree where they
cross into it.

Exceptions carry structured attributes; their messages hold the numbers and
names that matter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

__all__ = [
    "BackendError",
    "CancelledError",
    "ClusterNotRunningError",
    "ConfigError",
    "FunctionTimeoutError",
    "InvalidArgumentsError",
    "InvalidRequestError",
    "InvocationError",
    "MeshError",
    "MethodNotAllowedError",
    "NotFoundError",
    "RemoteFunctionError",
    "RequestError",
    "RequestTooLargeError",
    "SpecError",
    "StoreError",
    "UnknownFunctionError",
    "UnsatisfiableError",
]


class MeshError(Exception):
    """Root of every error the mesh raises.

    Attributes:
        http_status: the status a client gets for this error (declared once per
            class, inherited; read by :func:`mesh.core._http_errors.error_status`).
        challenge: the ``WWW-Authenticate`` value sent with it, for auth errors.
    """

    http_status: ClassVar[int] = 500
    challenge: ClassVar[str | None] = None


class SpecError(MeshError, TypeError):
    """A decorator or spec was used wrongly; raised at decoration time."""


class ConfigError(MeshError, ValueError):
    """Settings or a file could not be read or validated."""


class UnknownFunctionError(MeshError, LookupError):
    """No function of that name is registered."""

    http_status = 404

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

    http_status = 422

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

    http_status = 409

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

    http_status = 503


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

    http_status = 504

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

    http_status = 503


class RequestError(MeshError, ValueError):
    """The HTTP request itself is wrong, before any mesh logic ran (HTTP 400)."""

    http_status = 400


class NotFoundError(RequestError, LookupError):
    """No such route, or nothing by that name at it (HTTP 404)."""

    http_status = 404


class MethodNotAllowedError(RequestError):
    """The route does not take that method (HTTP 405)."""

    http_status = 405


class RequestTimeoutError(RequestError):
    """The client did not send the whole request within the read timeout (HTTP 408)."""

    http_status = 408


class RequestTooLargeError(RequestError):
    """The request body is over the limit (HTTP 413)."""

    http_status = 413


class InvalidRequestError(RequestError):
    """The path, query or body do not validate; the message says what was expected (HTTP 422)."""

    http_status = 422


def _closest(name: str, options: list[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return matches[0] if matches else None
