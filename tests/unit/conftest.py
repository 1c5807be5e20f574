"""Unit tests never start Ray or a broker: an autouse fixture makes ray.init raise."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if importlib.util.find_spec("ray") is not None:
        import ray

        def refuse(*args: object, **kwargs: object) -> None:
            raise RuntimeError("unit tests must not start Ray; put this test in tests/integration")

        monkeypatch.setattr(ray, "init", refuse)
    yield
