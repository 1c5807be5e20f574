"""The canary on real parts: Mosquitto (passwords, ACLs), three ``python -m edge_agent``
processes running a pipeline each, the artifact endpoint, the edge installer and a real
model registry (issue 18, item 4).

Frames (``x``) go to each site's sensor topic; ground truth ``y = 2x`` follows on
``{p}/truth/{site}`` (the label message of the shared design). The live errors are
joined here by :class:`JoinedErrors`, which implements the canary's
``LiveErrorSource`` Protocol over the agents' real pipeline events and the real
labels (Part 1's ``LiveErrors`` is not on this branch; the service takes either).

One test, in order: production v1 (scale 2.2) on all three agents -> candidate v2
(scale 2.05, better) registered -> canary on one agent -> promoted, every agent
serves v2 -> candidate v3 (scale 3.0, worse) -> canary -> rolled back, the canary
agent serves v2 again and v3 is archived.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.protocol import Event, Tensor, Topics, encode_frame
from mesh.edge._artifact_api import ArtifactServer, UrlSigner, create_artifact_app, serve_in_thread
from mesh.edge._bus import EdgeBus
from mesh.edge._enrolment import EdgeSettings, control_plane_credentials, enroll
from mesh.edge._install import EdgeInstaller
from mesh.edge.broker._broker import free_port, start_mosquitto
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from mesh.models._registry import ModelRegistry, Stage
from mesh.runtime._canary import CanaryService
from mesh.sdk._specs import Canary, Drift, ModuleSpec, QoS
from mesh.serving._contract import ModelArtifact
from tests.support.agent_fixtures import (  # noqa: F401  (fixture)
    AgentProcess,
    agent_processes,
    build_tiny_model,
)
from tests.support.brokers import require_mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(240)]

T = Topics()
MODULE = MODEL = "tiny"
AGENTS = {f"cam-{i}": f"site-{i}" for i in range(3)}
RATE_HZ = 20.0
POLICY = Canary(
    fraction=0.3,  # one agent of three
    window_s=3.0,
    min_samples=15,
    error_margin=0.05,
    p95_ratio=100.0,  # a shared test machine's latency is noise; error decides here
    max_wait_s=60.0,
)
SPEC = ModuleSpec(
    name=MODULE,
    model=MODEL,
    qos=QoS(p95_latency_ms=100),
    tiers=("edge",),
    canary=POLICY,
    # Its live error is scored: outputs joined with the labels of an error drift check.
    drift=Drift(statistic="error", threshold=3.0, labels=f"{T.prefix}/truth/{{site}}"),
)


@dataclass(frozen=True)
class Window:
    n: int
    mae: float | None


class JoinedErrors:
    """Pipeline outputs joined with labels on (site, frame ts); MAE per version since a time."""

    def __init__(self, edge: EdgeBus) -> None:
        self._lock = threading.Lock()
        self._outputs: dict[tuple[str, float], tuple[str, float, np.ndarray]] = {}
        self._labels: dict[tuple[str, float], np.ndarray] = {}
        self.bad_labels = 0
        edge.on_event(self._on_event)
        edge.subscribe(f"{T.prefix}/truth/+", self._on_label)

    def _on_event(self, event: Event) -> None:
        if event.module != MODULE or event.site is None or event.source_ts is None:
            return
        out = event.outputs.get("y")
        if out is None or event.version is None:
            return
        key = (event.site, round(event.source_ts, 3))
        with self._lock:
            self._outputs[key] = (event.version, event.ts, np.asarray(out.data, np.float64))

    def _on_label(self, _topic: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
            key = (str(body["site"]), round(float(body["ts"]), 3))
            values = np.asarray(body["values"], np.float64)
        except (ValueError, KeyError, TypeError):
            self.bad_labels += 1
            return
        with self._lock:
            self._labels[key] = values

    def window(
        self, module: str, *, since: float, site: str | None = None, version: str | None = None
    ) -> Window:
        errors: list[float] = []
        with self._lock:
            for key, (v, at, out) in self._outputs.items():
                label = self._labels.get(key)
                if label is None or at < since or (version and v != version):
                    continue
                if site is not None and key[0] != site:
                    continue
                errors.append(float(np.mean(np.abs(out - label))))
        return Window(len(errors), float(np.mean(errors)) if errors else None)


class Cameras:
    """Frames on each site's sensor topic at RATE_HZ, each followed by its label."""

    def __init__(self, edge: EdgeBus) -> None:
        self._edge = edge
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-cameras", daemon=True)
        self.sent = 0

    def __enter__(self) -> Cameras:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.wait(1 / RATE_HZ):
            for site in AGENTS.values():
                ts = round(time.time(), 3)
                x = rng.uniform(1, 5, (1, 4)).astype(np.float32)
                frame = encode_frame({"ts": ts}, [Tensor.from_numpy("x", x)])
                self._edge.publish(f"{T.prefix}/sensors/{site}/x", frame, qos=0)
                label = {"site": site, "ts": ts, "values": (2 * x).ravel().tolist()}
                self._edge.publish(f"{T.prefix}/truth/{site}", json.dumps(label).encode(), qos=0)
            self.sent += 1


@dataclass
class Rig:
    tmp: Path
    edge: EdgeBus
    registry: ModelRegistry
    installer: EdgeInstaller
    server: ArtifactServer


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Rig, EdgeSettings, list[list[str]]]]:
    require_mosquitto()
    port = free_port()
    settings = EdgeSettings(data_dir=tmp_path / "cp", broker_url=f"mqtt://127.0.0.1:{port}")
    commands = [enroll(a, site=s, settings=settings).command for a, s in AGENTS.items()]
    broker = start_mosquitto(
        port,
        workdir=tmp_path / "mosquitto",
        password_file=settings.password_file,
        acl_file=settings.acl_file,
    )
    creds = control_plane_credentials(settings)
    edge = server = registry = installer = None
    try:
        edge = EdgeBus(
            broker.url, username=creds.username, password=creds.password, keepalive_s=5
        ).start()
        server = serve_in_thread(create_artifact_app(settings), port=0)
        store = ArtifactStore(settings.data_dir / "artifacts")
        signer = ArtifactSigner.load_or_create(settings.data_dir)
        registry = ModelRegistry(settings.store_path, store, signer, profile_budget_s=0.01)
        installer = EdgeInstaller(
            edge,
            store=store,
            signer=signer,
            url_signer=UrlSigner.load_or_create(settings.data_dir),
            base_url=server.url,
        )
        yield Rig(tmp_path, edge, registry, installer, server), settings, commands
    finally:
        if installer is not None:
            installer.close()
        if server is not None:
            server.stop()
        if edge is not None:
            edge.stop()
        if registry is not None:
            registry.close()
        broker.stop()


def _start_agents(
    r: Rig, commands: list[list[str]], start: Callable[..., AgentProcess]
) -> list[AgentProcess]:
    procs = []
    for (agent, site), command in zip(AGENTS.items(), commands, strict=True):
        pipeline = {
            "name": "count",
            "module": MODULE,
            "stream": "counts",
            "source": {"kind": "mqtt", "topic": f"{T.prefix}/sensors/{site}/x"},
        }
        args = [
            *command[1:],
            "--cache-dir",
            str(r.tmp / f"cache-{agent}"),
            "--heartbeat-period-s",
            "0.5",
            "--reconnect-min-s",
            "1",
            "--reconnect-max-s",
            "1",
        ]
        env = {"EDGE_AGENT_PIPELINES": json.dumps([pipeline])}
        procs.append(start(args, r.tmp / f"{agent}.log", env).start())
    for agent in AGENTS:
        r.edge.wait_for_agent(agent, timeout_s=30.0)
    return procs


def _versions(edge: EdgeBus) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for agent in AGENTS:
        view = edge.agent(agent)
        installed = view.observed.installed if view and view.observed else []
        out[agent] = next((m.version for m in installed if m.name == MODULE), None)
    return out


def _wait_step(r: Rig, version: str, steps: set[str], procs: list[AgentProcess]) -> str:
    def done() -> bool:
        return any(s.step in steps for s in r.registry.lifecycle.steps(MODEL, version=version))

    if not r.edge.wait_until(done, 90.0):
        taken = [(s.step, dict(s.detail)) for s in r.registry.lifecycle.steps(MODEL)]
        logs = "\n".join(p.log()[-1500:] for p in procs)
        pytest.fail(f"no {steps} step for {version} in 90 s; steps: {taken}\nlogs:\n{logs}")
    return next(
        s.step for s in r.registry.lifecycle.steps(MODEL, version=version) if s.step in steps
    )


def test_a_better_candidate_is_promoted_and_a_worse_one_rolled_back(
    rig: tuple[Rig, EdgeSettings, list[list[str]]],
    agent_processes: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    r, _settings, commands = rig
    model = {
        name: build_tiny_model(r.tmp / f"{name}.onnx", scale=scale)
        for name, scale in (("v1", 2.2), ("v2", 2.05), ("v3", 3.0))
    }
    v1 = r.registry.register(MODEL, model["v1"], code_version="c1")
    r.registry.promote(MODEL, v1.version)
    procs = _start_agents(r, commands, agent_processes)
    artifact = ModelArtifact.from_registry(r.registry, MODEL, "v1")
    for agent in AGENTS:
        r.installer.install(agent, MODULE, artifact, 60.0)
    errors = JoinedErrors(r.edge)
    canary = CanaryService(
        r.registry, r.installer, r.edge, live_errors=errors, period_s=0.2, install_timeout_s=60
    )
    canary.track(SPEC, sites=AGENTS)
    with Cameras(r.edge):
        # Production has served a while at every site: its error there before the canary
        # is what the candidate is compared with.
        assert r.edge.wait_until(
            lambda: all(errors.window(MODULE, since=0, site=s).n >= 80 for s in AGENTS.values()),
            30.0,
        )
        canary.start()
        try:
            # ---- a better candidate: promoted, every agent serves it
            r.registry.register(MODEL, model["v2"], code_version="c2")
            assert _wait_step(r, "v2", {"promoted", "rolled_back"}, procs) == "promoted"
            assert r.registry.get(MODEL).version == "v2"
            assert _versions(r.edge) == dict.fromkeys(AGENTS, "v2")
            steps = r.registry.lifecycle.steps(MODEL, version="v2")
            assert [s.step for s in steps] == [
                "candidate_seen",
                "canary_started",
                "canary_sites",
                "compared",
                "promoted",
            ]
            compared = steps[3].detail
            cand, prod = compared["candidate"], compared["production"]
            assert cand["version"] == "v2" and prod["version"] == "v1"
            assert cand["samples"] >= 15 and prod["samples"] >= 15
            assert cand["mae"] < prod["mae"] * 0.95  # scale 2.05 against 2.2: 0.15 vs 0.6
            assert len(steps[2].detail["canary"]) == 1  # one site of three tried it

            # ---- a worse candidate: rolled back, production serves again, v3 archived
            r.registry.register(MODEL, model["v3"], code_version="c3")
            assert _wait_step(r, "v3", {"promoted", "rolled_back"}, procs) == "rolled_back"
            back = next(
                s
                for s in r.registry.lifecycle.steps(MODEL, version="v3")
                if s.step == "rolled_back"
            )
            assert "live error" in back.detail["reason"]
            assert r.registry.get(MODEL).version == "v2"
            # Archived just after the rolled_back step is recorded.
            assert r.edge.wait_until(
                lambda: r.registry.get(MODEL, "v3").stage == Stage.ARCHIVED, 10.0
            )
            assert _versions(r.edge) == dict.fromkeys(AGENTS, "v2")
            assert errors.bad_labels == 0
        finally:
            canary.stop()
