"""Exception hierarchy (defined on the ground floor, `edge_common.errors`; re-exported here)."""

from __future__ import annotations

from edge_common.errors import (
    AgentNotReachable,
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
