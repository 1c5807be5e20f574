"""Bad input at scale (issue 19): a flooding agent is limited and flagged, the others are not slowed.

A real ``mesh up`` on Mosquitto with enrolled simulated agents
(``tests/support/fleet_mesh.py``); one more connection, logged in with one
agent's own credentials (so the broker's ACL lets it write that agent's topics),
sends heartbeats as fast as paho lets it. Checked, with bounded waits and no
speed asserted:

- the control plane counts the flooder's heartbeats over its rate
  (``mesh_edge_flood_limited{agent,kind="heartbeat_dropped"}`` on ``/metrics``)
  and flags it in the agent listing (``/v1/dashboard/snapshot``'s ``flood``);
- while the flood goes on, every other agent's heartbeat is taken (its last
  heartbeat arrived after the flooder was limited), and none of them is flagged.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent._mqtt import ClientOptions, new_client
from edge_agent.protocol import Heartbeat, HostMetrics, Topics
from tests.support.brokers import require_mosquitto
from tests.support.fleet_mesh import FleetMesh

pytestmark = [pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(420)]

AGENTS = 10
_LIMITED = re.compile(
    r'^mesh_edge_flood_limited\{agent="([^"]+)",kind="heartbeat_dropped"\} (\S+)$', re.M
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetMesh]:
    require_mosquitto()
    mesh = FleetMesh(Path(tmp_path_factory.mktemp("flood")), agents=AGENTS, keepalive_s=10)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.close()


class Flooder:
    """A second connection as one agent, sending its heartbeats in a loop until stopped."""

    def __init__(self, fleet: FleetMesh, index: int) -> None:
        assert fleet.fleet is not None
        creds = fleet.fleet.agents[index].creds
        self.agent_id = creds.agent_id
        self.sent = 0
        self._stop = threading.Event()
        self._client = new_client(
            ClientOptions(
                client_id=f"{creds.agent_id}-flood",
                protocol="3.1.1",
                username=creds.agent_id,
                password=creds.password,
            )
        )
        self._client.connect("127.0.0.1", fleet.mosquitto.device_port)
        self._client.loop_start()
        host = HostMetrics(
            cpu_percent=1, mem_percent=1, mem_available_mb=1, rss_mb=1, load1=0, load5=0, load15=0
        )
        beat = Heartbeat(agent=self.agent_id, period_s=1.0, host=host)
        self._payload = beat.model_dump_json().encode()
        self._topic = Topics().heartbeat(self.agent_id)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(2_000_000):  # bounded: minutes at paho's pace
            if self._stop.is_set():
                return
            for _ in range(100):  # in bursts of 100, so the loop thread gets to send them
                self._client.publish(self._topic, self._payload, 0)
            self.sent += 100
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.disconnect()
        self._client.loop_stop()


def _get(fleet: FleetMesh, path: str) -> bytes:
    req = urllib.request.Request(
        f"{fleet.gateway}{path}", headers={"Authorization": f"Bearer {fleet.token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body: bytes = resp.read()
    return body


def _limited(fleet: FleetMesh) -> dict[str, float]:
    return {a: float(n) for a, n in _LIMITED.findall(_get(fleet, "/metrics").decode())}


def _agents(fleet: FleetMesh) -> dict[str, dict[str, Any]]:
    snapshot = json.loads(_get(fleet, "/v1/dashboard/snapshot"))
    return {a["agent_id"]: a for a in snapshot["agents"]}


def _wait(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


def test_a_flooding_agent_is_limited_and_flagged_and_the_others_keep_beating(
    fleet: FleetMesh,
) -> None:
    assert fleet.fleet is not None
    flooder = Flooder(fleet, index=0)
    others = [a.agent_id for a in fleet.fleet.agents if a.agent_id != flooder.agent_id]
    try:
        assert _wait(lambda: _limited(fleet).get(flooder.agent_id, 0) > 0, 60), (
            f"not limited after {flooder.sent} heartbeats: {_limited(fleet)}"
        )
        limited_at = time.time()
        sent_then = flooder.sent

        def all_beat_since() -> bool:
            now, agents = time.time(), _agents(fleet)
            ages = {a: agents[a]["heartbeat_age_s"] for a in others if a in agents}
            return len(ages) == len(others) and all(
                age is not None and now - age > limited_at for age in ages.values()
            )

        assert _wait(all_beat_since, 60), {
            a: v["heartbeat_age_s"] for a, v in _agents(fleet).items()
        }
        assert flooder.sent > sent_then  # the flood was still going on meanwhile
    finally:
        flooder.stop()

    agents = _agents(fleet)
    flood = agents[flooder.agent_id]["flood"]
    assert flood is not None and flood["dropped"]["heartbeat"] > 0, flood
    assert all(agents[a]["flood"] is None for a in others)
    limited = _limited(fleet)
    assert set(limited) == {flooder.agent_id}, limited
    assert limited[flooder.agent_id] <= flooder.sent
