"""The control-plane process's settings: ``MESH_*`` variables on top of the edge side's.

:class:`ControlPlaneSettings` is what `mesh up` reads (gateway, embedded broker,
serving, placement); ``mesh/runtime/_control_plane.py`` re-exports it.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.edge._enrolment import EdgeSettings
from mesh.edge._flood import FloodLimits

__all__ = ["ControlPlaneSettings"]


class ControlPlaneSettings(EdgeSettings):
    """Settings of the control-plane process (``MESH_*`` variables)."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    gateway_host: str = Field("127.0.0.1", description="Bind address of the HTTP gateway.")
    gateway_port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP gateway.")
    gateway_max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Inference bodies past this get 413."
    )
    gateway_read_timeout_s: float = Field(
        30.0, gt=0, description="A request not sent within this is closed or gets 408."
    )
    gateway_max_connections: int = Field(
        1024, ge=1, description="Connections the gateway serves at once; more get 503."
    )
    gateway_keep_alive_s: float = Field(
        60.0, gt=0, description="An idle client connection to the gateway closes after this."
    )
    embedded_broker_port: int = Field(
        1883,
        ge=0,
        le=65535,
        description="Embedded MQTT broker port (if taken, a free one, kept on restarts; 0 = any).",
    )
    replica_start_timeout_s: float = Field(
        120.0, gt=0, description="How long new replicas may take to serve."
    )
    serving_standby: bool = Field(
        True,
        description="Keep a warm standby replica of every always-on module on another "
        "node: a lost node's requests fail over to it, with no cold start.",
    )
    placement_enabled: bool = Field(
        True, description="Run the placement controller's reconcile loop (pins work either way)."
    )
    placement_period_s: float = Field(
        30.0, gt=0, description="A placement round runs at least this often."
    )
    placement_window_s: float = Field(
        5.0, gt=0, description="How long an observed p95 must stay over the SLO to trigger a move."
    )
    placement_min_samples: int = Field(
        20, ge=1, description="Requests in the window before an observed p95 counts."
    )
    placement_dwell_s: float = Field(
        60.0, ge=0, description="A module that meets its SLO stays at least this long on a node."
    )
    placement_host_cpu: bool = Field(
        True, description="Read host CPU as node utilisation (off where nodes share one machine)."
    )
    placement_gateway_site: str = Field(
        "gateway", min_length=1, description="Site of the gateway's clients (modules' source)."
    )
    placement_restore: bool = Field(
        True, description="Re-deploy the modules recorded before a restart, where they were."
    )
    placement_restore_attempts: int = Field(
        5, ge=1, description="Tries per recorded module at a restart before it is failed."
    )
    placement_restore_max_delay_s: float = Field(
        20.0, gt=0, description="Longest wait between two tries (it doubles from 1 s)."
    )
    flood_heartbeat_per_s: float = Field(
        5.0, gt=0, description="Heartbeats taken per agent per second; more are dropped."
    )
    flood_heartbeat_burst: int = Field(
        20, ge=1, description="Heartbeats an agent may send at once before its rate applies."
    )
    flood_events_per_s: float = Field(
        200.0, gt=0, description="Events handled per agent per second; more wait until idle."
    )
    flood_events_burst: int = Field(
        1000, ge=1, description="Events an agent may send at once (an outbox replay's start)."
    )
    flood_events_deferred_max: int = Field(
        50_000, ge=1, description="Events over their rate waiting at most; more are dropped."
    )

    @property
    def flood_limits(self) -> FloodLimits:
        """The ``flood_*`` settings as the edge bus takes them."""
        return FloodLimits(
            heartbeat_per_s=self.flood_heartbeat_per_s,
            heartbeat_burst=self.flood_heartbeat_burst,
            events_per_s=self.flood_events_per_s,
            events_burst=self.flood_events_burst,
            deferred_max=self.flood_events_deferred_max,
        )

    @property
    def broker_explicit(self) -> bool:
        """Whether ``MESH_BROKER_URL`` (or the constructor) named the broker."""
        return "broker_url" in self.model_fields_set
