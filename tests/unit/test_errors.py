"""The error contract: one tree under MeshError, one HTTP status per class, one JSON body.

The table below lists every class of the tree with the status a client gets for it.
A new class fails :func:`test_every_class_of_the_tree_is_in_the_table` until it is
listed here (and drawn in the tree of ``mesh/core/_errors.py``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from typing import Any

import pytest

import mesh
from edge_agent.protocol import ErrorCode
from mesh.core._errors import MeshError, NotFoundError
from mesh.core._http_errors import (
    INTERNAL_ERROR,
    error_body,
    error_document,
    error_headers,
    error_status,
)
from mesh.edge._records import EdgeInferenceError
from mesh.security._auth import AuthError
from mesh.serving._agent_errors import AGENT_ERRORS, agent_error

#: Every MeshError subclass (by module and name) and the status it answers with.
STATUSES: dict[str, int] = {
    "mesh.core._errors.MeshError": 500,
    "mesh.core._errors.SpecError": 500,
    "mesh.core._errors.ConfigError": 500,
    "mesh.scenario._load.ScenarioError": 500,
    "mesh.control._migrations.MigrationBusyError": 409,
    "mesh.core._errors.UnknownFunctionError": 404,
    "mesh.core._errors.InvalidArgumentsError": 422,
    "mesh.core._errors.UnsatisfiableError": 409,
    "mesh.core._errors.BackendError": 503,
    "mesh.core._errors.ClusterNotRunningError": 503,
    "mesh.core._errors.InvocationError": 500,
    "mesh.core._errors.RemoteFunctionError": 500,
    "mesh.core._errors.FunctionTimeoutError": 504,
    "mesh.core._errors.CancelledError": 500,
    "mesh.core._errors.StoreError": 503,
    "mesh.core._sqlite_check.StoreDamagedError": 503,
    "mesh.core._errors.RequestError": 400,
    "mesh.core._errors.NotFoundError": 404,
    "mesh.core._errors.MethodNotAllowedError": 405,
    "mesh.core._errors.RequestTimeoutError": 408,
    "mesh.core._errors.RequestTooLargeError": 413,
    "mesh.core._errors.InvalidRequestError": 422,
    "mesh.security._auth.AuthError": 401,
    "mesh.edge._artifact_api.ArtifactAuthError": 401,
    "mesh.security._auth.ForbiddenError": 403,
    "mesh.serving._oip.ServingError": 500,
    "mesh.serving._oip.InferenceInputError": 400,
    "mesh.serving._oip.ModelNotServedError": 404,
    "mesh.serving._oip.ModelNotReadyError": 503,
    "mesh.serving._oip.OverloadedError": 503,
    "mesh.serving.replica._batching.ReplicaOverloadedError": 503,
    "mesh.serving._oip.UpstreamError": 502,
    "mesh.serving._oip.UpstreamTimeoutError": 504,
    "mesh.serving._upstream.UpstreamConnectionError": 502,
    "mesh.serving._contract.DeployError": 409,
    "mesh.serving._contract.ReplicaFailedError": 409,
    "mesh.models._registry.RegistryError": 503,
    "mesh.models._registry.ModelNotFoundError": 404,
    "mesh.models._registry.InvalidRegistrationError": 422,
    "mesh.models._registry.StageError": 409,
    "mesh.models._export.InvalidModelError": 422,
    "mesh.models._export.ExportError": 500,
    "mesh.models._export.ExportParityError": 500,
    "mesh.models._profile.ProfileError": 503,
    "mesh.models._fresh_data.FreshDataError": 404,
    "mesh.models._fresh_data.InvalidSampleError": 422,
    "mesh.models._artifacts.ArtifactError": 500,
    "mesh.models._artifacts.ArtifactNotFoundError": 404,
    "mesh.models._artifacts.InvalidSignatureError": 500,
    "mesh.edge._records.EdgeBusError": 502,
    "mesh.edge._records.EdgeConnectionError": 502,
    "mesh.edge._records.EdgeRequestTimeoutError": 504,
    "mesh.edge._records.EdgeInferenceError": 502,
    "mesh.edge._passwords.EnrolmentError": 500,
    "mesh.edge.broker._handle.BrokerStartError": 500,
    "mesh.cli._modules.ControlPlaneError": 500,
}

#: What a client of the gateway gets for each error code an agent can answer with.
AGENT_STATUSES: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.BAD_INPUT: (400, "InferenceInputError"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "RequestTooLargeError"),
    ErrorCode.UNKNOWN_MODULE: (503, "ModelNotReadyError"),
    ErrorCode.NOT_READY: (503, "ModelNotReadyError"),
    ErrorCode.OVERLOADED: (503, "OverloadedError"),
    ErrorCode.EXPIRED: (504, "UpstreamTimeoutError"),
    ErrorCode.MALFORMED: (502, "UpstreamError"),
    ErrorCode.SCHEMA_VERSION: (502, "UpstreamError"),
    ErrorCode.BAD_REQUEST: (502, "UpstreamError"),
    ErrorCode.INTEGRITY: (502, "UpstreamError"),
    ErrorCode.DOWNLOAD: (502, "UpstreamError"),
    ErrorCode.UNSUPPORTED: (502, "UpstreamError"),
    ErrorCode.OFFLOAD_FAILED: (502, "UpstreamError"),
    ErrorCode.INTERNAL: (502, "UpstreamError"),
}


def _import_all_of_mesh() -> None:
    for info in pkgutil.walk_packages(mesh.__path__, "mesh."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def _tree(cls: type[MeshError]) -> list[type[MeshError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_tree(sub))
    return out


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _bare(cls: type[MeshError]) -> MeshError:
    """An instance without running ``__init__`` (the constructors differ; the status does not)."""
    base: Any = OSError if issubclass(cls, OSError) else BaseException  # the C layout's owner
    instance: MeshError = base.__new__(cls)
    return instance


def test_every_class_of_the_tree_is_in_the_table() -> None:
    _import_all_of_mesh()
    found = {_name(cls) for cls in _tree(MeshError) if cls.__module__.startswith("mesh.")}
    assert found - STATUSES.keys() == set(), "MeshError subclasses without an expected status"
    assert STATUSES.keys() - found == set(), "table entries that are no MeshError subclass"


@pytest.mark.parametrize(("name", "status"), sorted(STATUSES.items()))
def test_each_class_answers_its_one_status(name: str, status: int) -> None:
    module, _, attr = name.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    exc = _bare(cls)
    assert error_status(exc) == status
    document = error_document(exc)
    assert document == {"error": document["error"], "type": cls.__name__, "status": status}


def _drawn_tree() -> dict[str, tuple[str | None, int | None]]:
    """The tree in mesh/core/_errors.py's docstring: name -> (parent, drawn status or None)."""
    from mesh.core import _errors

    drawn: dict[str, tuple[str | None, int | None]] = {}
    parents: list[str] = []
    for line in (_errors.__doc__ or "").splitlines():
        match = re.match(r"^    ([│├└─ ]*)([A-Z]\w+)\s+(\d{3})?", line)
        if match is None:
            continue
        prefix, name, status = match.groups()
        depth = len(prefix) // 4
        del parents[depth:]
        drawn[name] = (parents[-1] if parents else None, int(status) if status else None)
        parents.append(name)
    return drawn


def test_the_tree_is_drawn_true_in_the_root_module() -> None:
    _import_all_of_mesh()
    drawn = _drawn_tree()
    classes = {c.__name__: c for c in _tree(MeshError) if c.__module__.startswith("mesh.")}
    assert set(drawn) == set(classes), "the tree in mesh/core/_errors.py differs from the classes"
    for name, (parent, status) in drawn.items():
        cls = classes[name]
        if parent is not None:
            assert issubclass(cls, classes[parent]), f"{name} is drawn under {parent}"
        # A status is drawn where the class declares one; blank means inherited.
        declared = "http_status" in vars(cls)
        assert (status is not None) == declared, f"{name}: drawn {status}, declared {declared}"
        if status is not None:
            assert cls.http_status == status, f"{name} is drawn {status}, is {cls.http_status}"


def test_the_body_is_oip_compatible_and_names_type_and_status() -> None:
    exc = NotFoundError("no route GET /x")
    assert json.loads(error_body(exc)) == {
        "error": "no route GET /x",
        "type": "NotFoundError",
        "status": 404,
    }
    assert error_headers(exc) == []


def test_anything_else_is_a_500_internal_error() -> None:
    exc = KeyError("shape")
    assert error_status(exc) == 500
    assert error_document(exc) == {
        "error": "KeyError: 'shape'",
        "type": INTERNAL_ERROR,
        "status": 500,
    }


def test_auth_errors_carry_their_challenge() -> None:
    assert error_headers(AuthError("missing token")) == [
        (b"www-authenticate", b'Bearer realm="fogmesh"')
    ]


def test_every_agent_error_code_maps_through_the_same_contract() -> None:
    assert set(AGENT_STATUSES) == set(ErrorCode), "an ErrorCode without an expected status"
    assert set(AGENT_ERRORS) == set(ErrorCode), "an ErrorCode the gateway does not map"
    for code, (status, kind) in AGENT_STATUSES.items():
        reply = EdgeInferenceError(
            module="m", node="cam-1", code=code.value, message="why", expected=["x: FP32[-1,4]"]
        )
        exc = agent_error(reply, "m", "cam-1")
        assert (error_status(exc), type(exc).__name__) == (status, kind), code
        assert "why" in str(exc)


def test_an_unknown_agent_error_code_is_an_upstream_failure() -> None:
    reply = EdgeInferenceError(module="m", node="cam-1", code="from_the_future", message="?")
    exc: Any = agent_error(reply, "m", "cam-1")
    assert error_status(exc) == 502 and exc.node == "cam-1" and exc.model == "m"
