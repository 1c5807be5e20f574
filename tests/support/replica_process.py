"""A replica in its own process (``python -m mesh.serving.replica._server``), for tests.

Its memory is its own (a test reads its RSS apart from the client's), and its
key reaches it the way an operator would hand it over: the environment or stdin,
never argv. Import explicitly::

    from tests.support.replica_process import ReplicaProcess
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["ReplicaProcess"]

_ROOT = Path(__file__).resolve().parents[2]


class ReplicaProcess:
    """``python -m mesh.serving.replica._server`` on a free loopback port.

    Args:
        model: the ONNX file.
        key: the replica key, given in ``MESH_REPLICA_KEY`` (or on stdin with
            ``stdin_key=True``); None: none.
        extra: more command-line arguments.
        env: more environment variables (e.g. libfaketime's, for a skewed clock).
        start_timeout_s: how long it may take to print its ``ready`` line.
    """

    def __init__(
        self,
        model: Path,
        *,
        key: str | None = None,
        stdin_key: bool = False,
        extra: Sequence[str] = (),
        host: str = "127.0.0.1",
        start_timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start it and wait for its ``ready`` line."""
        environ = {**os.environ, "PYTHONPATH": str(_ROOT), **(env or {})}
        environ.pop("MESH_REPLICA_KEY", None)
        if key is not None and not stdin_key:
            environ["MESH_REPLICA_KEY"] = key
        argv = [sys.executable, "-m", "mesh.serving.replica._server", "--model", str(model)]
        argv += ["--name", "m", "--host", host, "--port", "0", "--cpus", "1", *extra]
        if stdin_key:
            argv.append("--key-stdin")
        self.argv = argv
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            argv,
            env=environ,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.proc.stdin is not None
        if stdin_key and key is not None:
            self.proc.stdin.write(key + "\n")
            self.proc.stdin.flush()
        self.proc.stdin.close()
        self.url = self._ready(start_timeout_s)
        parts = urlsplit(self.url)
        self.host, self.port = str(parts.hostname), int(parts.port or 0)

    def _ready(self, timeout_s: float) -> str:
        line: list[str] = []
        assert self.proc.stdout is not None
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith("ready "):
            log = self.stop()
            raise RuntimeError(f"the replica did not start: {line} {log[-2000:]}")
        return line[0].split()[1]

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.proc.pid

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL) and wait; returns what it logged."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log.closed:
            return ""
        self._log.seek(0)
        log = self._log.read()
        self._log.close()
        return log

    def __enter__(self) -> ReplicaProcess:
        """Itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop it."""
        self.stop()
