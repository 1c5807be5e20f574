"""The edge agent: a small MQTT + ONNX Runtime daemon for devices. Never imports mesh.

It runs on paho-mqtt, onnxruntime, psutil, pydantic and the standard library
alone. The MQTT contract shared with the control plane is
:mod:`edge_agent.protocol` (pure pydantic); its names are re-exported here.
Importing ``edge_agent`` or ``edge_agent.protocol`` is light: the agent itself
(and with it paho and ONNX Runtime) loads on first use of :class:`Agent`,
:class:`MqttTransport` and the other runtime names.

Example::

    from edge_agent import Agent, load_settings

    agent = Agent(load_settings(["--id", "cam-07", "--broker", "mqtt://10.0.0.2"]))
    agent.start()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._settings import AgentSettings, SettingsError, load_settings
from .protocol import (
    DEFAULT_PREFIX,
    SCHEMA_VERSION,
    AgentStatus,
    DesiredState,
    ErrorCode,
    ErrorInfo,
    Event,
    Heartbeat,
    InferReply,
    InferRequest,
    InstalledModule,
    ModuleError,
    ModuleSpec,
    ObservedState,
    PipelineSpec,
    ProtocolError,
    Route,
    SourceSpec,
    Tensor,
    TensorSpec,
    Topics,
    artifact_signing_message,
    decode_frame,
    encode_frame,
    parse_header,
    parse_json,
)

if TYPE_CHECKING:
    from ._agent import Agent
    from ._ed25519 import verify as verify_ed25519
    from ._memory import MemoryBroker, MemoryTransport
    from ._sources import read_replay, register_source, write_replay
    from ._transport import MqttTransport, Transport

__all__ = [
    "DEFAULT_PREFIX",
    "SCHEMA_VERSION",
    "Agent",
    "AgentSettings",
    "AgentStatus",
    "DesiredState",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "Heartbeat",
    "InferReply",
    "InferRequest",
    "InstalledModule",
    "MemoryBroker",
    "MemoryTransport",
    "ModuleError",
    "ModuleSpec",
    "MqttTransport",
    "ObservedState",
    "PipelineSpec",
    "ProtocolError",
    "Route",
    "SettingsError",
    "SourceSpec",
    "Tensor",
    "TensorSpec",
    "Topics",
    "Transport",
    "artifact_signing_message",
    "decode_frame",
    "encode_frame",
    "load_settings",
    "parse_header",
    "parse_json",
    "read_replay",
    "register_source",
    "verify_ed25519",
    "write_replay",
]

_LAZY = {
    "Agent": ("._agent", "Agent"),
    "MemoryBroker": ("._memory", "MemoryBroker"),
    "MemoryTransport": ("._memory", "MemoryTransport"),
    "MqttTransport": ("._transport", "MqttTransport"),
    "Transport": ("._transport", "Transport"),
    "read_replay": ("._sources", "read_replay"),
    "register_source": ("._sources", "register_source"),
    "write_replay": ("._sources", "write_replay"),
    "verify_ed25519": ("._ed25519", "verify"),
}


def __getattr__(name: str) -> Any:
    """Load runtime names (and paho / ONNX Runtime with them) on first use."""
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(target[0], __name__), target[1])
    globals()[name] = value
    return value
