"""Mosquitto in a test-bed host, set up as ``deploy/mosquitto.conf``, TLS on that host's address.

:class:`HostMosquitto` writes its config from the production file itself
(:func:`production_config`): every setting of ``deploy/mosquitto.conf`` as it
is, except what names this machine's places (persistence directory, password
and ACL files, pid file) and the listeners, which become two TLS listeners on
the host's address, with a certificate from the test CA made at test time
(:mod:`tests.support.tls`):

* the devices' (``use_username_as_clientid true``, as the production file's
  1883): ``MESH_AGENT_BROKER_URL``, what ``mesh agents enroll`` prints;
* the control plane's and replicas' (each keeps its client id, as the
  production file's loopback 1884), on the host's address over TLS, so
  replicas on other hosts reach it: the listener the production file says to
  add for them (``MESH_BROKER_URL``).

A root-started Mosquitto keeps root (``user root`` instead of ``user
mosquitto``): enrolment writes its files 0600 root's. :meth:`HostMosquitto.kill`
is a ``kill -9``, and :meth:`HostMosquitto.start` again is what ``systemd
Restart=always`` does (same config, same persistence file), as
:class:`tests.support.chaos_mosquitto.ChaosMosquitto` does on one host. Its
log (``log_dest stdout``, line-buffered) goes to ``mosquitto.log``, where the
tests read who connected from which host. Every process is ended by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from mesh.edge.broker._broker import free_port
from tests.support.processes import end_process
from tests.support.testbed import TestBed
from tests.support.testbed._bed import ROOT
from tests.support.tls import TestPki

__all__ = ["HostMosquitto", "production_config"]

PRODUCTION = ROOT / "deploy" / "mosquitto.conf"
#: How long a (re)started Mosquitto may take to open both listeners.
START_LIMIT_S = 30.0
_STOP_S = 10.0
#: Settings whose value is a place on the production machine: given per test instead.
_PLACES = ("user", "pid_file", "persistence_location", "password_file", "acl_file")


def production_config(
    *,
    user: str,
    persistence_dir: Path,
    password_file: Path,
    acl_file: Path,
    listeners: list[str],
    source: Path = PRODUCTION,
) -> str:
    """``source``'s settings with this test's places and ``listeners`` in place of its own.

    Raises:
        ValueError: ``source`` lacks one of the places it replaces (the production
            file changed: this helper must follow it).
    """
    lines: list[str] = [f"# Generated from {source} by tests/support/multihost_broker.py."]
    seen: set[str] = set()
    values = {
        "user": user,
        "persistence_location": f"{persistence_dir}/",
        "password_file": str(password_file),
        "acl_file": str(acl_file),
    }
    for raw in source.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = line.split()[0]
        if key == "listener":
            break  # the listeners and their settings: replaced by ``listeners``
        if key in _PLACES:
            seen.add(key)
            if key in values:
                lines.append(f"{key} {values[key]}")
            continue
        lines.append(line)
    missing = set(_PLACES) - seen
    if missing:
        raise ValueError(f"{source} no longer sets {sorted(missing)}: update {__name__}")
    return "\n".join([*lines, *listeners]) + "\n"


class HostMosquitto:
    """A Mosquitto in test-bed host ``host``, TLS on its address; restartable after ``kill -9``.

    Args:
        bed: the test bed.
        host: the host it runs in (``cloud``).
        workdir: its config, log and persistence directory.
        pki: the test CA and a server certificate naming the host's address.
        password_file: ``<data>/mqtt/passwd`` (``mesh agents enroll``); must exist at start.
        acl_file: ``<data>/mqtt/acl``.
        executable: the ``mosquitto`` binary.
    """

    def __init__(
        self,
        bed: TestBed,
        host: str,
        workdir: Path,
        *,
        pki: TestPki,
        password_file: Path,
        acl_file: Path,
        executable: str,
    ) -> None:
        self.bed = bed
        self.host = host
        self.address = bed.address(host)
        self.workdir = workdir
        self.pki = pki
        self.executable = executable
        self.device_port = free_port()
        self.control_port = free_port()
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._password_file = password_file
        self._acl_file = acl_file
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def device_url(self) -> str:
        """The devices' listener (``MESH_AGENT_BROKER_URL``)."""
        return f"mqtts://{self.address}:{self.device_port}"

    @property
    def control_url(self) -> str:
        """The control plane's and replicas' listener (``MESH_BROKER_URL``)."""
        return f"mqtts://{self.address}:{self.control_port}"

    @property
    def pid(self) -> int | None:
        """The running process's id, or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _tls(self) -> list[str]:
        return [
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate false",
            "tls_version tlsv1.2",
        ]

    def config(self) -> str:
        """The mosquitto.conf it runs (see the module doc)."""
        return production_config(
            user="root" if os.geteuid() == 0 else "mosquitto",
            persistence_dir=self.workdir / "persist",
            password_file=self._password_file,
            acl_file=self._acl_file,
            listeners=[
                f"listener {self.device_port} {self.address}",
                "use_username_as_clientid true",
                *self._tls(),
                f"listener {self.control_port} {self.address}",
                *self._tls(),
            ],
        )

    def log_text(self) -> str:
        """Everything it logged, over every start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        """Start Mosquitto (again); returns once it says it runs (both listeners open).

        Raises:
            AssertionError: it exited, or did not say so within START_LIMIT_S.
        """
        if self.pid is not None:
            return
        (self.workdir / "persist").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        before = len(self.log_text())
        with self.log_path.open("ab") as log:
            # ``log_dest stdout`` into a file is block-buffered: line-buffered, its log
            # shows each connection as it happens (stdbuf execs Mosquitto: same pid).
            self._proc = self.bed.spawn(
                self.host,
                ["stdbuf", "-oL", self.executable, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and self.pid is not None:  # bounded by the deadline
            if " running" in self.log_text()[before:]:
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"mosquitto did not start in {self.host}:\n{self.log_text()[-3000:]}")

    def reload(self) -> None:
        """SIGHUP: re-read the password and ACL files (after ``mesh agents enroll``)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGHUP)

    def kill(self) -> int:
        """``kill -9`` the running Mosquitto and reap it; its pid."""
        proc = self._proc
        assert proc is not None and proc.poll() is None, "mosquitto is not running"
        proc.kill()
        proc.wait(_STOP_S)
        self._proc = None
        return proc.pid

    def restart_after_kill(self, *, down_s: float = 0.0) -> int:
        """``kill -9``, ``down_s`` with none, then start again (same config and persistence).

        Returns:
            The killed pid.
        """
        pid = self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1
        return pid

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL) the running one, by its pid; its exit status, None if none ran."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return end_process(proc, _STOP_S)
