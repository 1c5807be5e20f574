"""An install of what an agent serves already does not rewrite its desired state."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.protocol import ModuleError, SamplingPolicy
from mesh.edge._install import EdgeInstaller
from tests.unit.test_offload_routes import FakeAgentGateway, artifact


@pytest.fixture
def edge() -> FakeAgentGateway:
    return FakeAgentGateway()


@pytest.fixture
def installer(tmp_path: Path, edge: FakeAgentGateway) -> EdgeInstaller:
    from mesh.edge._artifact_api import UrlSigner
    from mesh.models._artifacts import ArtifactSigner, ArtifactStore

    return EdgeInstaller(
        edge,  # type: ignore[arg-type]
        store=ArtifactStore(tmp_path / "artifacts"),
        signer=ArtifactSigner.generate(),
        url_signer=UrlSigner(b"u" * 32),
        base_url="http://cp:8471",
    )


def test_the_same_version_again_publishes_nothing(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert len(edge.published) == 1
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert len(edge.published) == 1
    installer.install("cam-1", "counter", artifact("v2"), 5.0)  # a new version: published
    assert [d.modules[0].version for d in edge.published] == ["v1", "v2"]


def test_it_is_published_again_when_the_agent_does_not_report_it(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert edge.observed is not None
    edge.observed = edge.observed.model_copy(update={"installed": []})  # lost its cache
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert len(edge.published) == 2
    failed = ModuleError(module="counter", code="integrity", message="disk")
    edge.observed = edge.observed.model_copy(update={"errors": [failed]})
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert len(edge.published) == 3


def test_another_agent_or_another_sampling_policy_is_published(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer.install("cam-2", "counter", artifact("v1"), 5.0)  # nothing kept for cam-2 yet
    assert [d.agent for d in edge.published] == ["cam-1", "cam-2"]
    installer._sampling["counter"] = SamplingPolicy(samples_per_min=6, reservoir=16)
    installer.install("cam-2", "counter", artifact("v1"), 5.0)  # the entry would change
    assert len(edge.published) == 3


def test_a_changed_drift_summary_flag_is_published(
    installer: EdgeInstaller, edge: FakeAgentGateway
) -> None:
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    installer._drift_stats.add("counter")  # the drift service began tracking it
    installer.install("cam-1", "counter", artifact("v1"), 5.0)
    assert [d.modules[0].drift_stats for d in edge.published] == [False, True]
