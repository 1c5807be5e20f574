"""The fleet bench reads /metrics no more often than its own cost allows."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.support.fleet_metrics import PACE, MetricsReader

BODY = b"""# HELP mesh_edge_agent_up 1 while online
mesh_edge_agent_up{agent="sim-00001"} 1.0
mesh_edge_agent_up{agent="sim-00002"} 0.0
mesh_edge_bus_messages{kind="events"} 12.0
mesh_two_labels{a="1",b="2"} 3.0
"""


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[str], list[str]]]:
    auth: list[str] = []
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth.append(self.headers.get("Authorization", ""))
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", auth, paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_read_parses_one_label_series_and_times_itself(
    gateway: tuple[str, list[str], list[str]],
) -> None:
    url, auth, paths = gateway
    reader = MetricsReader(url, "tok")
    got = reader.read()
    assert got["mesh_edge_agent_up"] == {"sim-00001": 1.0, "sim-00002": 0.0}
    assert got["mesh_edge_bus_messages"] == {"events": 12.0}
    assert "mesh_two_labels" not in got
    assert auth == ["Bearer tok"]
    assert reader.last_s > 0
    reader.read("mesh_edge_agent_up", "mesh_edge_bus_messages")
    assert paths[-1] == "/metrics?name%5B%5D=mesh_edge_agent_up&name%5B%5D=mesh_edge_bus_messages"


def test_pause_is_the_floor_or_a_multiple_of_the_last_read() -> None:
    reader = MetricsReader("http://127.0.0.1:1", "tok")
    assert reader.pause(0.25) == 0.25  # nothing read yet
    reader.last_s = 0.01
    assert reader.pause(0.25) == 0.25
    reader.last_s = 1.5  # a slow read: wait long enough that reading stays a fifth of the time
    assert reader.pause(0.25) == pytest.approx(PACE * 1.5)
    assert reader.pause(10.0) == 10.0
    reader.last_whole = False  # a named read, slow: the control plane is busy, not with it
    assert reader.pause(0.25) == 0.25


def test_a_named_read_is_not_paced_by_its_time(gateway: tuple[str, list[str], list[str]]) -> None:
    url, _, _ = gateway
    reader = MetricsReader(url, "tok")
    reader.read()
    assert reader.last_whole
    reader.read("mesh_edge_agent_up")
    assert not reader.last_whole
    reader.last_s = 3.0
    assert reader.pause(0.25) == 0.25
