"""Human formatting for technician output: ages, sizes, colour (only on a TTY)."""

from __future__ import annotations

from typing import Any

from agent.cli.common import use_color

_STYLES = {"ok": "32", "warn": "33", "fail": "31;1", "dim": "2", "bold": "1"}


def paint(text: str, style: str) -> str:
    """ANSI colour when stdout is a terminal (and NO_COLOR is unset), plain text otherwise."""
    if not use_color() or style not in _STYLES:
        return text
    return f"\033[{_STYLES[style]}m{text}\033[0m"


def age(seconds: float | None) -> str:
    """3.2s, 5m 02s, 3h 12m, 4d 03h; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    n = int(s)
    if n < 3600:
        return f"{n // 60}m {n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h {n % 3600 // 60:02d}m"
    return f"{n // 86400}d {n % 86400 // 3600:02d}h"


def size(n: float | None) -> str:
    """Bytes in decimal units, like the config (256MB = 256,000,000 bytes)."""
    if n is None:
        return "-"
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1000 or unit == "GB":
            return f"{int(v)} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} GB"


def count(n: int) -> str:
    return f"{n:,}"


def values_text(values: dict[str, Any], limit: int = 60) -> str:
    """`co2=612 temperature=21.4` clipped to `limit` characters."""
    parts = []
    for k, v in values.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        parts.append(f"{k}={v}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"
