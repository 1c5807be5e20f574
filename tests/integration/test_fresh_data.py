"""Fresh data end to end: a real agent process's pipeline inputs sampled within budget,
uploaded over a real Mosquitto, labelled later, stored and read back with numpy.

The control plane's side is the real edge bus, installer and fresh-data service; the
sampling policy reaches the agent in its desired state (``EdgeInstaller.set_sampling``),
the pipeline comes from the agent's own settings, as in a scenario.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import tests.support.agent_fixtures as af
import tests.support.brokers as brokers
from edge_agent._sources import write_replay
from edge_agent.protocol import Event, SamplingPolicy, Tensor, Topics, encode_frame
from mesh import QoS
from mesh.core._settings import MeshSettings
from mesh.edge._artifact_api import UrlSigner, create_artifact_app, serve_in_thread
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings
from mesh.edge._install import EdgeInstaller
from mesh.edge.broker._broker import MosquittoBroker
from mesh.models import FreshData, fresh_data
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.runtime._fresh_data import FreshDataService
from mesh.sdk import Drift, ModuleSpec
from mesh.serving._contract import ModelArtifact
from tests.support.agent_fixtures import AgentProcess, build_tiny_model

# Shared fixtures, bound here so pytest finds them.
mosquitto = brokers.mosquitto
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

T = Topics()
AGENT = "cam-fresh"
SITE = "int-fresh"
MODULE = "counter"
BUDGET = 12


class OneAgent:
    """Only AGENT is enrolled (its downloads come with URLs pre-signed for it)."""

    def agent_for_token(self, token: str) -> str | None:
        return None

    def is_enrolled(self, agent_id: str) -> bool:
        return agent_id == AGENT


def wait(cond: Callable[[], object], timeout_s: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{log()[-4000:]}")


@pytest.fixture
def control_plane(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[EdgeBus, Path]]:
    edge = EdgeBus(mosquitto.url, keepalive_s=5).start()
    try:
        yield edge, tmp_path / "cp"
    finally:
        edge.stop()


def test_sampled_inputs_are_uploaded_within_budget_labelled_and_snapshotted(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    control_plane: tuple[EdgeBus, Path],
    agent_processes: Callable[..., AgentProcess],
) -> None:
    edge, data_dir = control_plane
    settings = EdgeSettings(data_dir=data_dir, broker_url=mosquitto.url)
    artifacts = serve_in_thread(create_artifact_app(settings, auth=OneAgent()), port=0)
    signer = ArtifactSigner.load_or_create(data_dir)
    installer = EdgeInstaller(
        edge,
        store=ArtifactStore(data_dir / "artifacts"),
        signer=signer,
        url_signer=UrlSigner.load_or_create(data_dir),
        base_url=artifacts.url,
        module_options={"warmup_runs": 1},
    )
    store = FreshData.open(MeshSettings(data_dir=data_dir))
    service = FreshDataService(edge, store, installer=installer).start()
    labels_topic = f"test-{uuid.uuid4().hex[:8]}/{{site}}/truth"
    spec = ModuleSpec(
        name=MODULE,
        model=MODULE,
        qos=QoS(p95_latency_ms=50),
        drift=Drift(statistic="error", threshold=2.0, labels=labels_topic),
    )
    replay = tmp_path / "frames.bin"
    frames = [np.full((1, 4), float(i), np.float32) for i in range(1, 21)]
    write_replay(replay, [encode_frame({}, [Tensor.from_numpy("x", f)]) for f in frames])
    pipeline = {
        "name": "count",
        "module": MODULE,
        "stream": "counts",
        "source": {"kind": "file", "path": str(replay), "rate_hz": 20.0, "loop": True},
    }
    agent = agent_processes(
        [
            *("--id", AGENT, "--site", SITE, "--broker", mosquitto.url),
            *("--cache-dir", str(tmp_path / "cache"), "--public-key", signer.public_key_b64()),
            *("--heartbeat-period-s", "1", "--log-level", "INFO"),
        ],
        tmp_path / "agent.log",
        env={"EDGE_AGENT_PIPELINES": json.dumps([pipeline])},
    ).start()
    events: list[Event] = []
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            events.append(event)

    undo = edge.on_event(on_event)
    try:
        edge.wait_for_agent(AGENT, timeout_s=30)
        artifact = ModelArtifact.from_file(
            build_tiny_model(tmp_path / "tiny.onnx", scale=2.0), model=MODULE, version="v1"
        )
        installer.install(AGENT, MODULE, artifact, 60.0)
        wait(lambda: len(events) >= 5, 30, "the pipeline's events", agent.log)
        started = time.monotonic()
        policy = SamplingPolicy(samples_per_min=BUDGET, bytes_per_min=64 * 1024, reservoir=8)
        service.track(spec, sites={AGENT: SITE}, policy=policy)

        # The ground truth of each frame comes later, keyed by its source_ts: the
        # input's value (the model doubles it, so each event says what it was).
        labelled: set[float] = set()

        def label_what_ran() -> bool:
            with lock:
                todo = [e for e in events if e.source_ts not in labelled]
            for e in todo:
                assert e.source_ts is not None
                value = float(e.outputs["y"].data[0]) / 2.0
                body = {"site": SITE, "ts": e.source_ts, "values": [value, 10 * value]}
                edge.publish(labels_topic.replace("{site}", SITE), json.dumps(body).encode())
                labelled.add(e.source_ts)
            service.drain()
            return store.stats(MODULE).labelled >= BUDGET

        wait(label_what_ran, 60, f"{BUDGET} labelled samples", agent.log)
        # Far more inputs run than the budget lets through.
        wait(lambda: len(events) >= 5 + 4 * BUDGET, 60, "more inputs to run", agent.log)
        label_what_ran()
        minutes = math.ceil((time.monotonic() - started) / 60.0)
        assert store.stats(MODULE).samples <= BUDGET * minutes
        assert service.counts()[MODULE]["stored"] <= BUDGET * minutes

        # A training function's view: a new snapshot, read with numpy alone.
        snapshot = fresh_data(MODULE, settings=MeshSettings(data_dir=data_dir))
        assert snapshot.rows >= BUDGET and snapshot.sites == (SITE,)
        with np.load(snapshot.path) as data:
            inputs, labels = data["inputs"], data["labels"]
            assert inputs.shape == (snapshot.rows, 4) and inputs.dtype == np.float32
            assert labels.shape == (snapshot.rows, 2) and labels.dtype == np.float32
            np.testing.assert_allclose(labels[:, 0], inputs[:, 0])  # each row is its own
            np.testing.assert_allclose(labels[:, 1], 10 * inputs[:, 0])
            assert set(data["versions"]) == {"v1"}
            assert set(inputs[:, 0]) <= {float(i) for i in range(1, 21)}
    finally:
        undo()
        service.stop()
        store.close()
        artifacts.stop()
