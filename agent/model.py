"""Wire form of readings (`Reading` itself lives on the ground floor, `edge_common.model`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

from orjson import dumps as _orjson_dumps

from edge_common.model import ClockState, Reading, Value

__all__ = [
    "ClockState",
    "Reading",
    "Value",
    "clean_values",
    "encode_reading",
    "encode_readings",
    "format_ts",
    "parse_ts",
]

_sec_cache: tuple[int, str] = (-1, "")
_MS = [f".{ms:03d}Z" for ms in range(1000)]


def format_ts(ts: float) -> str:
    """RFC 3339 UTC with millisecond precision, e.g. 2026-11-27T07:24:31.123Z."""
    global _sec_cache
    sec, ms = divmod(round(ts * 1000), 1000)
    cached = _sec_cache  # one read: another thread may replace it (a whole tuple) meanwhile
    if cached[0] != sec:  # readings come in bursts within one second: format it once
        cached = _sec_cache = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return cached[1] + _MS[ms]


def parse_ts(text: str) -> float:
    """Inverse of format_ts (accepts any RFC 3339 with Z or offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def clean_values(values: Mapping[str, Value]) -> dict[str, Value]:
    """Drop non-finite floats (JSON cannot carry them)."""
    return {
        k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))
    }


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# The C encoder behind `_dumps`, made once (JSONEncoder.encode builds a new one per call), with
# allow_nan=False so a non-finite float raises instead of needing a scan before every encode.
_c_values = (
    c_make_encoder(None, json.JSONEncoder().default, encode_basestring, None, ":", ",", False, False, False)
    if c_make_encoder is not None else None
)


def _values_json(values: Mapping[str, Value]) -> str:
    if _c_values is None:
        if any(isinstance(v, float) and not math.isfinite(v) for v in values.values()):
            raise ValueError("non-finite float")
        return _dumps(values)
    return "".join(_c_values(values, 0))


def encode_reading(seq: int, r: Reading) -> str:
    """The reading's wire form `R` (compact JSON); fixed once the seq is assigned."""
    try:
        out = _orjson_dumps({
            "seq": seq, "device": r.device, "driver": r.driver, "ts": format_ts(r.ts), "clock": r.clock,
            "values": r.values, "tags": r.tags,
        })
    except TypeError:  # a Mapping that is not a dict, an int beyond 64 bits, a lone surrogate
        return _encode_stdlib(seq, r)
    if b"null" in out:  # orjson writes NaN/inf as null (or a string merely contains "null")
        return _encode_stdlib(seq, r)
    return out.decode()


def encode_readings(first: int, readings: Sequence[Reading]) -> list[str]:
    """encode_reading of readings[i] with seq first + i, for a whole batch (the outbox's hot path:
    one comprehension, no call per reading but orjson's)."""
    fmt, dumps = format_ts, _orjson_dumps
    try:
        # Decoded at once: orjson's bytes keep their over-allocated buffer (~4 KB each) while alive.
        out = [dumps({"seq": s, "device": r.device, "driver": r.driver, "ts": fmt(r.ts), "clock": r.clock,
                      "values": r.values, "tags": r.tags}).decode()
               for s, r in zip(range(first, first + len(readings)), readings, strict=True)]
    except TypeError:
        return [encode_reading(first + i, r) for i, r in enumerate(readings)]
    return [_encode_stdlib(first + i, readings[i]) if "null" in o else o for i, o in enumerate(out)]


def _encode_stdlib(seq: int, r: Reading) -> str:
    """encode_reading with the standard library: every input orjson refuses or would change."""
    try:
        values = _values_json(r.values)
    except ValueError:  # a non-finite float: JSON cannot carry it, the key is dropped
        values = _values_json(clean_values(r.values))
    return (
        f'{{"seq":{seq},"device":{encode_basestring(r.device)},"driver":{encode_basestring(r.driver)},'
        f'"ts":"{format_ts(r.ts)}","clock":"{r.clock}","values":{values},'
        f'"tags":{_dumps(r.tags) if r.tags else "{}"}}}'
    )
