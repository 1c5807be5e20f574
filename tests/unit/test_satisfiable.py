from __future__ import annotations

import pytest

from mesh import Resources, UnsatisfiableError
from mesh.compute import NodeInfo, check_satisfiable
from mesh.sdk import FunctionSpec

CLOUD = NodeInfo("c" * 8, True, {"mesh.tier": "cloud"}, {"CPU": 2.0, "GPU": 1.0})
FOG = NodeInfo("f" * 8, True, {"mesh.tier": "fog", "mesh.site": "s1"}, {"CPU": 1.0})
DEAD_FOG = NodeInfo("d" * 8, False, {"mesh.tier": "fog", "mesh.site": "s2"}, {"CPU": 8.0})


@pytest.mark.parametrize(
    ("spec", "node"),
    [
        (FunctionSpec(name="a", tier="cloud", resources=Resources(cpus=2, gpus=1)), CLOUD),
        (FunctionSpec(name="b", tier="fog", site="s1"), FOG),
    ],
)
def test_fits(spec: FunctionSpec, node: NodeInfo) -> None:
    assert check_satisfiable(spec, [CLOUD, FOG, DEAD_FOG]) == node


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (FunctionSpec(name="a", tier="fog", site="s2"), "no live fog node has site 's2'"),
        (FunctionSpec(name="b", tier="fog", resources=Resources(cpus=4)), r"CPU 1 < 4"),
        (FunctionSpec(name="c", tier="cloud", resources=Resources(custom={"tpu": 1})), "tpu 0 < 1"),
    ],
)
def test_refusals_explain(spec: FunctionSpec, message: str) -> None:
    with pytest.raises(UnsatisfiableError, match=message) as info:
        check_satisfiable(spec, [CLOUD, FOG, DEAD_FOG])
    assert "nodes: node=cccccccc, tier=cloud" in str(info.value)


def test_no_nodes_of_the_tier() -> None:
    with pytest.raises(UnsatisfiableError, match="no live node has tier 'fog'.*no live nodes"):
        check_satisfiable(FunctionSpec(name="x", tier="fog"), [])
