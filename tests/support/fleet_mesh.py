"""A real control plane, a Mosquitto and a fleet of simulated agents, and what to measure of them.

:class:`FleetMesh` enrols N agents at once through enrolment's own
:func:`~mesh.edge._enrolment.enroll_many` (what ``mesh agents enroll-batch`` runs:
MQTT passwords, ACLs, the signing key; the broker files written once), starts
Mosquitto as ``deploy/mosquitto.conf`` sets it up
(:class:`~tests.support.chaos_mosquitto.ChaosMosquitto`: ``set_tcp_nodelay``, the
enrolment's password and ACL files, a devices' listener), ``mesh up`` with
``MESH_BROKER_URL`` on it (no fog nodes: the fleet is the load), and a
:class:`~tests.support.fleet.Fleet` of the enrolled agents.

Measured (used by ``tests/integration/test_fleet.py`` and ``bench/fleet.py``):

- :meth:`FleetMesh.rollout`: a new module version's desired state published to
  every agent by the control plane's own :class:`~mesh.edge._bus.EdgeBus`, each
  entry signed as the installer signs it (:func:`~mesh.edge._artifact_api.signed_module_spec`),
  until every agent's observed state names it (each agent downloaded the
  artifact from the control plane's artifact endpoint and verified it);
- :meth:`FleetMesh.kill_and_detect`: a share of agents go silent (no DISCONNECT),
  until the control plane's registry lists each offline (``/metrics``:
  ``mesh_edge_agent_offline``);
- :meth:`FleetMesh.restart_broker`: Mosquitto killed and started again; until
  every agent is connected and online at the control plane again, and whether
  every QoS 1 event sent around the restart reached the control plane;
- :meth:`FleetMesh.steady`: the control plane's and Mosquitto's CPU and RSS
  (psutil, ``mesh up``'s process tree), heartbeat lag at the registry and the
  reconcile loop's round times (``/metrics``), with churn under way.

Every process it starts is ended at :meth:`FleetMesh.close`, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from edge_agent.protocol import DesiredState, Route
from mesh.edge.broker._broker import free_port
from mesh.edge.broker._mosquitto import find_mosquitto
from tests.support.chaos_mosquitto import AUTOSAVE, ChaosMosquitto
from tests.support.cli import mesh_cli, stop_recorded_daemon
from tests.support.fleet import SITES, AgentCredentials, Fleet, SimAgent
from tests.support.fleet_metrics import MetricsReader
from tests.support.proc_usage import cpu_s, percentile, rss_mb, tree

__all__ = ["EACH_SECOND", "EVERY_CHANGE", "FleetMesh"]

MODULE = "fleet-model"
_BUS, _OFFLINE, _UP, _AGE, _LAG, _ROUNDS = (
    "mesh_edge_bus_messages",
    "mesh_edge_agent_offline",
    "mesh_edge_agent_up",
    "mesh_edge_agent_heartbeat_age_seconds",
    "mesh_edge_agent_heartbeat_lag_seconds",
    "mesh_placement_round_seconds",
)
#: Mosquitto saving its state once a second (deploy/mosquitto.conf's). A ``kill -9``
#: loses up to a second of what it acknowledged; the agents send their events again
#: until the control plane acknowledges them, and the control plane its desired states.
EACH_SECOND = AUTOSAVE
#: Mosquitto saving after every change (deploy's before end-to-end acknowledgements):
#: each retained publish rewrites the whole database (O(N) at N agents), and Mosquitto
#: reads one packet per connection per loop, so a rollout's N desired states from one
#: publisher cost N saves: O(N^2).
EVERY_CHANGE = ("autosave_on_changes true", "autosave_interval 1")


def _rollout_phases(live: list[SimAgent], began: float) -> dict[str, float]:
    """Where a rollout's seconds went, from each agent's own timestamps (since ``began``).

    ``rollout_delivered_s``: the last agent got its desired state (the broker's part);
    ``rollout_installed_s``: the last install ended (download, signature, sha256,
    fsync); ``rollout_install_p50_s``/``_p95_s``: one install; ``rollout_install_wait_p95_s``:
    from arrival to the install's start (the simulator's download threads).
    """
    spans = [
        (a.desired_at, a.apply_began, a.apply_ended)
        for a in live
        if a.desired_at is not None and a.apply_began is not None and a.apply_ended is not None
    ]
    if not spans:
        return {"rollout_delivered_s": float("nan"), "rollout_installed_s": float("nan")}
    installs = [ended - start for _, start, ended in spans]
    return {
        "rollout_delivered_s": max(at for at, _, _ in spans) - began,
        "rollout_installed_s": max(ended for _, _, ended in spans) - began,
        "rollout_install_p50_s": percentile(installs, 0.5) or 0.0,
        "rollout_install_p95_s": percentile(installs, 0.95) or 0.0,
        "rollout_install_wait_p95_s": percentile([s - at for at, s, _ in spans], 0.95) or 0.0,
    }


class FleetMesh:
    """``mesh up`` on Mosquitto with N enrolled, simulated agents.

    Args:
        workdir: data dir, Mosquitto's files and the agents' caches go here.
        agents: how many agents.
        keepalive_s: the agents' MQTT keepalive.
        period_s: the heartbeat period.
        log: progress lines.
        autosave: Mosquitto's saving lines (default deploy/mosquitto.conf's: once a
            second; see :data:`EVERY_CHANGE` for the other one measured).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        agents: int,
        keepalive_s: int = 10,
        period_s: float = 1.0,
        log: Callable[[str], None] = print,
        autosave: tuple[str, ...] = AUTOSAVE,
    ) -> None:
        """Nothing starts until :meth:`start`."""
        exe = find_mosquitto()
        if exe is None:
            raise ValueError("mosquitto is not installed")
        self.workdir = workdir
        self.data = workdir / "data"
        self.n = agents
        self.keepalive_s = keepalive_s
        self.period_s = period_s
        self.log = log
        self.mosquitto = ChaosMosquitto(
            workdir / "mosquitto",
            password_file=self.data / "mqtt" / "passwd",
            acl_file=self.data / "mqtt" / "acl",
            executable=exe,
            autosave=autosave,
        )
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_AUTH", "MESH_RAY_", "MESH_BROKER_URL"))
        }
        self.env.update(
            MESH_DATA_DIR=str(self.data),
            MESH_CLOUD_CPUS="1",
            MESH_FOG_NODES="0",
            MESH_OBJECT_STORE_MB="100",
            MESH_GATEWAY_PORT=str(free_port()),
            MESH_BROKER_URL=self.mosquitto.control_url,
            MESH_AGENT_BROKER_URL=self.mosquitto.device_url,
            RAY_USAGE_STATS_ENABLED="0",
            COLUMNS="200",
        )
        self.fleet: Fleet | None = None
        self.cluster: dict[str, Any] = {}
        self.gateway = ""
        self.token = ""
        self.metrics = MetricsReader("", "")  # :meth:`start` points it at the control plane
        self.timings: dict[str, float] = {}
        self._bus: Any = None
        self._desired_version = 0
        self._started: dict[int, float] = {}
        self.detections: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ set-up

    def _settings(self) -> Any:
        from mesh.edge._enrolment import EdgeSettings

        return EdgeSettings(
            data_dir=self.data,
            broker_url=self.mosquitto.control_url,
            agent_broker_url=self.mosquitto.device_url,
        )

    def enroll(self) -> list[AgentCredentials]:
        """Enrol the agents at once through enrolment's own batch (``mesh agents enroll-batch``)."""
        from mesh.edge._enrolment import enroll_many

        settings = self._settings()
        began = time.monotonic()
        agents = [(f"sim-{i:05d}", SITES[i % len(SITES)]) for i in range(self.n)]
        creds = [
            AgentCredentials(r.agent_id, r.site, r.password, r.public_key)
            for r in enroll_many(agents, settings=settings)
        ]
        self.timings["enroll_s"] = time.monotonic() - began
        return creds

    def start(self) -> None:
        """Enrol, Mosquitto, ``mesh up``, a read token, the fleet connected, the rollout bus."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        creds = self.enroll()
        self.log(f"enrolled {self.n} agents in {self.timings['enroll_s']:.1f} s")
        self.mosquitto.start()
        began = time.monotonic()
        self._cli("up", "--wait-s", "240")
        self.cluster = json.loads((self.data / "cluster.json").read_text())
        self._started.update({p.pid: p.create_time() for p in tree(int(self.cluster["pid"]))})
        self.gateway = f"http://127.0.0.1:{self.env['MESH_GATEWAY_PORT']}"
        self.timings["mesh_up_s"] = time.monotonic() - began
        self.token = self._cli("tokens", "create", "fleet", "--scope", "read").strip()
        self.metrics = MetricsReader(self.gateway, self.token)
        self.fleet = Fleet(
            creds,
            host="127.0.0.1",
            port=self.mosquitto.device_port,
            cache_root=self.workdir / "agents",
            period_s=self.period_s,
            keepalive_s=self.keepalive_s,
        )
        began = time.monotonic()
        self.fleet.start()
        if not self.fleet.wait_connected(120):
            down = [a.agent_id for a in self.fleet.agents if not a.connected.is_set()]
            raise AssertionError(f"{len(down)} agents did not connect: {down[:5]}")
        self.timings["connect_all_s"] = time.monotonic() - began
        self.log(f"{self.n} agents connected in {self.timings['connect_all_s']:.1f} s")
        self._bus = self._control_bus()

    def _cli(self, *args: str) -> str:
        done = mesh_cli(self.env, *args, timeout=300)
        if done.returncode != 0:
            raise AssertionError(f"mesh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def _control_bus(self) -> Any:
        from mesh.edge._bus import EdgeBus
        from mesh.edge._enrolment import control_plane_credentials

        creds = control_plane_credentials(self._settings())
        bus = EdgeBus(
            self.mosquitto.control_url,
            username=creds.username,
            password=creds.password,
            client_id="fleet-rollout",
            session_expiry_s=0,
        )
        bus.start(timeout_s=10)
        bus.barrier(10)  # the agents' retained states are in its registry
        return bus

    # ------------------------------------------------------------------ control plane's view

    def scrape(self, *names: str) -> dict[str, dict[str, float]]:
        """The control plane's ``/metrics`` (only ``names``, given some): name -> {label: value}."""
        return self.metrics.read(*names)

    def _wait_to_read(self, floor_s: float = 0.25) -> None:
        pause = self.metrics.pause(floor_s)  # reading /metrics costs the control plane
        self.timings["metrics_pause_max_s"] = max(pause, self.timings.get("metrics_pause_max_s", 0))
        time.sleep(pause)

    # ------------------------------------------------------------------ measurements

    def rollout(
        self,
        version: str,
        *,
        route: Route | None = None,
        size: int = 64 * 1024,
        timeout_s: float = 300.0,
    ) -> float:
        """Publish ``version`` of the module to every live agent; seconds until all observe it.

        With ``route``, the module's route too, and all must report its epoch: the same
        version again is a route switch of a module serving every site (no download:
        each agent holds the artifact; timings under ``route_switch_`` then).

        Raises:
            AssertionError: some agent did not report it within ``timeout_s``
                (naming them and their errors).
        """
        from mesh.edge._artifact_api import UrlSigner, signed_module_spec
        from mesh.models._artifacts import ArtifactSigner, ArtifactStore

        assert self.fleet is not None
        data = (version.encode() * (size // max(1, len(version)) + 1))[:size]
        info = ArtifactStore(self.data / "artifacts").put_bytes(data)
        signer = ArtifactSigner.load_or_create(self.data)
        url_signer = UrlSigner.load_or_create(self.data)
        live = [a for a in self.fleet.agents if not a.dead]
        self._desired_version += 1
        began = time.monotonic()
        for agent in live:
            spec = signed_module_spec(
                MODULE,
                version,
                info,
                agent_id=agent.agent_id,
                base_url=self.gateway,
                signer=signer,
                url_signer=url_signer,
                route=route,
            )
            desired = DesiredState(version=self._desired_version, modules=[spec])
            self._bus.publish_desired(agent.agent_id, desired, timeout_s=None)
        publish_s = time.monotonic() - began

        def missing() -> list[str]:
            views = {v.agent_id: v for v in self._bus.agents()}
            out = []
            for agent in live:
                view = views.get(agent.agent_id)
                observed = view.observed if view is not None else None
                if observed is None or not any(
                    m.name == MODULE
                    and m.version == version
                    and m.sha256 == info.sha256
                    and (route is None or m.route_epoch == route.epoch)
                    for m in observed.installed
                ):
                    out.append(agent.agent_id)
            return out

        deadline = began + timeout_s
        left = missing()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = missing()
        took = time.monotonic() - began
        if left:
            errors = {
                a.agent_id: (a.version, a.downloads, a.connects, a.connected.is_set(), a._errors)
                for a in live
                if a.agent_id in left[:3]
            }
            raise AssertionError(
                f"{len(left)} agents never observed {version}: {left[:5]} {errors}"
            )
        what = "rollout" if route is None else "route_switch"
        phases = {f"{what}_publish_s": publish_s}
        for key, value in _rollout_phases(live, began).items():
            phases[key.replace("rollout", what, 1)] = value
        self.timings.update(phases)
        self.log(
            f"{what} of {version} to {len(live)} agents: {took:.1f} s (published in "
            f"{publish_s:.1f} s, last delivered at {phases[f'{what}_delivered_s']:.1f} s, "
            f"last installed at {phases[f'{what}_installed_s']:.1f} s)"
        )
        return took

    def kill_and_detect(
        self, share: float, *, timeout_s: float | None = None
    ) -> tuple[float, list[SimAgent]]:
        """Silence ``share`` of the agents; seconds until the registry lists each offline.

        Returns the time and the killed agents; the caller checks the bound. Also
        records (:attr:`detections`) when each stopped counting as up for the control
        plane (``mesh_edge_agent_up`` 0: stale after three silent heartbeat periods,
        which placement and the gateway already treat as down), when a read last
        counted each one up (``still_up``) and when each one's last will reached this
        process's own bus. Times are when each read began. Waits
        at most ``timeout_s`` (default 4 x keepalive) and returns the time waited.
        """
        assert self.fleet is not None
        victims = self.fleet.pick(share)
        limit = timeout_s if timeout_s is not None else 4.0 * self.keepalive_s
        began = time.monotonic()
        for agent in victims:
            agent.kill()
        ids = {a.agent_id for a in victims}
        seen_cp: dict[str, float] = {}
        seen_down: dict[str, float] = {}  # no longer up: stale (silent) or offline
        # The last read that still counted each one up. A read's time is when it began:
        # what it shows was rendered then or later, so an agent it shows up was still
        # up after that time (a slow read cannot make a late detection look early).
        still_up: dict[str, float] = {}
        seen_broker: dict[str, float] = {}  # the will at this process's own bus
        while time.monotonic() - began < limit:
            now = time.monotonic() - began
            metrics = self.scrape(_OFFLINE, _UP)
            for agent_id in set(metrics.get(_OFFLINE, {})) & ids:
                seen_cp.setdefault(agent_id, now)
            up = metrics.get(_UP, {})
            for agent_id in ids:
                if up.get(agent_id) == 0.0:
                    seen_down.setdefault(agent_id, now)
                elif up.get(agent_id) == 1.0:
                    still_up[agent_id] = now
            for view in self._bus.agents():
                if view.agent_id in ids and view.state == "offline":
                    seen_broker.setdefault(view.agent_id, now)
            if len(seen_cp) == len(ids):
                break
            self._wait_to_read()
        took = time.monotonic() - began
        self.detections = {
            "control_plane": seen_cp,
            "down": seen_down,
            "still_up": still_up,
            "bus": seen_broker,
        }
        self.log(
            f"{len(victims)} killed agents listed offline after {took:.1f} s "
            f"(first {min(seen_cp.values(), default=float('nan')):.1f} s; wills at our own "
            f"bus: first {min(seen_broker.values(), default=float('nan')):.1f} s, "
            f"last {max(seen_broker.values(), default=float('nan')):.1f} s)"
        )
        return took, victims

    def restart_broker(self, *, kill: bool = True, timeout_s: float = 180.0) -> dict[str, Any]:
        """Stop Mosquitto (``kill -9``, else SIGTERM) and start it again (same config, persistence).

        Every live agent publishes a QoS 1 event just before the kill, one while the
        broker is down (paho holds it) and one once it is connected again. Measured
        from the moment the broker listens again: ``reconnect_agents_s``, until every
        agent is connected; ``reconnect_s``, until the control plane also took a
        heartbeat from each (its registry has it online, heard after the restart);
        ``reconnect_lost_events``, events sent that the control plane's bus never
        counted (``mesh_edge_bus_messages{kind="events"}``: distinct ids), after
        waiting up to ``timeout_s`` for them; ``reconnect_events_resent``, events
        the agents sent again for want of the control plane's acknowledgement (a
        ``kill -9`` loses what Mosquitto took and had not saved or delivered:
        these bring it back); ``reconnect_events_unacked``, those still
        unacknowledged at the end.

        Raises:
            AssertionError: some agent was not back within ``timeout_s`` (naming them).
        """
        assert self.fleet is not None
        live = [a for a in self.fleet.agents if not a.dead]
        bus_before = self.scrape(_BUS).get(_BUS, {})
        events_before = bus_before.get("events", 0.0)
        duplicates_before = bus_before.get("duplicate_events", 0.0)
        sent_before = sum(a.events_sent for a in live)
        connects = {a.agent_id: a.connects for a in live}
        resent_before = sum(a.resent for a in live)
        for agent in live:
            agent.publish_event()
        if kill:
            self.mosquitto.kill()
        else:
            self.mosquitto.stop()  # SIGTERM: Mosquitto saves its database on the way out
        for agent in live:
            agent.publish_event()  # the broker is down: paho holds it until it is back
        self.mosquitto.start()
        self.mosquitto.restarts += 1
        began, began_wall = time.monotonic(), time.time()
        deadline = began + timeout_s

        def back(agent: SimAgent) -> bool:
            return agent.connected.is_set() and agent.connects > connects[agent.agent_id]

        agents_s: float | None = None
        left = live
        while time.monotonic() < deadline:
            left = [a for a in live if not back(a)]
            if not left:
                agents_s = time.monotonic() - began
                break
            time.sleep(0.1)
        if left:
            raise AssertionError(f"{len(left)} agents not connected again: {left[:5]}")
        for agent in live:
            agent.publish_event()

        def not_heard() -> list[str]:
            now, metrics = time.time(), self.scrape(_UP, _AGE)
            ages, up = metrics.get(_AGE, {}), metrics.get(_UP, {})
            return [
                a.agent_id
                for a in live
                if up.get(a.agent_id) != 1.0 or now - ages.get(a.agent_id, 1e9) <= began_wall
            ]

        missing = not_heard()
        while missing and time.monotonic() < deadline:
            self._wait_to_read()
            missing = not_heard()
        if missing:
            raise AssertionError(f"{len(missing)} agents not online again: {missing[:5]}")
        reconnect_s = time.monotonic() - began
        sent = sum(a.events_sent for a in live) - sent_before
        received = duplicates = 0.0
        while time.monotonic() < deadline:
            bus = self.scrape(_BUS).get(_BUS, {})
            received = bus.get("events", 0.0) - events_before
            duplicates = bus.get("duplicate_events", 0.0) - duplicates_before
            if received >= sent:
                break
            self._wait_to_read()
        row = {
            "reconnect_broker_stop": "kill -9" if kill else "SIGTERM",
            "reconnect_agents": len(live),
            "reconnect_agents_s": agents_s,
            "reconnect_s": reconnect_s,
            "reconnect_events_sent": sent,
            "reconnect_events_received": int(received),
            "reconnect_lost_events": max(0, sent - int(received)),
            "reconnect_events_resent": sum(a.resent for a in live) - resent_before,
            "reconnect_events_unacked": sum(a.unacked for a in live),
            "reconnect_events_duplicates": int(duplicates),
        }
        self.log(
            f"broker restart: {len(live)} agents connected again after {agents_s:.1f} s, "
            f"online at the control plane after {reconnect_s:.1f} s; "
            f"{int(received)} of {sent} QoS 1 events received"
        )
        return row

    def offline_now(self) -> set[str]:
        """The agents the control plane's registry lists offline now."""
        return set(self.scrape(_OFFLINE).get(_OFFLINE, {}))

    def steady(self, seconds: float, *, churn_share: float = 0.02) -> dict[str, Any]:
        """Measure ``seconds`` of steady state with ``churn_share`` leaving and returning.

        Within the window only the lag and round gauges are read (a Prometheus would
        scrape everything every 15 s or so, not every second); whole scrapes are timed
        after it (``metrics_scrape_p95_s``), outside the CPU figures.
        """
        assert self.fleet is not None
        cp = tree(int(self.cluster["pid"]))
        cp_main = cp[:1]
        broker = tree(self.mosquitto.pid or 0)
        load_before = os.getloadavg()
        cpu0 = (cpu_s(cp), cpu_s(cp_main), cpu_s(broker))
        t0 = time.monotonic()
        lags: list[float] = []
        rounds50: list[float] = []
        rounds95: list[float] = []
        churned: list[SimAgent] = []
        next_churn = t0 + seconds / 4
        while time.monotonic() - t0 < seconds:
            metrics = self.scrape(_LAG, _ROUNDS)
            lags += list(metrics.get(_LAG, {}).values())
            rounds = metrics.get(_ROUNDS, {})
            if "0.5" in rounds:
                rounds50.append(rounds["0.5"])
                rounds95.append(rounds["0.95"])
            now = time.monotonic()
            if churn_share > 0 and now >= next_churn:
                for agent in churned:
                    agent.churn_return()
                churned = self.fleet.pick(churn_share)
                for agent in churned:
                    agent.churn_leave()
                next_churn = now + seconds / 4
            self._wait_to_read(1.0)
        for agent in churned:
            agent.churn_return()
        wall = time.monotonic() - t0
        cpu1 = (cpu_s(cp), cpu_s(cp_main), cpu_s(broker))
        scrapes = []
        for _ in range(3):  # whole scrapes, as a Prometheus reads them
            self.scrape()
            scrapes.append(self.metrics.last_s)
            self._wait_to_read()
        return {
            "cp_cpu_cores": (cpu1[0] - cpu0[0]) / wall,
            "cp_main_cpu_cores": (cpu1[1] - cpu0[1]) / wall,
            "cp_rss_mb": rss_mb(cp),
            "cp_main_rss_mb": rss_mb(cp_main),
            "mosquitto_cpu_cores": (cpu1[2] - cpu0[2]) / wall,
            "mosquitto_rss_mb": rss_mb(broker),
            "heartbeat_lag_p50_s": percentile(lags, 0.5),
            "heartbeat_lag_p95_s": percentile(lags, 0.95),
            "reconcile_p50_s": statistics.median(rounds50) if rounds50 else None,
            "reconcile_p95_s": max(rounds95) if rounds95 else None,
            "metrics_scrape_p95_s": percentile(scrapes, 0.95),
            "steady_s": wall,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        }

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop the fleet, the bus, ``mesh down``, Mosquitto; then any process left, by pid."""
        if self.fleet is not None:
            self.fleet.close()
        if self._bus is not None:
            with contextlib.suppress(Exception):
                self._bus.stop()
        if self.cluster:
            self._started.update({p.pid: p.create_time() for p in tree(int(self.cluster["pid"]))})
        with contextlib.suppress(Exception):
            mesh_cli(self.env, "down", timeout=120)
        stop_recorded_daemon(self.data)
        for pid, created in self._started.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    proc.kill()
        self.mosquitto.stop()
