"""End to end: a real ``python -m edge_agent`` process, the edge gateway, the artifact
endpoint and enrolment, on a real Mosquitto with passwords and ACLs (issue #3, item 10).

One scenario, in order: enrol -> start the agent -> online (gateway and mosquitto_sub)
-> install model v1 -> inference over MQTT -> hot swap to v2 under continuous requests,
zero failures -> broker down for 10 s: events buffered, all delivered after, none lost,
duplicates dropped by id -> SIGSTOP: offline by the broker's keepalive check -> SIGKILL:
offline within 1.5x keepalive -> restart with the broker and the artifact endpoint down:
serves from cache before reconnecting.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.protocol import (
    DesiredState,
    Event,
    PipelineSpec,
    SourceSpec,
    Tensor,
    Topics,
    encode_frame,
)
from mesh.edge._artifact_api import (
    ArtifactServer,
    UrlSigner,
    create_artifact_app,
    serve_in_thread,
    signed_module_spec,
)
from mesh.edge._bus import EdgeBus, InferResult
from mesh.edge._enrolment import (
    EdgeSettings,
    EnrolmentResult,
    EnrolmentStore,
    control_plane_credentials,
    enroll,
)
from mesh.edge.broker._broker import MosquittoBroker, free_port, start_mosquitto
from mesh.models._artifacts import ArtifactSigner, ArtifactStore
from tests.support.agent_fixtures import (  # noqa: F401  (fixture)
    AgentProcess,
    agent_processes,
    build_tiny_model,
)
from tests.support.brokers import mosquitto_sub, require_mosquitto

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(180)]

T = Topics()
AGENT = "cam-e2e"
SITE = "int-1-1"
KEEPALIVE_S = 2
OUTAGE_S = 10.0
RATE_HZ = 20.0


@dataclass
class Mesh:
    """Everything the control plane runs, for one test."""

    tmp: Path
    settings: EdgeSettings
    enrolment: EnrolmentResult
    broker: MosquittoBroker
    store: ArtifactStore
    signer: ArtifactSigner
    url_signer: UrlSigner
    health: EnrolmentStore
    gateway: EdgeBus
    server: ArtifactServer | None = None
    events: list[Event] = field(default_factory=list)
    raw_events: list[bytes] = field(default_factory=list)

    def start_server(self) -> None:
        self.server = serve_in_thread(create_artifact_app(self.settings), port=0)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def module(self, version: str, path: Path) -> Any:
        assert self.server is not None
        info = self.store.put_file(path)
        return signed_module_spec(
            "counter",
            version,
            info,
            agent_id=AGENT,
            base_url=self.server.url,
            signer=self.signer,
            url_signer=self.url_signer,
            warmup_runs=1,
        )

    def desired(self, version: int, module: Any, replay: Path) -> DesiredState:
        pipeline = PipelineSpec(
            name="count",
            module="counter",
            stream="counts",
            source=SourceSpec(kind="file", path=str(replay), rate_hz=RATE_HZ, loop=True),
        )
        return DesiredState(version=version, modules=[module], pipelines=[pipeline])

    def seqs(self) -> list[int]:
        return sorted(e.seq for e in list(self.events))


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    require_mosquitto()
    port = free_port()
    settings = EdgeSettings(data_dir=tmp_path / "cp", broker_url=f"mqtt://127.0.0.1:{port}")
    result = enroll(AGENT, site=SITE, settings=settings)
    broker = start_mosquitto(
        port,
        workdir=tmp_path / "mosquitto",
        password_file=settings.password_file,
        acl_file=settings.acl_file,
    )
    creds = control_plane_credentials(settings)
    health = EnrolmentStore(settings.store_path)
    gateway: EdgeBus | None = None
    m: Mesh | None = None
    try:
        gateway = EdgeBus(
            broker.url,
            username=creds.username,
            password=creds.password,
            keepalive_s=5,
            health_sink=health,
        ).start()
        m = Mesh(
            tmp_path,
            settings,
            result,
            broker,
            ArtifactStore(settings.data_dir / "artifacts"),
            ArtifactSigner.load_or_create(settings.data_dir),
            UrlSigner.load_or_create(settings.data_dir),
            health,
            gateway,
        )
        gateway.on_event(m.events.append)
        gateway.subscribe(f"{T.prefix}/events/{SITE}/#", lambda t, p: m.raw_events.append(p))
        m.start_server()
        yield m
    finally:
        if m is not None:
            m.stop_server()
        if gateway is not None:
            gateway.stop()
        broker.stop()
        health.close()


def _agent_args(m: Mesh, cache: Path) -> list[str]:
    # The device command printed at enrolment, plus test-speed knobs.
    return [
        *m.enrolment.command[1:],
        "--cache-dir",
        str(cache),
        "--keepalive-s",
        str(KEEPALIVE_S),
        "--heartbeat-period-s",
        "0.5",
        "--reconnect-min-s",
        "1",
        "--reconnect-max-s",
        "1",
        "--log-level",
        "INFO",
    ]


def _replay_file(path: Path) -> Path:
    from edge_agent._sources import write_replay

    frames = [
        encode_frame({}, [Tensor.from_numpy("x", np.full((1, 4), i, np.float32))])
        for i in range(1, 21)
    ]
    write_replay(path, frames)
    return path


async def _load(
    gw: EdgeBus,
    stop: threading.Event,
    results: list[InferResult],
    failures: list[BaseException],
    workers: int = 4,
) -> None:
    rng = np.random.default_rng(0)

    async def worker() -> None:
        while not stop.is_set():
            x = rng.random((2, 4), dtype=np.float32)
            try:
                result = await gw.infer("counter", AGENT, {"x": x}, timeout_s=10)
            except Exception as exc:
                failures.append(exc)
                continue
            scale = {"1": 1.0, "2": 2.0}[result.reply.version or ""]
            np.testing.assert_allclose(result.outputs["y"], x * scale, rtol=1e-6)
            results.append(result)

    await asyncio.gather(*[worker() for _ in range(workers)])


def _wait(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    gw: EdgeBus,
    agent: AgentProcess | None = None,
) -> None:
    if not gw.wait_until(predicate, timeout_s):
        log = agent.log()[-4000:] if agent is not None else ""
        pytest.fail(f"timed out after {timeout_s}s waiting for {what}\nagent log:\n{log}")


def test_agent_lifecycle_end_to_end(
    mesh: Mesh,
    agent_processes: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    m, gw = mesh, mesh.gateway
    cache = m.tmp / "agent-cache"
    replay = _replay_file(m.tmp / "frames.bin")
    v1 = build_tiny_model(m.tmp / "v1.onnx", scale=1.0)
    v2 = build_tiny_model(m.tmp / "v2.onnx", scale=2.0)

    # ---- start: online, seen by the gateway and by a plain mosquitto_sub
    agent = agent_processes(_agent_args(m, cache), m.tmp / "agent.log").start()
    _wait(
        lambda: (v := gw.agent(AGENT)) is not None and v.state == "online",
        30,
        "the agent to come online",
        gw,
        agent,
    )
    creds = control_plane_credentials(m.settings)
    sub = mosquitto_sub(m.broker, T.status(AGENT), username=creds.username, password=creds.password)
    out, _ = sub.communicate(timeout=15)
    assert json.loads(out.partition(" ")[2])["state"] == "online"

    # ---- install v1, infer over MQTT
    gw.publish_desired(AGENT, m.desired(1, m.module("1", v1), replay))
    _wait(
        lambda: (
            (v := gw.agent(AGENT)) is not None
            and v.observed is not None
            and v.observed.version == 1
        ),
        30,
        "observed version 1",
        gw,
        agent,
    )
    observed = gw.wait_for_observed(AGENT, 1)
    assert [(i.name, i.version) for i in observed.installed] == [("counter", "1")]
    assert observed.errors == [] and observed.pipelines == ["count"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = gw.infer_sync("counter", AGENT, {"x": x}, timeout_s=10)
    assert first.reply.version == "1" and first.reply.node == AGENT
    np.testing.assert_array_equal(first.outputs["y"], x)
    _wait(lambda: len(m.events) >= 5, 15, "pipeline events", gw, agent)
    assert {e.version for e in m.events} == {"1"} and m.events[0].site == SITE

    # ---- hot swap to v2 under continuous requests: zero failures
    results: list[InferResult] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    async def swap() -> None:
        load = asyncio.create_task(_load(gw, stop, results, failures))
        while len(results) < 40:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(gw.publish_desired, AGENT, m.desired(2, m.module("2", v2), replay))
        await asyncio.to_thread(gw.wait_for_observed, AGENT, 2, timeout_s=30)
        seen_v2 = sum(r.reply.version == "2" for r in results)
        while sum(r.reply.version == "2" for r in results) < seen_v2 + 40:
            await asyncio.sleep(0.01)
        stop.set()
        await load

    asyncio.run(swap())
    assert failures == [], f"{len(failures)} requests failed during the swap: {failures[:3]}"
    versions = [r.reply.version for r in results]
    assert versions[0] == "1" and versions[-1] == "2" and len(results) >= 80
    observed = gw.wait_for_observed(AGENT, 2)
    assert [(i.name, i.version) for i in observed.installed] == [("counter", "2")]
    _wait(lambda: any(e.version == "2" for e in m.events), 15, "v2 events", gw, agent)

    # ---- broker down for 10 s: buffered on the device, all delivered after, none lost
    down_at = time.time()
    m.broker.stop()
    _wait(lambda: not gw.connected, 10, "the gateway to notice the outage", gw)
    time.sleep(OUTAGE_S)  # the outage itself: the scenario's 10 seconds
    m.broker.start()
    up_at = time.time()
    _wait(
        lambda: any(e.ts > up_at + 1.0 for e in m.events),
        60,
        "events made after the outage (the backlog is replayed first, in order)",
        gw,
        agent,
    )
    seqs = m.seqs()
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "an event was lost"
    buffered = [e for e in m.events if down_at + 0.5 < e.ts < up_at - 0.5]
    assert len(buffered) >= OUTAGE_S * RATE_HZ / 3, f"only {len(buffered)} events buffered"
    assert len({e.id for e in m.events}) == len(m.events)
    # replays count once: resend some events as the outbox would after a lost PUBACK
    before, dupes_before = len(m.events), gw.stats().duplicate_events
    for payload in list(m.raw_events[:25]):
        gw.publish(T.events(SITE, "counts"), payload, timeout_s=5)
    _wait(lambda: gw.stats().duplicate_events >= dupes_before + 25, 10, "duplicates", gw)
    assert len(m.events) - before < 25 + RATE_HZ * 5  # only new pipeline events were added
    assert len({e.id for e in m.events}) == len(m.events)

    # ---- a frozen agent (SIGSTOP: the TCP connection stays open) is declared offline
    # by the broker's keepalive check, 1.5x keepalive after its last packet; Mosquitto
    # counts in whole seconds and checks about once a second, hence up to 2 s more
    # (measured here: 3.9-4.7 s for a 2 s keepalive)
    _wait(
        lambda: (v := gw.agent(AGENT)) is not None and v.state == "online",
        20,
        "online again after the outage",
        gw,
        agent,
    )
    frozen_at = time.monotonic()
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        _wait(
            lambda: (v := gw.agent(AGENT)) is not None and v.state == "offline",
            1.5 * KEEPALIVE_S + 2.0,
            "offline by keepalive",
            gw,
        )
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    assert time.monotonic() - frozen_at <= 1.5 * KEEPALIVE_S + 2.0
    _wait(
        lambda: (v := gw.agent(AGENT)) is not None and v.state == "online",
        20,
        "online again after SIGCONT",
        gw,
        agent,
    )

    # ---- SIGKILL: offline (last will) within 1.5x keepalive
    killed_at = time.monotonic()
    agent.kill()
    _wait(
        lambda: (v := gw.agent(AGENT)) is not None and v.state == "offline",
        1.5 * KEEPALIVE_S,
        "offline within 1.5x keepalive",
        gw,
    )
    assert time.monotonic() - killed_at <= 1.5 * KEEPALIVE_S

    # ---- restart with the broker and the artifact endpoint down: serves from cache
    m.stop_server()
    m.broker.stop()
    restarted_at = time.time()
    again = agent_processes(_agent_args(m, cache), m.tmp / "agent-2.log").start()
    assert again.wait_log("with 1 cached module", 30), again.log()[-3000:]
    assert again.wait_log("restored desired version 2 from cache", 5), again.log()[-3000:]
    assert again.wait_log("pipeline count: started", 10), again.log()[-3000:]
    m.broker.start()
    status_ts: list[float] = []

    def online_status() -> bool:
        view = gw.agent(AGENT)
        if view is None or view.status is None or view.state != "online":
            return False
        status_ts.append(view.status.ts)
        return view.status.ts > restarted_at

    _wait(online_status, 30, "the restarted agent online", gw, again)
    online_at = status_ts[-1]
    _wait(lambda: any(e.ts > online_at for e in m.events), 30, "events after reconnect", gw, again)
    from_cache = [e for e in m.events if restarted_at < e.ts < online_at]
    assert from_cache, "no event was produced before the agent reconnected"
    assert {e.version for e in from_cache} == {"2"} and {e.route for e in from_cache} == {"local"}
    result = gw.infer_sync("counter", AGENT, {"x": x}, timeout_s=10)
    assert result.reply.version == "2"
    np.testing.assert_array_equal(result.outputs["y"], 2 * x)
    seqs = m.seqs()
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "an event was lost across the restart"
    again.terminate()
    _wait(
        lambda: (v := gw.agent(AGENT)) is not None and v.state == "offline",
        10,
        "offline after a clean stop",
        gw,
    )
    record = m.health.get(AGENT)
    assert record is not None and record.state == "offline"
