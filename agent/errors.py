"""Exception hierarchy (defined on the ground floor, `edge_common.errors`; re-exported here)."""

from __future__ import annotations

from edge_common.errors import (
    AgentNotReachable,
    AgentRefused,
    AgentWentAway,
    BufferCorrupt,
    BufferError_,
    BufferFull,
    ConfigError,
    ControlError,
    DriverError,
    EdgeAgentError,
    OutboxError,
    TransportClosed,
    UplinkError,
)

__all__ = [
    "AgentNotReachable",
    "AgentRefused",
    "AgentWentAway",
    "BufferCorrupt",
    "BufferError_",
    "BufferFull",
    "ConfigError",
    "ControlError",
    "DriverError",
    "EdgeAgentError",
    "OutboxError",
    "TransportClosed",
    "UplinkError",
]
