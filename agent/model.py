"""Domain model: immutable readings and their wire form."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def format_ts(ts: float) -> str:
    """RFC 3339 UTC with millisecond precision, e.g. 2026-11-27T07:24:31.123Z."""
    ms = int(round(ts * 1000))
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_ts(text: str) -> float:
    """Inverse of format_ts (accepts any RFC 3339 with Z or offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def clean_values(values: Mapping[str, Value]) -> dict[str, Value]:
    """Drop non-finite floats (JSON cannot carry them)."""
    return {
        k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))
    }


def encode_reading(seq: int, r: Reading) -> str:
    """The reading's wire form `R` (compact JSON); fixed once the seq is assigned."""
    return json.dumps(
        {
            "seq": seq,
            "device": r.device,
            "driver": r.driver,
            "ts": format_ts(r.ts),
            "clock": r.clock,
            "values": clean_values(r.values),
            "tags": dict(r.tags),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
