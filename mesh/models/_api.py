"""REST API of the model registry: ``/v1/models``.

Mount the router on the control plane's FastAPI app, which answers the errors::

    from mesh.core._http_errors import install_error_handlers
    from mesh.models._api import create_models_router
    from mesh.models._registry import ModelRegistry

    install_error_handlers(app)
    app.include_router(create_models_router(ModelRegistry.open()))

Routes (``{ref}`` is ``v3``, ``production``, ``candidate``, ``latest`` or a sha256 prefix):

=======  ===========================================  ====================================
GET      /v1/models                                   models and their production version
GET      /v1/models/{name}                            one model: versions, stages, lifecycle
GET      /v1/models/{name}/versions                   its versions, oldest first
POST     /v1/models/{name}/versions                   upload an ONNX file: 201 (200 if known)
GET      /v1/models/{name}/versions/{ref}             one version
GET      /v1/models/{name}/versions/{ref}/artifact    the ONNX file, with its signature
POST     /v1/models/{name}/versions/{ref}/promote     make it production
POST     /v1/models/{name}/rollback                   back to the previous production version
=======  ===========================================  ====================================

An upload is the raw file (``Content-Type: application/octet-stream``) or a
``multipart/form-data`` form with a ``file`` part; its metadata comes as query
parameters or form fields (``code_version`` required; ``metric``,
``metric_value``, ``mode``, ``run_id``, ``data_id``, ``hyperparameters`` as a
JSON object). A corrupt or non-ONNX upload gets 422 and registers nothing.

Routes raise errors of the tree (:mod:`mesh.core._errors`); each class declares
its status, and the app's handlers (:func:`mesh.core._http_errors.install_error_handlers`)
answer with it and the one JSON error body: not found 404
(:class:`~mesh.models._registry.ModelNotFoundError`), bad input 422
(:class:`~mesh.models._registry.InvalidRegistrationError`,
:class:`~mesh.models._export.InvalidModelError`), too large 413, stage conflicts
409 (:class:`~mesh.models._registry.StageError`), store failures 503. Auth is injected: pass
``auth``, a function from a scope (``"read"`` or ``"admin"``) to a FastAPI
dependency that raises 401/403; the default is open.
"""

# No `from __future__ import annotations` here: FastAPI reads the route
# signatures, and the dependency aliases made inside create_models_router are
# local names that string annotations could not resolve.

import hashlib
import json
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mesh.core._errors import RequestTooLargeError
from mesh.models._registry import (
    InvalidRegistrationError,
    Lineage,
    ModelRegistry,
    ModelSummary,
    ModelVersion,
    SelectionMetric,
)

__all__ = [
    "LifecycleStepOut",
    "ModelDetailOut",
    "ModelSummaryOut",
    "ModelVersionOut",
    "create_models_router",
]

AuthFactory = Callable[[str], Callable[..., Any]]
NamePath = Annotated[
    str, Path(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,62}$", description="Model name.")
]
RefPath = Annotated[
    str, Path(description="v3, production, candidate, latest, or a sha256 prefix (8+ hex).")
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class TensorSpecOut(_Out):
    """One graph input or output."""

    name: str
    dtype: str = Field(description="numpy element type, e.g. float32.")
    shape: list[int | str | None] = Field(description="Sizes; strings are symbolic (batch).")


class SignatureOut(_Out):
    """Inputs, outputs and the ai.onnx opset."""

    inputs: list[TensorSpecOut]
    outputs: list[TensorSpecOut]
    opset: int


class MetricOut(_Out):
    """The metric a version was selected by."""

    name: str
    value: float
    mode: Literal["min", "max"]


class LineageOut(_Out):
    """Where a version came from."""

    run_id: str | None
    data_id: str | None
    hyperparameters: dict[str, Any]
    extra: dict[str, Any]


class LatencyOut(_Out):
    """Latency of one session run at one batch size."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    runs: int


class ProviderProfileOut(_Out):
    """Cost on one ONNX Runtime execution provider."""

    provider: str
    threads: int
    latency: list[LatencyOut]
    session_rss_delta_bytes: int | None
    load_ms: float


class ProfileOut(_Out):
    """Measured at registration."""

    size_bytes: int
    providers: list[ProviderProfileOut]
    onnxruntime_version: str
    measured_at: float


class ModelVersionOut(_Out):
    """One registered version."""

    name: str
    version: str = Field(description="Readable id, v<number>.")
    number: int
    identity: str = Field(description="<code_version>+<sha256>.")
    code_version: str
    sha256: str
    size_bytes: int
    stage: Literal["candidate", "production", "archived"]
    signature: SignatureOut
    metric: MetricOut | None
    lineage: LineageOut
    profile: ProfileOut
    artifact_signature: str = Field(description="Base64 Ed25519 over (name, version, sha256).")
    key_id: str
    created_at: float


class ModelSummaryOut(_Out):
    """A model and where its versions stand."""

    name: str
    versions: int
    latest: str
    production: str | None
    updated_at: float


class StageEventOut(_Out):
    """One promote or rollback."""

    action: Literal["promote", "rollback"]
    version: str
    previous: str | None
    at: float


class LifecycleStepOut(_Out):
    """One step of the automatic lifecycle (canary, promote, roll back)."""

    model: str
    version: str
    step: str = Field(description="candidate_seen, canary_started, canary_sites, compared, ...")
    at: float
    detail: dict[str, Any] = Field(description="The step's figures and reasons.")


class ModelDetailOut(_Out):
    """A model with every version, its stage history and its lifecycle steps."""

    name: str
    production: str | None
    latest: str
    versions: list[ModelVersionOut]
    history: list[StageEventOut]
    lifecycle: list[LifecycleStepOut] = Field(
        default_factory=list, description="What the canary did with its versions, oldest first."
    )


def version_out(version: ModelVersion) -> ModelVersionOut:
    """The wire form of a version."""
    return ModelVersionOut.model_validate(version.to_dict())


def _summary_out(summary: ModelSummary) -> ModelSummaryOut:
    return ModelSummaryOut(
        name=summary.name,
        versions=summary.versions,
        latest=summary.latest,
        production=summary.production,
        updated_at=summary.updated_at,
    )


def _split_multipart(content_type: str, body: bytes) -> tuple[bytes | None, dict[str, str]]:
    """The ``file`` part and the text fields of a multipart/form-data body (stdlib parser)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise InvalidRegistrationError("malformed multipart/form-data body")
    file: bytes | None = None
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file" or part.get_filename() is not None:
            file = payload
        else:
            fields[name] = payload.decode("utf-8", errors="replace")
    return file, fields


def _registration(params: dict[str, str]) -> dict[str, Any]:
    code_version = params.get("code_version", "").strip()
    if not code_version:
        raise InvalidRegistrationError("code_version is required (a git commit or a source digest)")
    metric: SelectionMetric | None = None
    if params.get("metric"):
        try:
            value = float(params["metric_value"])
        except (KeyError, ValueError):
            raise InvalidRegistrationError("metric needs metric_value, a number") from None
        mode = params.get("mode", "min")
        if mode not in ("min", "max"):
            raise InvalidRegistrationError(f"mode must be 'min' or 'max', got {mode!r}")
        metric = SelectionMetric(params["metric"], value, "min" if mode == "min" else "max")
    hyperparameters: Any = {}
    if params.get("hyperparameters"):
        try:
            hyperparameters = json.loads(params["hyperparameters"])
        except json.JSONDecodeError as exc:
            raise InvalidRegistrationError(
                f"hyperparameters must be a JSON object: {exc}"
            ) from None
        if not isinstance(hyperparameters, dict):
            raise InvalidRegistrationError("hyperparameters must be a JSON object")
    lineage = Lineage(
        run_id=params.get("run_id") or None,
        data_id=params.get("data_id") or None,
        hyperparameters=hyperparameters,
    )
    return {"code_version": code_version, "metric": metric, "lineage": lineage}


def create_models_router(
    registry: ModelRegistry | Callable[[], ModelRegistry],
    *,
    auth: AuthFactory | None = None,
    max_upload_bytes: int = 256 * 1024 * 1024,
) -> APIRouter:
    """The ``/v1/models`` router over ``registry`` (an instance, or a zero-argument provider).

    Args:
        registry: the model registry, or a callable returning it (called per request).
        auth: scope -> FastAPI dependency (``"read"`` for GETs, ``"admin"`` for
            uploads, promote and rollback); None leaves the routes open.
        max_upload_bytes: larger uploads get 413 before anything is parsed.

    Example:
        >>> app = FastAPI()                                               # doctest: +SKIP
        >>> app.include_router(create_models_router(ModelRegistry.open()))  # doctest: +SKIP
    """

    def get_registry() -> ModelRegistry:
        return registry if isinstance(registry, ModelRegistry) else registry()

    def scope(name: str) -> list[Any]:
        return [Depends(auth(name))] if auth is not None else []

    Registry = Annotated[ModelRegistry, Depends(get_registry)]
    router = APIRouter(prefix="/v1/models", tags=["models"])

    @router.get("", response_model=list[ModelSummaryOut], dependencies=scope("read"))
    def list_models(reg: Registry) -> list[ModelSummaryOut]:
        """Every model with its latest and production version."""
        return [_summary_out(s) for s in reg.list_models()]

    @router.get("/{name}", response_model=ModelDetailOut, dependencies=scope("read"))
    def get_model(name: NamePath, reg: Registry) -> ModelDetailOut:
        """One model: every version and the history of its stages."""
        versions = reg.versions(name)
        production = next((v.version for v in versions if v.stage == "production"), None)
        return ModelDetailOut(
            name=name,
            production=production,
            latest=versions[-1].version,
            versions=[version_out(v) for v in versions],
            history=[StageEventOut.model_validate(e) for e in reg.history(name)],
            lifecycle=[
                LifecycleStepOut.model_validate(s.to_dict()) for s in reg.lifecycle.steps(name)
            ],
        )

    @router.get(
        "/{name}/versions", response_model=list[ModelVersionOut], dependencies=scope("read")
    )
    def list_versions(name: NamePath, reg: Registry) -> list[ModelVersionOut]:
        """Every version of a model, oldest first."""
        return [version_out(v) for v in reg.versions(name)]

    @router.post(
        "/{name}/versions",
        response_model=ModelVersionOut,
        status_code=status.HTTP_201_CREATED,
        dependencies=scope("admin"),
        responses={
            200: {"description": "Already registered: the existing version."},
            413: {"description": "Upload too large."},
            422: {"description": "Not a valid ONNX model; nothing registered."},
        },
    )
    async def upload_version(
        name: NamePath, request: Request, response: Response, reg: Registry
    ) -> ModelVersionOut:
        """Register an uploaded ONNX file as a candidate version."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise RequestTooLargeError(f"upload over {max_upload_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        params = {k: v for k, v in request.query_params.items()}
        content_type = request.headers.get("content-type", "")
        data = body
        if content_type.lower().startswith("multipart/"):
            file, fields = _split_multipart(content_type, body)
            if file is None:
                raise InvalidRegistrationError("multipart upload without a 'file' part")
            data, params = file, {**fields, **params}
        options = _registration(params)
        known = reg.find(name, options["code_version"], hashlib.sha256(data).hexdigest())
        if known is not None:
            response.status_code = status.HTTP_200_OK
            return version_out(known)
        version = await run_in_threadpool(lambda: reg.register(name, data, **options))
        response.headers["Location"] = f"/v1/models/{name}/versions/{version.version}"
        return version_out(version)

    @router.get(
        "/{name}/versions/{ref}", response_model=ModelVersionOut, dependencies=scope("read")
    )
    def get_version(name: NamePath, ref: RefPath, reg: Registry) -> ModelVersionOut:
        """One version by id, stage or sha256 prefix."""
        return version_out(reg.get(name, ref))

    @router.get(
        "/{name}/versions/{ref}/artifact",
        response_class=FileResponse,
        dependencies=scope("read"),
        responses={
            200: {
                "content": {"application/octet-stream": {}},
                "description": "The ONNX file; X-Artifact-* headers carry its "
                "sha256, signature and key id.",
            }
        },
    )
    def download_artifact(name: NamePath, ref: RefPath, reg: Registry) -> FileResponse:
        """The version's ONNX file, with its sha256 and signature in headers."""
        version, path = reg.artifact_path(name, ref)
        return FileResponse(
            path,
            media_type="application/octet-stream",
            filename=f"{name}-{version.version}.onnx",
            headers={
                "X-Artifact-Sha256": version.sha256,
                "X-Artifact-Signature": version.artifact_signature,
                "X-Artifact-Key-Id": version.key_id,
                "X-Model-Version": version.version,
            },
        )

    @router.post(
        "/{name}/versions/{ref}/promote",
        response_model=ModelVersionOut,
        dependencies=scope("admin"),
    )
    def promote(name: NamePath, ref: RefPath, reg: Registry) -> ModelVersionOut:
        """Make a version production; the one it replaces is where rollback returns."""
        return version_out(reg.promote(name, ref))

    @router.post("/{name}/rollback", response_model=ModelVersionOut, dependencies=scope("admin"))
    def rollback(name: NamePath, reg: Registry) -> ModelVersionOut:
        """Return to the previous production version (409 when there is none)."""
        return version_out(reg.rollback(name))

    return router
