"""The gateway's accounting: a failed or timed-out request is lost, a refused one is no sample.

A request the mesh failed (5xx) or let time out (504) counts in
``mesh_inference_lost_total`` and as an SLO violation, and reaches the placement
monitors as a failure; one the gateway or a replica refused (4xx, the client's
bad input) is neither lost nor a latency sample of the node.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest

from mesh.edge._bus import EdgeInferenceError, EdgeRequestTimeoutError
from mesh.serving._routes import AgentEndpoint, ReplicaEndpoint, RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.support.metrics import sample
from tests.unit.test_gateway import (
    SIG,
    FakeEdge,
    Replica,
    make_gateway,
    post_infer,
    start_replica,
)


class Observed:
    """The placement monitors' side of the gateway: each request it is told of."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    def observe(self, module: str, node: str, latency_s: float, ok: bool) -> None:
        assert latency_s >= 0.0
        self.seen.append((module, node, ok))


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    r = start_replica(build_tiny_model(tmp_path_factory.mktemp("acct") / "tiny.onnx"))
    try:
        yield r
    finally:
        r.server.stop()
        r.app.close()


def lost(text: str, reason: str) -> float | None:
    return sample(text, "mesh_inference_lost_total", module="m", reason=reason)


def test_a_refused_request_is_no_latency_sample_and_a_failed_one_is_lost(
    replica: Replica,
) -> None:
    routes = RouteTable()
    routes.set("m", "v1", [replica.endpoint()], signature=SIG, slo_ms=10_000.0)
    observed = Observed()
    gateway = make_gateway(routes, auth=False, observer=observed)
    assert post_infer(gateway, np.ones((1, 4), np.float32)).status_code == 200
    # The replica refuses bad tensors (400): the client's fault, not the node's speed.
    assert post_infer(gateway, np.ones((1, 3), np.float32)).status_code == 400
    assert observed.seen == [("m", "node-r1", True)]
    assert lost(gateway.metrics.render(), "failed") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    routes.set(
        "m", "v1", [ReplicaEndpoint("r0", "node-r0", "127.0.0.1", dead_port, "v1")], signature=SIG
    )
    assert post_infer(gateway, np.ones((1, 4), np.float32)).status_code == 502
    assert observed.seen[-1] == ("m", "", False)
    text = gateway.metrics.render()
    assert lost(text, "failed") == 1
    violations = "mesh_inference_slo_violations_total"
    assert sample(text, violations, module="m", version="v1", node="") == 1


def test_an_agent_timeout_is_lost_as_a_timeout_and_its_bad_input_is_not() -> None:
    routes = RouteTable()
    routes.set("m", "v2", [AgentEndpoint("cam-1", "v2")], tier="edge")
    edge = FakeEdge()
    observed = Observed()
    gateway = make_gateway(routes, edge=edge, auth=False, observer=observed)
    x = np.ones((1, 4), np.float32)
    edge.fail = EdgeInferenceError(module="m", node="cam-1", code="bad_input", message="shape")
    assert post_infer(gateway, x).status_code == 400
    assert observed.seen == []
    edge.fail = EdgeRequestTimeoutError(module="m", node="cam-1", correlation_id="c", timeout_s=1.0)
    assert post_infer(gateway, x).status_code == 504
    edge.fail = EdgeInferenceError(module="m", node="cam-1", code="internal", message="boom")
    assert post_infer(gateway, x).status_code == 502
    assert observed.seen == [("m", "cam-1", False), ("m", "cam-1", False)]
    text = gateway.metrics.render()
    assert (lost(text, "timeout"), lost(text, "failed")) == (1, 1)


def test_a_request_for_a_module_not_served_is_not_lost() -> None:
    gateway = make_gateway(RouteTable(), auth=False, observer=Observed())
    assert post_infer(gateway, np.ones((1, 4), np.float32), module="nope").status_code == 404
    assert "mesh_inference_lost_total{" not in gateway.metrics.render()
