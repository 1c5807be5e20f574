"""The demand helpers both SUMO networks share: the level check and the routes writer."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from functions.traffic.sim.network import DEMAND_LEVELS, demand_level, write_routes


def test_a_level_by_name_comes_with_a_salt_of_its_own() -> None:
    peak, salt = demand_level("peak", horizon_s=600.0, scale=1.0)
    assert peak is DEMAND_LEVELS["peak"]
    assert salt != demand_level("light", horizon_s=600.0, scale=1.0)[1]
    assert demand_level(peak, horizon_s=600.0, scale=1.0) == (peak, salt)


def test_bad_demand_is_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="unknown demand level 'rush'.*light"):
        demand_level("rush", horizon_s=600.0, scale=1.0)
    with pytest.raises(ValueError, match="horizon_s and scale must be > 0"):
        demand_level("peak", horizon_s=0.0, scale=1.0)
    with pytest.raises(ValueError, match="horizon_s and scale must be > 0"):
        demand_level("peak", horizon_s=600.0, scale=-1.0)


def test_routes_are_written_in_order_with_ids_and_departures(tmp_path: Path) -> None:
    path = tmp_path / "demo.rou.xml"
    write_routes(path, [(1.0, ["a", "b"]), (2.345, ("c",))])
    vehicles = ET.parse(path).getroot().findall("vehicle")
    assert [v.get("id") for v in vehicles] == ["v0", "v1"]
    assert [v.get("depart") for v in vehicles] == ["1.00", "2.35"]
    assert [v.find("route").get("edges") for v in vehicles] == ["a b", "c"]  # type: ignore[union-attr]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
