r"""``mesh-edge-agent`` / ``python -m edge_agent``: run the agent until SIGTERM or SIGINT.

Example::

    mesh-edge-agent --broker mqtt://10.0.0.2:1883 --id cam-07 --site int-2-1 \
        --cache-dir /var/lib/fogmesh-edge --public-key-file /etc/fogmesh/cp.pub
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]

logger = logging.getLogger("edge_agent")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, start the agent, wait for a signal, stop cleanly.

    Returns:
        The process exit code: 0 after a clean stop, 2 on bad settings.
    """
    from ._agent import Agent
    from ._budget import tune_malloc
    from ._settings import SettingsError, load_settings
    from ._sqlite import SchemaVersionError

    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"mesh-edge-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Before the threads start: large payloads are unmapped when freed, and a
    # burst leaves free pages in 2 arenas, not one per thread (edge_agent._budget).
    tune_malloc()
    done = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(settings)
    except (SettingsError, SchemaVersionError, OSError) as exc:
        logger.error("agent %s cannot start: %s", settings.id, exc)
        return 2
    agent.start()
    # What exists now (imports, the loaded modules) lives as long as the process:
    # out of the collector's sight, collections on the request path stay cheap.
    gc.freeze()
    while not done.wait(1.0):
        pass
    agent.stop(reason=f"signal {received[0] if received else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
