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


_sec_cache: tuple[int, str] = (-1, "")


def format_ts(ts: float) -> str:
    """RFC 3339 UTC with millisecond precision, e.g. 2026-11-27T07:24:31.123Z."""
    global _sec_cache
    ms = round(ts * 1000)
    sec = ms // 1000
    if _sec_cache[0] != sec:  # readings come in bursts within one second: format it once
        _sec_cache = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_sec_cache[1]}.{ms % 1000:03d}Z"


def parse_ts(text: str) -> float:
    """Inverse of format_ts (accepts any RFC 3339 with Z or offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def clean_values(values: Mapping[str, Value]) -> dict[str, Value]:
    """Drop non-finite floats (JSON cannot carry them)."""
    return {
        k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))
    }


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_reading(seq: int, r: Reading) -> str:
    """The reading's wire form `R` (compact JSON); fixed once the seq is assigned."""
    values = r.values
    for v in values.values():
        if isinstance(v, float) and not math.isfinite(v):
            values = clean_values(values)
            break
    return (
        f'{{"seq":{seq},"device":{_dumps(r.device)},"driver":{_dumps(r.driver)},'
        f'"ts":"{format_ts(r.ts)}","clock":"{r.clock}","values":{_dumps(values)},'
        f'"tags":{_dumps(r.tags) if r.tags else "{}"}}}'
    )
