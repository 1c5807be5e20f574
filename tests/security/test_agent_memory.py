"""An agent's memory stays inside its budget under a burst of the largest requests it accepts.

Before the budget, 300 valid 4 MiB requests took an agent from 86 MB to 4.4 GB
and it stayed there: the queue counted requests (256), not bytes, and batching
copied up to 16 of them again. The shipped systemd unit caps the agent at
``MemoryMax=256M``, where that is death by the OOM killer. Here a real agent
process (``python -m edge_agent``, as deploy runs it) with the default budget
gets such a burst: its RSS stays under the unit's 256 MiB during and after, the
requests past the budget are answered ``overloaded`` at once (counted), and a
valid request is answered afterwards.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import tests.support.agent_fixtures as af
from edge_agent.protocol import Tensor, Topics, encode_frame
from edge_agent.protocol._frames import peek_header  # (public since issue 14)
from mesh.edge.broker._broker import MosquittoBroker
from tests.security._edge import running_agent, wait
from tests.support.agent_fixtures import (
    AgentProcess,
    ArtifactServer,
    SigningKey,
    build_slow_model,
)
from tests.support.brokers import mosquitto  # noqa: F401  (fixture)

signing_key = af.signing_key
artifact_server = af.artifact_server
agent_processes = af.agent_processes
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(300)]

T = Topics()
MIB = 1024 * 1024
REQUESTS = 300
MAX_PAYLOAD = 4 * MIB  # the agent's default max_payload_bytes: the largest it accepts
SLOW = "slow"  # a module slower than the burst arrives (a matrix product per request)
ROWS, COLUMNS = 2040, 512  # its float32 input: 4,177,920 bytes, with the header under 4 MiB
DEPTH = 4  # matrix products per request: ~0.3 s here, slower than 4 MiB requests arrive
UNIT_MEMORY_MAX = 256 * MIB  # deploy/edge-agent.service: MemoryMax=256M


class RssSampler:
    """Samples a process's RSS on a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_burst_of_the_largest_requests_stays_inside_the_memory_budget(
    mosquitto: MosquittoBroker,  # noqa: F811
    tmp_path: Path,
    signing_key: SigningKey,
    artifact_server: ArtifactServer,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    slow = build_slow_model(tmp_path / "slow.onnx", rows=ROWS, width=COLUMNS, depth=DEPTH)
    with running_agent(
        mosquitto,
        tmp_path,
        signing_key,
        artifact_server,
        agent_processes,
        more_modules={SLOW: slow.read_bytes()},
    ) as running:
        r = running.requester
        assert running.answers()
        sampler = RssSampler(running.proc.pid)
        idle = sampler.rss()
        codes: Counter[str] = Counter()
        lock = threading.Lock()
        burst_topic = T.reply(r.client_id, "burst")

        def on_burst_reply(_c: Any, _u: Any, msg: Any) -> None:
            header = peek_header(bytes(msg.payload)) or {}
            with lock:
                codes[(header.get("error") or {}).get("code", "ok")] += 1

        r.client.message_callback_add(burst_topic, on_burst_reply)
        r.subscribe(burst_topic)
        data = np.ones((ROWS, COLUMNS), np.float32)
        with sampler:
            for wave in range(0, REQUESTS, 20):  # 20 at a time: the test's own memory
                infos = []
                for _ in range(wave, min(wave + 20, REQUESTS)):
                    header = {
                        "schema_version": 1,
                        "kind": "infer_request",
                        "module": SLOW,
                        "reply_to": burst_topic,
                        "correlation_id": uuid.uuid4().hex,
                    }
                    frame = encode_frame(header, [Tensor.from_numpy("x", data)])
                    assert len(frame) <= MAX_PAYLOAD
                    infos.append(r.client.publish(T.infer(SLOW, running.agent), frame, qos=1))
                for info in infos:
                    info.wait_for_publish(60)
            wait(lambda: sum(codes.values()) >= REQUESTS, 240, f"{REQUESTS} answers: {codes}")
            assert running.answers()  # a valid request, answered after the burst
            after = sampler.rss()
        print(
            f"agent RSS: idle {idle / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB, "
            f"after {after / MIB:.0f} MiB; answers {dict(codes)}"
        )
        assert codes["overloaded"] > 0, f"nothing was refused: {codes}"
        assert set(codes) <= {"ok", "overloaded"}, codes
        assert sampler.peak < UNIT_MEMORY_MAX, (
            f"peak RSS {sampler.peak / MIB:.0f} MiB is over the unit's 256 MiB"
        )
        # After the burst the memory goes back: within 64 MiB of idle.
        assert after < idle + 64 * MIB, f"RSS {after / MIB:.0f} MiB after, {idle / MIB:.0f} idle"
        assert running.still_connected()
