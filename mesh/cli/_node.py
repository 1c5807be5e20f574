"""`mesh node`: join this host to a Ray cluster as a cloud or fog node, and leave it.

Mounted by the main CLI as ``app.add_typer(node_app, name="node")``::

    mesh node join 10.0.0.1:6379 --tier fog --site plant-3 --cpus 4 --token-file ray-token
    mesh node leave

The head is started on the cloud host with Ray's own command, labelled as the
mesh selects on (README, "Across machines")::

    RAY_AUTH_MODE=token ray start --head --labels mesh.tier=cloud ...

What join checks before Ray runs, and what leave ends: :mod:`mesh.ray._join`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mesh.cli._output import console
from mesh.cli._output import errors as _errors
from mesh.core._settings import MeshSettings

__all__ = ["node_app"]

node_app = typer.Typer(
    help="This host as a Ray node of the mesh: join a cluster (tier, site, budget), leave it.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@node_app.command("join")
def node_join(
    head: Annotated[str, typer.Argument(help="The head's GCS address, HOST:PORT.")],
    tier: Annotated[str, typer.Option(help="cloud or fog.")] = "fog",
    site: Annotated[str | None, typer.Option(help="The node's site label (fog: where).")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs offered (default: all).")] = None,
    gpus: Annotated[float | None, typer.Option(help="GPUs offered (default: Ray counts).")] = None,
    node_ip: Annotated[
        str | None, typer.Option(help="The address this node advertises to the others.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="The cluster's Ray token (else RAY_AUTH_TOKEN_PATH, MESH_RAY_TOKEN_FILE)."
        ),
    ] = None,
) -> None:
    """Start a Ray node here, labelled with its tier and site, in the cluster at HEAD."""
    from mesh.ray._join import NodeJoin, join_node

    settings = MeshSettings()
    request = NodeJoin(head, tier, site=site, cpus=cpus, gpus=gpus, node_ip=node_ip,
                       token_file=token_file)  # fmt: skip
    with _errors():
        node = join_node(request, settings)
    labels = ", ".join(f"{k}={v}" for k, v in node.labels.items())
    console.print(
        f"joined {node.head} as {labels} ({len(node.pids)} Ray processes, recorded in "
        f"{settings.data_dir / 'node.json'}); `mesh node leave` ends them"
    )


@node_app.command("leave")
def node_leave(
    grace_s: Annotated[
        float, typer.Option(help="Seconds to leave gracefully before the processes are killed.")
    ] = 10.0,
) -> None:
    """End this host's Ray node (the processes `mesh node join` started), and its workers."""
    from mesh.ray._join import leave_node

    settings = MeshSettings()
    with _errors():
        count = leave_node(settings, grace_s=grace_s)
    console.print(f"left the cluster ({count} Ray processes ended)")
