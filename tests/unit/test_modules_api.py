"""`/v1/modules` over a fake serving manager: list, deploy, undeploy, errors and scopes."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from mesh.core._errors import BackendError, MeshError, UnsatisfiableError
from mesh.models._registry import ModelNotFoundError
from mesh.security._auth import TokenSigner
from mesh.security._token_auth import TokenAuth
from mesh.serving._api import create_modules_router
from mesh.serving._gateway import Gateway
from mesh.serving._gateway_app import create_gateway_app
from mesh.serving._manager import DeployError, ReplicaStatus
from mesh.serving._routes import ModuleRoute, ReplicaEndpoint, RouteTable
from tests.support.http_errors import assert_error

SIGNER = TokenSigner(b"m" * 32)


class FakeManager:
    """Records deploys; publishes a one-replica route per deploy."""

    def __init__(self) -> None:
        self.routes = RouteTable()
        self.specs: list[Any] = []
        self.fail: Exception | None = None

    def deploy(
        self,
        spec: Any,
        version: Any = "production",
        *,
        tier: str | None = None,
        site: str | None = None,
        replicas: int | None = None,
        batching: str = "auto",
    ) -> ModuleRoute:
        if self.fail is not None:
            raise self.fail
        self.specs.append((spec, version, tier, site, replicas))
        endpoint = ReplicaEndpoint(f"{spec.name}-r1", "node-fog-1", "127.0.0.1", 9, "v1")
        return self.routes.set(
            spec.name, "v1", (endpoint,), tier=tier or "fog", slo_ms=spec.qos.p95_latency_ms
        )

    def deploy_to_agent(
        self, spec: Any, agent_id: str, version: Any = "production", *, timeout_s: float = 60.0
    ) -> ModuleRoute:
        raise DeployError(f"agent {agent_id} is offline")

    def undeploy(self, module: str, *, drain: bool = True) -> None:
        self.routes.remove(module)

    def status(self, module: str | None = None) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(
                r.module, r.version, f"{r.module}-r1", "serving", "node-fog-1", "http://127.0.0.1:9"
            )
            for r in self.routes.routes()
            if module is None or r.module == module
        ]


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def client(manager: FakeManager) -> Iterator[TestClient]:
    # Mounted as the control plane mounts it: on the gateway app (its auth errors -> 401/403).
    auth = TokenAuth(SIGNER)
    gateway = Gateway(manager.routes, auth=auth)
    app = create_gateway_app(
        gateway, routers=[create_modules_router(manager, auth=auth.dependency)]
    )
    with TestClient(app) as c:
        yield c


def _auth(*scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SIGNER.issue('t', list(scopes), ttl_s=60, now=time.time())}"}


def test_deploy_builds_the_spec_from_the_request_and_lists_it(
    client: TestClient, manager: FakeManager
) -> None:
    r = client.post(
        "/v1/modules",
        headers=_auth("admin"),
        json={
            "model": "vehicle-counter",
            "tier": "fog",
            "p95_ms": 20,
            "cpus": 0.5,
            "max_replicas": 3,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["module"] == "vehicle-counter" and r.json()["epoch"] == 1
    spec, version, tier, site, replicas = manager.specs[0]
    assert (spec.model, spec.tiers, spec.resources.cpus, spec.max_replicas) == (
        "vehicle-counter",
        ("fog",),
        0.5,
        3,
    )
    assert spec.qos.p95_latency_ms == 20 and (version, tier, site, replicas) == (
        "production",
        "fog",
        None,
        None,
    )

    listed = client.get("/v1/modules", headers=_auth("read")).json()
    assert [(m["module"], m["version"], m["tier"], m["epoch"]) for m in listed] == [
        ("vehicle-counter", "v1", "fog", 1)
    ]
    assert listed[0]["replicas"][0]["node"] == "node-fog-1"


def test_may_move_to_adds_the_tiers_the_controller_may_move_the_module_to(
    client: TestClient, manager: FakeManager
) -> None:
    r = client.post(
        "/v1/modules",
        headers=_auth("admin"),
        json={"model": "m", "tier": "fog", "may_move_to": ["cloud", "fog"]},
    )
    assert r.status_code == 200, r.text
    assert manager.specs[0][0].tiers == ("fog", "cloud")  # the deployed tier first, once
    bad = client.post(
        "/v1/modules", headers=_auth("admin"), json={"model": "m", "may_move_to": ["moon"]}
    )
    assert_error(bad, 422, "InvalidRequestError", "may_move_to")


def test_name_overrides_the_module_name(client: TestClient, manager: FakeManager) -> None:
    r = client.post(
        "/v1/modules",
        headers=_auth("admin"),
        json={"model": "vehicle-counter", "name": "counter-b", "version": "v2"},
    )
    assert r.status_code == 200 and r.json()["module"] == "counter-b"
    assert manager.specs[0][1] == "v2"


def test_scopes(client: TestClient) -> None:
    body = {"model": "m"}
    missing = assert_error(client.get("/v1/modules"), 401, "AuthError")
    assert "missing Authorization" in missing["error"]
    assert client.post("/v1/modules", json=body).status_code == 401
    assert_error(
        client.post("/v1/modules", json=body, headers=_auth("read")), 403, "ForbiddenError"
    )
    assert client.delete("/v1/modules/m", headers=_auth("invoke")).status_code == 403


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ModelNotFoundError("m", "v9"), 404),
        (DeployError("replicas did not start"), 409),
        (UnsatisfiableError("m", {"tier": "fog"}, [], "no fog node"), 409),
        (BackendError("Ray is not reachable"), 503),
    ],
)
def test_deploy_errors_map_to_statuses(
    client: TestClient, manager: FakeManager, error: Exception, status: int
) -> None:
    manager.fail = error
    r = client.post("/v1/modules", headers=_auth("admin"), json={"model": "m"})
    assert_error(r, status, type(error).__name__, str(error))


def test_bad_requests(client: TestClient) -> None:
    admin = _auth("admin")
    edge = client.post("/v1/modules", headers=admin, json={"model": "m", "tier": "edge"})
    assert_error(edge, 422, "InvalidRequestError", "name the edge agent")
    spec = client.post(
        "/v1/modules", headers=admin, json={"model": "m", "min_replicas": 3, "max_replicas": 1}
    )
    assert_error(spec, 422, "InvalidRequestError", "invalid module")
    bogus = client.post("/v1/modules", headers=admin, json={"model": "m", "bogus": 1})
    assert_error(bogus, 422, "InvalidRequestError", "body.bogus")  # FastAPI's validation
    r = client.post("/v1/modules", headers=admin, json={"model": "m", "agent": "cam-1"})
    assert_error(r, 409, "DeployError", "offline")


def test_undeploy(client: TestClient, manager: FakeManager) -> None:
    client.post("/v1/modules", headers=_auth("admin"), json={"model": "m"})
    assert client.delete("/v1/modules/m", headers=_auth("admin")).status_code == 204
    assert manager.routes.get("m") is None
    gone = client.delete("/v1/modules/m", headers=_auth("admin"))
    assert_error(gone, 404, "ModelNotServedError", "'m' is not served")


def test_the_cli_client_reads_the_error_body(manager: FakeManager) -> None:
    from mesh.cli._modules import ControlPlaneClient, ControlPlaneError
    from mesh.core._http_server import serve_asgi

    auth = TokenAuth(SIGNER)
    app = create_gateway_app(
        Gateway(manager.routes, auth=auth),
        routers=[create_modules_router(manager, auth=auth.dependency)],
    )
    server = serve_asgi(app, port=0, lifespan="on")
    try:
        token = SIGNER.issue("cli", ["admin"], ttl_s=60, now=time.time())
        client = ControlPlaneClient(server.url, token, timeout_s=10)
        with pytest.raises(ControlPlaneError, match="409: agent cam-1 is offline") as failed:
            client.request("POST", "/v1/modules", {"model": "m", "agent": "cam-1"})
        assert (failed.value.status, failed.value.error_type) == (409, "DeployError")
        assert isinstance(failed.value, MeshError)
        assert client.request("GET", "/v1/modules") == []
    finally:
        server.stop()
    with pytest.raises(ControlPlaneError, match="does not answer") as down:
        client.request("GET", "/v1/modules")
    assert down.value.status is None


def test_recorded_modules_not_served_yet_are_listed_with_their_restore_state(
    manager: FakeManager,
) -> None:
    import threading

    from mesh.control._restore import Restorer, RetryPolicy
    from mesh.control._store import DeploymentRecord

    restorer = Restorer(RetryPolicy(attempts=1))
    cam = DeploymentRecord("cam-counter", "{}", "v2", "edge", None, "cam-1")
    restorer.expect([DeploymentRecord("vehicle-counter", "{}", "v1", "fog", None, None), cam])
    forgotten: list[str] = []

    def forget(module: str) -> bool:
        forgotten.append(module)
        return restorer.forget(module)

    auth = TokenAuth(SIGNER)
    router = create_modules_router(
        manager,
        auth=auth.dependency,
        restoring=lambda served: [s.to_dict() for s in restorer.unserved(served)],
        forget=forget,
    )
    app = create_gateway_app(Gateway(manager.routes, auth=auth), routers=[router])
    with TestClient(app) as client:
        listed = client.get("/v1/modules", headers=_auth("read")).json()
        assert [(m["module"], m["status"]) for m in listed] == [
            ("cam-counter", "restoring"),
            ("vehicle-counter", "restoring"),
        ]
        # One serves again: listed from its route, as serving; the other failed.
        client.post("/v1/modules", headers=_auth("admin"), json={"model": "vehicle-counter"})
        restorer.run([cam], lambda r: manager.deploy_to_agent(r, "cam-1"), stop=threading.Event())
        listed = client.get("/v1/modules", headers=_auth("read")).json()
        assert [(m["module"], m["status"]) for m in listed] == [
            ("vehicle-counter", "serving"),
            ("cam-counter", "failed: DeployError: agent cam-1 is offline"),
        ]
        assert listed[1]["agent"] == "cam-1" and listed[1]["restore_attempts"] == 1

        # A failed one can be forgotten (its record goes); an unknown one is still 404.
        gone = client.delete("/v1/modules/cam-counter", headers=_auth("admin"))
        assert gone.status_code == 204 and forgotten == ["cam-counter"]
        assert [m["module"] for m in client.get("/v1/modules", headers=_auth("read")).json()] == [
            "vehicle-counter"
        ]
        assert client.delete("/v1/modules/nope", headers=_auth("admin")).status_code == 404


def test_a_drift_check_and_a_canary_reach_the_spec_and_the_lifecycle(manager: FakeManager) -> None:
    from mesh.runtime._lifecycle import LifecycleTracking

    class Service:
        def __init__(self) -> None:
            self.calls: list[tuple[str, dict[str, Any]]] = []

        def track(self, spec: Any, **options: Any) -> None:
            self.calls.append((spec.name, options))

    lifecycle = LifecycleTracking()
    drift, fresh, canary = Service(), Service(), Service()
    lifecycle.drift, lifecycle.fresh_data, lifecycle.canary = drift, fresh, canary  # type: ignore[assignment]
    app = create_gateway_app(
        Gateway(manager.routes),
        routers=[create_modules_router(manager, on_deployed=lifecycle.track)],
    )
    check = {"statistic": "error", "threshold": 3, "labels": "traffic/{site}/truth"}
    with TestClient(app) as c:
        r = c.post(
            "/v1/modules",
            json={"model": "counter", "tier": "fog", "drift": check, "canary": {"fraction": 0.5}},
        )
        assert r.status_code == 200, r.text
        spec = manager.specs[0][0]
        assert spec.drift.labels == "traffic/{site}/truth" and spec.canary.fraction == 0.5
        assert drift.calls == [("counter", {"version": "production"})]
        assert fresh.calls == [("counter", {})] and canary.calls == [("counter", {})]

        # A plain module is tracked by none; a bad check is refused, nothing deployed.
        assert c.post("/v1/modules", json={"model": "plain", "tier": "fog"}).status_code == 200
        assert len(drift.calls) == 1 and len(canary.calls) == 1
        bad = c.post(
            "/v1/modules", json={"model": "x", "tier": "fog", "drift": {"statistic": "error"}}
        )
        assert_error(bad, 422, needle="threshold")
        assert [s[0].name for s in manager.specs] == ["counter", "plain"]
