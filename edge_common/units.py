"""Parsing of human sizes ("256MB") and durations ("14d", "500ms")."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or "NNN[KB|MB|GB]" (decimal; KiB/MiB/GiB binary)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256MB, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("size must not be negative")
        return int(value)
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"invalid size {value!r} (expected e.g. 4096, \"512KB\", \"256MB\", \"1GB\")")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number or "NN[ms|s|m|h|d]"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    m = _DUR.match(value)
    if not m:
        raise ValueError(f"invalid duration {value!r} (expected e.g. 30, \"500ms\", \"30s\", \"5m\", \"2h\", \"14d\")")
    return float(m.group(1)) * _DUR_UNITS[m.group(2) or "s"]


def format_size(n: float) -> str:
    """Short human size, e.g. 12.3 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def format_duration(s: float) -> str:
    """Short human duration, e.g. 3h12m."""
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
