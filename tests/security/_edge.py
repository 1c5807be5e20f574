"""A real agent process on a real Mosquitto, serving one tiny module: the target of the MQTT tests."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.protocol import ObservedState, Tensor, Topics
from mesh.edge.broker._broker import MosquittoBroker
from tests.support.agent_fixtures import (
    AgentProcess,
    ArtifactServer,
    Requester,
    SigningKey,
    build_tiny_model,
    desired,
    module_spec,
    requester,
)

T = Topics()
MODULE = "m"
WIDTH = 4


def wait(cond: Callable[[], object], timeout_s: float = 20.0, what: str = "") -> None:
    """Wait for ``cond`` (no timing asserted: the bound only ends a hung test)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up after {timeout_s}s waiting for {what or cond}")


def statuses(r: Requester, agent: str) -> list[str]:
    """The agent's status messages seen so far ('online'/'offline'), in order."""
    return [json.loads(p)["state"] for t, p in list(r.events) if t == T.status(agent) and p]


def x(rows: int = 1) -> Tensor:
    """A valid input of ``rows`` rows."""
    return Tensor.from_numpy("x", np.ones((rows, WIDTH), np.float32))


@dataclass
class RunningAgent:
    """The agent process, a requester (MQTT 5) watching its status, and its id."""

    proc: AgentProcess
    requester: Requester
    agent: str

    def still_connected(self) -> bool:
        """Never offline since it came up (a broker disconnect publishes its will)."""
        return "offline" not in statuses(self.requester, self.agent)

    def answers(self) -> bool:
        """A valid request gets its result (y = 2x)."""
        reply, outputs = self.requester.infer(MODULE, self.agent, [x()], timeout_s=30)
        return reply.ok and float(outputs[0].to_numpy()[0, 0]) == 2.0


@contextlib.contextmanager
def running_agent(
    broker: MosquittoBroker,
    tmp_path: Path,
    key: SigningKey,
    artifacts: ArtifactServer,
    make: Callable[..., AgentProcess],
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    more_modules: dict[str, bytes] | None = None,
) -> Iterator[RunningAgent]:
    """Start ``python -m edge_agent`` (as deploy runs it) serving module ``m`` (y = 2x).

    ``more_modules``: other modules to serve (name -> ONNX bytes), version "1".
    """
    agent = f"sec-{time.monotonic_ns() % 10**8}"
    model = build_tiny_model(tmp_path / "tiny.onnx", scale=2.0, width=WIDTH).read_bytes()
    args = [
        "--id", agent, "--site", "sec", "--broker", broker.url,
        "--cache-dir", str(tmp_path / "cache"), "--public-key", key.public_b64,
        "--heartbeat-period-s", "1", "--log-level", "INFO", *extra_args,
    ]  # fmt: skip
    with requester(broker.host, broker.port, protocol="5") as r:
        r.subscribe(T.status(agent))
        r.subscribe(T.observed(agent))
        proc = make(args, tmp_path / "agent.log", env).start()
        modules = {MODULE: model, **(more_modules or {})}
        specs = [module_spec(artifacts, key, name, "1", data) for name, data in modules.items()]
        r.client.publish(T.desired(agent), json.dumps(desired(1, specs)), qos=1, retain=True)

        def installed() -> bool:
            got = [p for t, p in list(r.events) if t == T.observed(agent)]
            if not got:
                return False
            return len(ObservedState.model_validate_json(got[-1]).installed) == len(modules)

        wait(installed, 30, f"agent {agent} to install {MODULE}: {proc.log()[-2000:]}")
        try:
            yield RunningAgent(proc, r, agent)
        finally:
            proc.terminate()
