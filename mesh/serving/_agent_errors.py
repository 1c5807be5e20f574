"""What an edge agent's error reply is to the gateway's client: one class of the error tree.

An agent's error comes back over MQTT as an ``edge_agent.protocol.ErrorCode``;
:data:`AGENT_ERRORS` turns each code into one class of :mod:`mesh.core._errors`
(so one HTTP status): ``overloaded`` is 503 like a replica's, ``expired`` 504.

Example:
    >>> class Reply(Exception):
    ...     code, expected = "overloaded", ()
    >>> agent_error(Reply("queue full"), "counter", "cam-1").http_status
    503
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from edge_agent.protocol import ErrorCode
from mesh.core._errors import MeshError, RequestTooLargeError
from mesh.serving._contract import AgentErrorReply
from mesh.serving._oip import (
    InferenceInputError,
    ModelNotReadyError,
    OverloadedError,
    UpstreamError,
    UpstreamTimeoutError,
)

__all__ = ["AGENT_ERRORS", "AgentErrorFactory", "agent_error"]

#: Turns an agent's error into the error its client gets: (message, module, agent, expected).
AgentErrorFactory = Callable[[str, str, str, Sequence[str]], MeshError]


def _as(kind: type[ModelNotReadyError | OverloadedError | UpstreamError]) -> AgentErrorFactory:
    return lambda message, module, agent, _expected: kind(message, model=module, node=agent)


#: What each ``edge_agent.protocol.ErrorCode`` of an agent's reply is to the gateway's
#: client: one class of the error tree, so one HTTP status.
AGENT_ERRORS: Mapping[ErrorCode, AgentErrorFactory] = {
    # The client's tensors do not fit (400) or are too big for the agent (413).
    ErrorCode.BAD_INPUT: lambda message, module, _agent, expected: InferenceInputError(
        module, message, expected
    ),
    ErrorCode.PAYLOAD_TOO_LARGE: lambda message, *_: RequestTooLargeError(message),
    # Routed there, but not loaded (yet) or stopping: 503, like a replica not ready.
    ErrorCode.UNKNOWN_MODULE: _as(ModelNotReadyError),
    ErrorCode.NOT_READY: _as(ModelNotReadyError),
    # The module's queue on the agent is full: 503, like an overloaded replica.
    ErrorCode.OVERLOADED: _as(OverloadedError),
    # The request's deadline passed on the agent.
    ErrorCode.EXPIRED: _as(UpstreamTimeoutError),
    # The agent refused what the gateway sent, or failed: 502.
    ErrorCode.MALFORMED: _as(UpstreamError),
    ErrorCode.SCHEMA_VERSION: _as(UpstreamError),
    ErrorCode.BAD_REQUEST: _as(UpstreamError),
    ErrorCode.INTEGRITY: _as(UpstreamError),
    ErrorCode.DOWNLOAD: _as(UpstreamError),
    ErrorCode.UNSUPPORTED: _as(UpstreamError),
    ErrorCode.OFFLOAD_FAILED: _as(UpstreamError),
    ErrorCode.INTERNAL: _as(UpstreamError),
}


def agent_error(exc: AgentErrorReply, module: str, agent: str) -> MeshError:
    """The error the gateway's client gets for an agent's error reply (:data:`AGENT_ERRORS`).

    A code this gateway does not know (a newer agent) is an upstream failure (502).
    """
    try:
        factory = AGENT_ERRORS[ErrorCode(exc.code)]
    except (ValueError, KeyError):
        factory = _as(UpstreamError)
    return factory(str(exc), module, agent, exc.expected)
