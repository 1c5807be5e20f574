"""A link's ``bandwidth_mbps`` caps what crosses it (the delay router paces each path)."""

from __future__ import annotations

import json
import subprocess
import sys

from mesh.scenario._nodes import Link
from tests.support.testbed import HostSpec, TestBed

ECHO = [sys.executable, "-m", "tests.support.testbed._echo"]
BULK_BYTES = 1_000_000


def test_a_capped_link_carries_no_more_than_its_rate() -> None:
    """client <-> cloud at 8 Mbit/s (1 MB/s): echoing 1 MB takes about a second; fog is uncapped."""
    hosts = [HostSpec("cloud", "cloud"), HostSpec("fog-0", "fog"), HostSpec("client", "client")]
    cap = Link.model_validate({"from": "client", "to": "cloud", "delay_ms": 2, "bandwidth_mbps": 8})
    with TestBed(hosts, [cap]) as bed:
        took = {}
        for server in ("cloud", "fog-0"):
            proc = bed.spawn(
                server,
                [*ECHO, "serve", "--host", bed.address(server)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            port = proc.stdout.readline().strip()
            done = bed.run(
                "client",
                [
                    *ECHO,
                    "probe",
                    "--host",
                    bed.address(server),
                    "--port",
                    port,
                    "--count",
                    "1",
                    "--bulk-bytes",
                    str(BULK_BYTES),
                ],
            )
            took[server] = json.loads(done.stdout)["bulk_s"]
    rate_bytes_s = 8e6 / 8
    burst = 16 * 1024  # the pacer's bucket (LinkShape.burst_bytes) goes at once
    assert took["cloud"] >= (BULK_BYTES - burst) / rate_bytes_s * 0.95, took
    assert took["cloud"] <= 30.0, took  # generous: it got through
    assert took["fog-0"] < took["cloud"], took
