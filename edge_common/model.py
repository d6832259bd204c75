"""Domain values: `Reading`, one decoded sample in canonical units (wire form: agent/model.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Value = float | int | str | bool
ClockState = Literal["synced", "unsynced"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded sample from one device, values in canonical units."""

    device: str
    driver: str
    values: Mapping[str, Value]
    ts: float = field(default_factory=time.time)
    clock: ClockState = "synced"
    tags: Mapping[str, str] = field(default_factory=dict)
    mono: float = field(default_factory=time.monotonic)
