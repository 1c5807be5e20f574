"""Modules on the test bed's edge agents: deployed to one agent each and pinned there.

:func:`deploy_on_agents` runs, in ``cloud``, ``mesh modules deploy MODEL --name
MODULE --agent AGENT`` for each agent, then ``mesh placements pin`` (retried
until the placement controller's monitors know the agent), so that the
controller never plans the module elsewhere while a test looks at it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from tests.support.multihost import Mesh, in_host, mesh_in

__all__ = ["deploy_on_agents", "edge_module", "pin"]

#: How long a pin may wait for a placement round to have seen the agent.
PIN_WAIT_S = 120.0


def edge_module(model: str, agent: str) -> str:
    """The module serving ``model`` on ``agent``: ``<model>-<agent>``."""
    return f"{model}-{agent}"


def deploy_on_agents(mesh: Mesh, model: str, agents: Sequence[str]) -> list[str]:
    """Deploy ``model``'s production version on each agent, pinned; the modules' names.

    The p95 target is 1 s: the cloud-edge round trip (80 ms) is over the default
    50 ms, and a pinned module is never planned elsewhere anyway.

    Raises:
        AssertionError: a deploy failed, or a pin was refused for another reason than
            an agent not known yet, or not within :data:`PIN_WAIT_S`.
    """
    bed, env = mesh.bed, mesh.cloud_env
    modules = []
    for agent in agents:
        module = edge_module(model, agent)
        mesh_in(bed, "cloud", env, "modules", "deploy", model, "--name", module,
                "--agent", agent, "--p95-ms", "1000")  # fmt: skip
        pin(mesh, module, agent)
        modules.append(module)
    return modules


def pin(mesh: Mesh, module: str, agent: str) -> None:
    """``mesh placements pin MODULE --node AGENT``, once the controller's monitors know it."""
    argv = [sys.executable, "-m", "mesh.cli", "placements", "pin", module, "--node", agent]
    tries: list[str] = []
    deadline = time.monotonic() + PIN_WAIT_S
    while time.monotonic() < deadline:  # bounded: until a round saw the agent
        done = in_host(mesh.bed, "cloud", mesh.cloud_env, argv)
        if done.returncode == 0:
            return
        tries.append(done.stdout + done.stderr)
        if "unknown node" not in tries[-1]:
            break
        time.sleep(2.0)
    raise AssertionError(f"cannot pin {module} to {agent}: {tries[-1:]}")
