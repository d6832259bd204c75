"""The states the agent reports, as `StrEnum`s: health, `status --json`, the control socket and log lines
carry their strings (tests/test_states.py holds them to the contract); code decides on the member."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class UplinkState(StrEnum):
    """The uplink's state as health, status and the control socket show it (docs/PROTOCOL.md)."""

    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"


class DeviceState(StrEnum):
    """A configured device's state as `status`, `devices` and `tail` show it."""

    STARTING = "starting"  # running, no liveness verdict yet
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"  # `enabled = false`: configured, not running


# The link a disabled device shows, beside the running ones' `drivers.base.LinkState`.
LINK_DISABLED: Literal["disabled"] = "disabled"
