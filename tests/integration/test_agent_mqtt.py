"""A real agent process against a real broker (Mosquitto and the embedded amqtt).

Driven with plain paho (and a plain ``mosquitto_sub``): online status, install,
inference, hot swap under load, a broker outage with buffered events, SIGKILL and
the last will, a restart that serves from the cache before the broker is back,
and the bad-input list.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._sources import write_replay
from edge_agent.protocol import ErrorCode, Event, ObservedState, Tensor, Topics, encode_frame
from mesh.edge.broker._broker import BrokerHandle, start_mosquitto
from tests.support import agent_fixtures as af
from tests.support.agent_fixtures import (
    AgentProcess,
    AmqttProcess,
    ArtifactServer,
    Requester,
    SigningKey,
    build_slow_model,
    build_tiny_model,
    desired,
    module_spec,
    requester,
)
from tests.support.brokers import mosquitto_sub, require_mosquitto

# Shared fixtures, bound here so pytest finds them.
cnn_models = af.cnn_models
signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(150)]

T = Topics()
KEEPALIVE_S = 4
SITE = "int-1"


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A restartable broker on a fixed port: Mosquitto (with persistence) or the embedded amqtt."""
    handle: Any
    if request.param == "mosquitto":
        require_mosquitto()
        handle = start_mosquitto(workdir=tmp_path / "mosquitto")
        handle.kind = "mosquitto"
    else:
        # In a child process: amqtt's in-process shutdown can hang with clients attached.
        handle = AmqttProcess().start()
    try:
        yield handle
    finally:
        handle.stop()


def wait(cond: Callable[[], object], timeout_s: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or cond}")


def agent_args(b: BrokerHandle, agent: str, cache: Path, key: SigningKey) -> list[str]:
    return [
        "--id",
        agent,
        "--site",
        SITE,
        "--broker",
        b.url,
        "--cache-dir",
        str(cache),
        "--public-key",
        key.public_b64,
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


def publish_desired(r: Requester, agent: str, doc: dict[str, Any]) -> None:
    """The agent's desired state, retained at QoS 1 as the control plane publishes it."""
    r.client.publish(T.desired(agent), json.dumps(doc), qos=1, retain=True)


def observed(r: Requester, agent: str) -> ObservedState | None:
    got = [p for t, p in r.events if t == T.observed(agent)]
    return ObservedState.model_validate_json(got[-1]) if got else None


def events(r: Requester) -> list[Event]:
    return [
        Event.model_validate_json(p)
        for t, p in list(r.events)
        if t.startswith(f"{T.prefix}/events/")
    ]


def cnn_input(seed: int = 0) -> Tensor:
    arr = np.random.default_rng(seed).random((1, 1, 32, 32), dtype=np.float32)
    return Tensor.from_numpy("input", arr)


def test_agent_lifecycle(
    broker: Any,
    tmp_path: Path,
    cnn_models: tuple[Path, Path],
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = f"cam-{broker.kind}"
    v1, v2 = (p.read_bytes() for p in cnn_models)
    replay = tmp_path / "replay.bin"
    write_replay(replay, [encode_frame({}, [cnn_input(i)]) for i in range(10)])
    pipeline = {
        "name": "count",
        "module": "cnn",
        "stream": "counts",
        "source": {"kind": "file", "path": str(replay), "rate_hz": 20, "loop": True},
    }
    cache = tmp_path / "cache"
    with requester(broker.host, broker.port) as r:
        r.subscribe(f"{T.prefix}/agents/{agent}/#")
        r.subscribe(T.events(SITE, "#"))
        status_sub = mosquitto_sub(broker, T.status(agent), count=1, timeout_s=15)
        proc = agent_processes(
            agent_args(broker, agent, cache, signing_key), tmp_path / "agent.log"
        ).start()
        # 1. A plain mosquitto_sub sees the retained online status.
        out, _ = status_sub.communicate(timeout=20)
        assert json.loads(out.split(" ", 1)[1])["state"] == "online", out

        # 2. Install v1, infer.
        publish_desired(
            r,
            agent,
            desired(
                1,
                [module_spec(artifact_server, signing_key, "cnn", "1", v1, warmup_runs=1)],
                [pipeline],
            ),
        )
        wait(
            lambda: (
                (o := observed(r, agent)) is not None
                and o.version == 1
                and [m.version for m in o.installed] == ["1"]
            ),
            what="v1 installed",
        )
        reply, (logits,) = r.infer("cnn", agent, [cnn_input()])
        assert reply.ok and reply.version == "1" and logits.shape == (1, 10)

        # 3. Hot swap to v2 under continuous requests: nothing fails.
        results: list[Any] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    results.append(r.infer("cnn", agent, [cnn_input(i)], timeout_s=5)[0])
                except BaseException as exc:
                    failures.append(exc)
                i += 1

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait(lambda: len(results) > 20, what="load running")
            publish_desired(
                r,
                agent,
                desired(
                    2,
                    [module_spec(artifact_server, signing_key, "cnn", "2", v2, warmup_runs=1)],
                    [pipeline],
                ),
            )
            wait(lambda: any(x.version == "2" for x in results[-5:]), what="v2 serving")
            n = len(results)
            wait(lambda: len(results) > n + 20, what="more requests on v2")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert failures == [] and all(x.ok for x in results)
        versions = [x.version for x in results]
        assert "1" in versions and "2" in versions

        # 4. Broker outage: events are buffered on disk and all delivered after it.
        wait(lambda: len(events(r)) >= 5, what="pipeline events")
        broker.stop()
        outage_start = time.time()
        time.sleep(5.0)  # the outage itself: the agent keeps running its pipeline meanwhile
        broker.start()
        made_offline = 5.0 * 20 * 0.8
        wait(
            lambda: (
                sum(
                    1
                    for e in events(r)
                    if e.source_ts
                    and e.source_ts > outage_start + 0.5
                    and e.source_ts < outage_start + 4.5
                )
                >= made_offline * 0.8
            ),
            timeout_s=20,
            what="events made during the outage",
        )
        evs = [e for e in events(r) if e.agent == agent]
        seqs = sorted({e.seq for e in evs})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap in the event sequence"
        by_seq: dict[int, set[str]] = {}
        for e in evs:
            by_seq.setdefault(e.seq, set()).add(e.id)
        assert all(len(ids) == 1 for ids in by_seq.values()), "a replay changed an event id"

        # 5. SIGKILL: the broker publishes the last will (offline) within 1.5 x keepalive.
        wait(lambda: observed(r, agent) is not None, what="reconnected")
        n_status = len([1 for t, _ in r.events if t == T.status(agent)])
        killed = time.monotonic()
        proc.kill()
        wait(
            lambda: any(
                json.loads(p)["state"] == "offline"
                for t, p in r.events[n_status:]
                if t == T.status(agent)
            ),
            timeout_s=1.5 * KEEPALIVE_S + 1,
            what="last will",
        )
        assert time.monotonic() - killed <= 1.5 * KEEPALIVE_S

        # 6. Restart with the broker down: serves from the cache before reaching it.
        broker.stop()
        restarted = time.time()
        restart = agent_processes(
            agent_args(broker, agent, cache, signing_key), tmp_path / "agent2.log"
        ).start()
        assert restart.wait_log("with 1 cached module(s)", 15), restart.log()
        assert restart.wait_log("pipeline count: started", 5), restart.log()
        time.sleep(3.0)  # let the offline pipeline produce a few events (slow when loaded)
        broker_back = time.time()
        n_status = len([1 for t, _ in r.events if t == T.status(agent)])
        broker.start()

        def offline_events() -> list[Event]:
            return [
                e
                for e in events(r)
                if e.source_ts and restarted < e.source_ts < broker_back and e.version == "2"
            ]

        with contextlib.suppress(AssertionError):
            wait(offline_events, timeout_s=20)
        # Once seen flaky in CI (the agent connected, no event arrived): say what was there.
        assert offline_events(), (
            f"no event made before the broker came back; since the restart the requester got "
            f"{sum(1 for e in events(r) if e.source_ts and e.source_ts > restarted)} event(s), "
            f"requester connected: {r.client.is_connected()}; agent log:\n{restart.log()[-3000:]}"
        )
        wait(
            lambda: any(
                json.loads(p)["state"] == "online"
                for t, p in r.events[n_status:]
                if t == T.status(agent)
            ),
            what="online again",
        )
        reply, _ = r.infer("cnn", agent, [cnn_input()])
        assert reply.ok and reply.version == "2"
        assert restart.terminate() == 0
        wait(
            lambda: any(
                json.loads(p).get("reason", "").startswith("signal")
                for t, p in r.events
                if t == T.status(agent)
            ),
            what="clean offline",
        )


def test_frames_in_hand_when_the_agent_dies_come_again(
    broker: Any,
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    """A frame the agent took but had not answered when it was killed is not lost.

    The broker sends it again to the restarted agent's session: the agent
    acknowledges a frame only once its event is in the outbox.
    """
    agent, topic = f"hand-{broker.kind}", f"{T.prefix}/sensors/hand-{broker.kind}/camera"
    slow = build_slow_model(tmp_path / "slow.onnx", rows=128, depth=48).read_bytes()
    pipeline = {
        "name": "count",
        "module": "slow",
        "stream": "counts",
        "source": {"kind": "mqtt", "topic": topic, "options": {"buffer": 64}},
    }
    args = agent_args(broker, agent, tmp_path / "cache", signing_key)
    frames = 6
    x = np.random.default_rng(0).random((128, 512), dtype=np.float32)
    with requester(broker.host, broker.port) as r:
        r.subscribe(T.events(SITE, "#"))
        r.subscribe(T.observed(agent))
        proc = agent_processes(args, tmp_path / "agent.log").start()
        publish_desired(
            r,
            agent,
            desired(
                1,
                [module_spec(artifact_server, signing_key, "slow", "1", slow, warmup_runs=1)],
                [pipeline],
            ),
        )
        wait(
            lambda: (o := observed(r, agent)) is not None and o.version == 1 and bool(o.installed),
            what="the slow module installed",
        )
        assert proc.wait_log("pipeline count: started", 15), proc.log()
        for i in range(frames):
            frame = encode_frame({"ts": 1000.0 + i}, [Tensor.from_numpy("x", x)])
            r.client.publish(topic, frame, qos=1)

        def answered() -> set[float]:
            return {e.source_ts for e in events(r) if e.agent == agent and e.source_ts}

        # The first answer is out: the agent holds the other frames, unanswered.
        wait(lambda: answered(), what="the first frame answered")
        proc.kill()
        assert len(answered()) < frames, "the agent answered everything before it died"
        restart = agent_processes(args, tmp_path / "agent2.log").start()
        everything = {1000.0 + i for i in range(frames)}
        with contextlib.suppress(AssertionError):
            wait(lambda: answered() >= everything, timeout_s=30)
        assert answered() >= everything, f"answered after the restart: {sorted(answered())}"
        assert restart.terminate() == 0


def test_bad_input(
    broker: Any,
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = f"bad-{broker.kind}"
    good = build_tiny_model(tmp_path / "good.onnx", scale=2.0).read_bytes()
    newer = build_tiny_model(tmp_path / "newer.onnx", scale=3.0).read_bytes()
    custom = build_tiny_model(tmp_path / "custom.onnx", op_domain="com.example.x").read_bytes()
    args = [
        *agent_args(broker, agent, tmp_path / "cache", signing_key),
        "--max-payload-bytes",
        "65536",
    ]
    x = Tensor.from_numpy("x", np.ones((1, 4), np.float32))
    with requester(broker.host, broker.port) as r:
        r.subscribe(T.observed(agent))
        proc = agent_processes(args, tmp_path / "agent.log").start()

        def send_desired(doc: dict[str, Any] | bytes) -> None:
            raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            r.client.publish(T.desired(agent), raw, qos=1, retain=True)

        def obs(version: int) -> ObservedState:
            wait(
                lambda: (o := observed(r, agent)) is not None and o.version == version,
                what=f"observed version {version}",
            )
            o = observed(r, agent)
            assert o is not None
            return o

        send_desired(desired(3, [module_spec(artifact_server, signing_key, "m", "1", good)]))
        obs(3)
        # Malformed JSON, wrong schema_version, an older version: ignored, logged.
        send_desired(b"{oops")
        send_desired({**desired(9, []), "schema_version": 2})
        send_desired(desired(2, []))
        assert proc.wait_log("desired state refused: malformed", 10)
        assert proc.wait_log("schema_version 2 is not supported", 10)
        assert proc.wait_log("ignoring desired version 2 (holding 3)", 10)
        # Artifacts: bad sha256, bad signature, a module the device cannot run.
        bad_sha = module_spec(
            artifact_server,
            signing_key,
            "m",
            "4",
            newer,
            sha256="0" * 64,
            signature=signing_key.sign("m", "4", "0" * 64),
        )
        send_desired(desired(4, [bad_sha]))
        assert obs(4).errors[0].code == ErrorCode.INTEGRITY
        bad_sig = module_spec(artifact_server, SigningKey.generate(), "m", "5", newer)
        send_desired(desired(5, [bad_sig]))
        assert "signature" in obs(5).errors[0].message
        send_desired(desired(6, [module_spec(artifact_server, signing_key, "m", "6", custom)]))
        o = obs(6)
        assert o.errors[0].code == ErrorCode.UNSUPPORTED
        assert [(m.name, m.version) for m in o.installed] == [("m", "1")]  # old one serves

        # Requests: wrong shape/dtype, unknown module, oversize, wrong schema, malformed.
        reply, _ = r.infer("m", agent, [Tensor.from_numpy("x", np.ones((1, 5), np.float32))])
        assert reply.error is not None and reply.error.code is ErrorCode.BAD_INPUT
        assert reply.error.expected is not None and "float32[N,4]" in reply.error.message
        reply, _ = r.infer("m", agent, [Tensor.from_numpy("x", np.ones((1, 4), np.int32))])
        assert reply.error is not None and "dtype int32" in reply.error.message
        reply, _ = r.infer("ghost", agent, [x])
        assert reply.error is not None and reply.error.code is ErrorCode.UNKNOWN_MODULE
        big = Tensor.from_numpy("x", np.ones((5000, 4), np.float32))
        reply, _ = r.infer("m", agent, [big])
        assert reply.error is not None and reply.error.code is ErrorCode.PAYLOAD_TOO_LARGE
        reply, _ = r.infer("m", agent, [x], schema_version=2)
        assert reply.error is not None and reply.error.code is ErrorCode.SCHEMA_VERSION
        r.client.publish(T.infer("m", agent), b"\x00not a frame", qos=1)
        assert proc.wait_log("not a frame", 10)
        reply, (y,) = r.infer("m", agent, [x])  # still serving v1, nothing lost
        assert reply.ok and reply.version == "1"
        np.testing.assert_allclose(y.to_numpy(), 2.0)
        assert proc.proc is not None and proc.proc.poll() is None
        assert proc.terminate() == 0
