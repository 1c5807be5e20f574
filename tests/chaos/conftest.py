"""The chaos suite (issue 15): kill -9 parts of a running mesh under load; nothing is lost.

One mesh for the module (:class:`tests.support.chaos.ChaosMesh`: ``mesh up`` with
two fog nodes, a fog module, an edge agent serving an edge module; on the embedded
broker, or on a real Mosquitto for the broker's own faults); each test runs its
own steady load, injects one fault and checks the counts. The longer
soak with random faults at random moments is ``bench/chaos.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.brokers import require_mosquitto
from tests.support.chaos import ChaosMesh


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here ``chaos`` (``pytest -m chaos`` runs the suite alone)."""
    for item in items:
        if "tests/chaos/" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="module")
def chaos_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosMesh]:
    """A started mesh serving ``chaos-fog`` and ``chaos-edge``; ended, by pid, afterwards."""
    pytest.importorskip("ray")
    mesh = ChaosMesh(Path(tmp_path_factory.mktemp("chaos")), log=lambda _line: None)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="module")
def chaos_mosquitto_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosMesh]:
    """The same mesh on a real Mosquitto (skips without one); ended, by pid, afterwards."""
    pytest.importorskip("ray")
    require_mosquitto()
    workdir = Path(tmp_path_factory.mktemp("chaos-mosquitto"))
    mesh = ChaosMesh(workdir, log=lambda _line: None, broker="mosquitto")
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.close()
