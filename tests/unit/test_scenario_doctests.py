"""The examples in the scenario harness's and the traffic plugin's docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "mesh.scenario._events",
    "mesh.scenario._live",
    "mesh.scenario._plugin",
    "mesh.scenario._report",
    "functions.traffic.sim.config",
    "functions.traffic.sim.kpis",
    "functions.vibration",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
