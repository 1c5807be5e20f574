"""The multi-host tests' event counter (tests/support/multihost_events.py): its pipeline and input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent.protocol import PipelineSpec
from tests.support.multihost_events import STREAM, frames_topic, pipeline_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_pipeline_reads_the_sites_sensor_topic_and_publishes_qos_1_events() -> None:
    [spec] = json.loads(pipeline_env("counter", "edge-1")["EDGE_AGENT_PIPELINES"])
    pipeline = PipelineSpec.model_validate(spec)
    assert (pipeline.module, pipeline.stream_name, pipeline.qos) == ("counter", STREAM, 1)
    assert pipeline.source.topic == frames_topic("edge-1") == "mesh/v1/sensors/edge-1/hog-frames"


def test_a_plain_broker_url_gets_a_clear_error(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"username": "u", "password": "p"}))
    argv = [sys.executable, "-m", "tests.support.multihost_events", "--broker", "mqtt://h:1",
            "--ca-file", "ca.pem", "--credentials", str(creds), "--site", "s",
            "--stop-file", str(tmp_path / "stop")]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "expected mqtts://host:port" in done.stderr, done.stderr
