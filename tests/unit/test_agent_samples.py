"""The agent's fresh-data sampler: the reservoir, the upload budget, the policy, the pipeline hook."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import Agent, AgentSettings, MemoryBroker, MemoryTransport
from edge_agent._samples import Sampler, UploadBudget
from edge_agent._sources import write_replay
from edge_agent._transport import Message
from edge_agent.protocol import (
    DesiredState,
    SampleUpload,
    SamplingPolicy,
    Tensor,
    Topics,
    decode_frame,
    encode_frame,
    parse_header,
)
from tests.support.agent_fixtures import (
    ArtifactServer,
    SigningKey,
    build_tiny_model,
    desired,
    module_spec,
)

T = Topics()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Published:
    """A publish function that can be offline."""

    def __init__(self) -> None:
        self.online = True
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> bool:
        if self.online:
            self.sent.append((topic, payload))
        return self.online

    def headers(self) -> list[SampleUpload]:
        return [parse_header(decode_frame(p)[0], SampleUpload) for _, p in self.sent]


def frame(value: float, width: int = 4) -> list[Tensor]:
    return [Tensor.from_numpy("x", np.full((1, width), value, dtype=np.float32))]


def make(
    policy: SamplingPolicy | None, clock: Clock, out: Published
) -> tuple[Sampler, dict[str, SamplingPolicy | None]]:
    policies: dict[str, SamplingPolicy | None] = {"counter": policy}
    sampler = Sampler(
        out, T, "cam-1", "j1", lambda m: policies.get(m), clock=clock, rng=random.Random(7)
    )
    return sampler, policies


def test_budget_is_a_sliding_minute_of_samples_and_bytes() -> None:
    budget = UploadBudget(samples=3, nbytes=1000)
    assert [budget.take(300, now=t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert not budget.take(1, now=59.9)  # three uploads within the last 60 s
    assert budget.take(300, now=60.0)  # the first left the window
    assert not budget.take(500, now=61.5)  # 900 + 500 bytes > 1000 in the window
    with pytest.raises(ValueError, match="must be positive"):
        UploadBudget(samples=0, nbytes=10)


def test_uploads_stay_within_the_budget_and_the_rest_is_counted_dropped() -> None:
    clock, out = Clock(), Published()
    policy = SamplingPolicy(samples_per_min=5, bytes_per_min=1 << 20, reservoir=8)
    sampler, _ = make(policy, clock, out)
    for i in range(120):  # two minutes at one frame a second
        clock.now += 1.0
        sampler.offer("counter", "3", 5000.0 + i, frame(float(i)))
    stats = sampler.stats()["counter"]
    assert stats.offered == 120
    assert stats.uploaded == len(out.sent) == 10  # 5 a minute, for two minutes
    assert stats.held == 8  # the reservoir is full, never more
    assert stats.dropped == 120 - 10 - 8
    headers = out.headers()
    assert {h.module for h in headers} == {"counter"} and {h.site for h in headers} == {"j1"}
    assert [h.seq for h in headers] == list(range(1, 11))
    assert headers[-1].uploaded == 10 and headers[-1].offered <= 120
    assert {t for t, _ in out.sent} == {T.samples("cam-1", "counter")}
    # Each upload is the input that ran, with its capture time as the join key.
    for (_, payload), head in zip(out.sent, headers, strict=True):
        (x,) = decode_frame(payload)[1]
        assert float(x.to_numpy()[0, 0]) == head.source_ts - 5000.0


def test_a_sample_over_the_byte_budget_is_dropped_not_held() -> None:
    clock, out = Clock(), Published()
    sampler, _ = make(SamplingPolicy(bytes_per_min=2048, reservoir=4), clock, out)
    sampler.offer("counter", "3", 1.0, frame(1.0, width=1024))  # 4 KiB of floats
    stats = sampler.stats()["counter"]
    assert (stats.uploaded, stats.dropped, stats.held, out.sent) == (0, 1, 0, [])
    sampler.offer("counter", "3", 2.0, frame(1.0, width=4))
    assert sampler.stats()["counter"].uploaded == 1


def test_offline_keeps_samples_held_and_sends_them_when_back() -> None:
    clock, out = Clock(), Published()
    sampler, _ = make(SamplingPolicy(samples_per_min=30, reservoir=4), clock, out)
    out.online = False
    for i in range(3):
        sampler.offer("counter", "3", float(i), frame(float(i)))
    assert sampler.stats()["counter"].held == 3 and not out.sent
    out.online = True
    sampler.offer("counter", "3", 3.0, frame(3.0))
    assert sampler.stats()["counter"].uploaded == 4 and sampler.stats()["counter"].held == 0
    assert sorted(h.source_ts for h in out.headers()) == [0.0, 1.0, 2.0, 3.0]


def test_no_policy_no_sampling_and_turning_it_off_frees_the_reservoir() -> None:
    clock, out = Clock(), Published()
    sampler, policies = make(None, clock, out)
    sampler.offer("counter", "3", 1.0, frame(1.0))
    assert sampler.stats() == {} and not out.sent
    policies["counter"] = SamplingPolicy(samples_per_min=1, reservoir=4)
    for i in range(3):
        sampler.offer("counter", "3", float(i), frame(float(i)))
    assert sampler.stats()["counter"].held == 2
    policies["counter"] = None
    sampler.offer("counter", "3", 9.0, frame(9.0))
    assert sampler.stats()["counter"].held == 0 and len(out.sent) == 1


def test_the_held_inputs_are_copies() -> None:
    clock, out = Clock(), Published()
    sampler, _ = make(SamplingPolicy(samples_per_min=30, reservoir=4), clock, out)
    out.online = False
    buf = bytearray(np.full((1, 4), 2.0, np.float32).tobytes())
    sampler.offer("counter", "3", 2.0, [Tensor("x", "float32", (1, 4), memoryview(buf))])
    buf[:] = bytes(len(buf))  # the source reuses its buffer
    out.online = True
    sampler.offer("counter", "3", 3.0, frame(3.0))
    uploads = {h.source_ts: p for h, (_, p) in zip(out.headers(), out.sent, strict=True)}
    (x,) = decode_frame(uploads[2.0])[1]
    assert float(x.to_numpy()[0, 0]) == 2.0


def test_the_policy_is_part_of_the_desired_state_and_optional() -> None:
    base = {"schema_version": 1, "version": 1}
    entry = {"name": "m", "version": "1", "route": {"mode": "offload", "target": "r1"}}
    plain = DesiredState.model_validate({**base, "modules": [entry]})
    assert plain.modules[0].sampling is None
    sampled = DesiredState.model_validate(
        {**base, "modules": [{**entry, "sampling": {"samples_per_min": 6, "future": 1}}]}
    )
    policy = sampled.modules[0].sampling
    assert policy is not None and policy.samples_per_min == 6 and policy.reservoir == 64
    with pytest.raises(ValueError, match="bytes_per_min"):
        SamplingPolicy(bytes_per_min=10)


# ---------------------------------------------------------------- the agent


def _wait(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    s = ArtifactServer()
    yield s
    s.close()


def test_an_agent_uploads_its_pipeline_inputs_when_its_desired_state_asks(
    tmp_path: Path, server: ArtifactServer
) -> None:
    key = SigningKey.generate()
    model = build_tiny_model(tmp_path / "tiny.onnx", scale=2.0).read_bytes()
    broker = MemoryBroker()
    seen: list[Message] = []
    client = MemoryTransport(broker, "client")
    client.start()
    client.subscribe("mesh/v1/#", seen.append)
    path = tmp_path / "replay.bin"
    inputs = [Tensor.from_numpy("x", np.full((1, 4), float(i), np.float32)) for i in range(5)]
    write_replay(path, [encode_frame({"ts": 100.0 + i}, [t]) for i, t in enumerate(inputs)])
    pipeline: dict[str, Any] = {
        "name": "cam",
        "module": "tiny",
        "stream": "counts",
        "source": {"kind": "file", "path": str(path), "rate_hz": 50.0, "loop": True},
    }
    settings = AgentSettings(
        id="cam-1",
        site="s1",
        cache_dir=tmp_path / "cache",
        public_key=key.public_b64,
        heartbeat_period_s=60,
    )
    agent = Agent(settings, transport=MemoryTransport(broker, "cam-1"))
    agent.start()
    try:
        spec = module_spec(server, key, "tiny", "1", model)

        def publish(version: int, entry: dict[str, Any]) -> None:
            doc = desired(version, [entry], [pipeline])
            client.publish(T.desired("cam-1"), json.dumps(doc).encode(), retain=True)

        def samples() -> list[Message]:
            return [m for m in list(seen) if m.topic == T.samples("cam-1", "tiny")]

        def events() -> list[Message]:
            return [m for m in list(seen) if m.topic == T.events("s1", "counts")]

        publish(1, spec)
        assert _wait(lambda: len(events()) >= 10)
        assert samples() == []  # no policy: nothing sampled
        publish(2, {**spec, "sampling": {"samples_per_min": 4, "reservoir": 8}})
        assert _wait(lambda: len(samples()) >= 4)
        assert _wait(lambda: agent.sampler.stats()["tiny"].dropped > 0)
        assert len(samples()) == 4  # the budget: 4 in this minute
        # Each upload is an input that ran, keyed as its event is (the join key for labels).
        by_ts = {json.loads(m.payload)["source_ts"]: m for m in events()}
        for m in samples():
            head, (x,) = decode_frame(m.payload)
            upload = parse_header(head, SampleUpload)
            assert (upload.agent, upload.site, upload.version) == ("cam-1", "s1", "1")
            event = json.loads(by_ts[upload.source_ts].payload)
            value = float(x.to_numpy()[0, 0])
            np.testing.assert_array_equal(x.to_numpy(), inputs[int(value)].to_numpy())
            np.testing.assert_allclose(event["outputs"]["y"]["data"], [2.0 * value] * 4)
        assert agent.version == 2  # a sampling change reloads nothing
    finally:
        agent.stop()
        client.stop()
