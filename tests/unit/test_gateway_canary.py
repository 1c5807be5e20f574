"""The gateway with a candidate replica on canary: its share, its counts, and the monitors.

Two real replica apps (ONNX Runtime on sockets): production v1 (``2x``) and the
candidate v2 (``3x``) in the route's ``canary`` at a quarter of the requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mesh.serving._canary_replicas import ReplicaCanary
from mesh.serving._routes import RouteTable
from tests.support.agent_fixtures import build_tiny_model
from tests.unit.test_gateway import SIG, Replica, make_gateway, post_infer, start_replica
from tests.unit.test_gateway_accounting import Observed


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    d: Path = tmp_path_factory.mktemp("canary-gw")
    v1 = start_replica(build_tiny_model(d / "v1.onnx", scale=2.0), version="v1")
    v2 = start_replica(build_tiny_model(d / "v2.onnx", scale=3.0), version="v2")
    try:
        yield v1, v2
    finally:
        for r in (v1, v2):
            r.server.stop()
            r.app.close()


def test_the_candidate_answers_its_share_and_only_productions_requests_reach_the_monitors(
    replicas: tuple[Replica, Replica],
) -> None:
    v1, v2 = replicas
    routes = RouteTable()
    routes.set("m", "v1", [v1.endpoint("v1", "r1")], signature=SIG)
    routes.set_canary("m", [v2.endpoint("v2", "r2")], 0.25)
    observed = Observed()
    gateway = make_gateway(routes, auth=False, observer=observed)
    x = np.ones((1, 4), np.float32)
    answers = [post_infer(gateway, x) for _ in range(40)]
    assert all(a.status_code == 200 for a in answers)
    by_version = {
        v: [a.json()["outputs"][0]["data"][0] for a in answers if a.json()["model_version"] == v]
        for v in ("v1", "v2")
    }
    assert len(by_version["v2"]) == 10 and set(by_version["v2"]) == {3.0}
    assert len(by_version["v1"]) == 30 and set(by_version["v1"]) == {2.0}
    # the placement monitors hear of production's requests only
    assert observed.seen == [("m", "node-r1", True)] * 30
    # the gateway's own counts per version: what the canary judges
    trials = ReplicaCanary(routes, launcher=None, metrics=gateway.metrics)  # type: ignore[arg-type]
    candidate, production = trials.tally("m", "v2"), trials.tally("m", "v1")
    assert (candidate.requests, candidate.failures) == (10, 0)
    assert (production.requests, production.failures) == (30, 0)
    assert candidate.p95_ms is not None and production.p95_ms is not None
    # a client asking for production's version never gets the candidate
    pinned = [post_infer(gateway, x, version="v1") for _ in range(8)]
    assert {a.json()["model_version"] for a in pinned} == {"v1"}
