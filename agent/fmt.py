"""Human formatting for technician output (CLI and demo): ages, sizes, values, colour (only on a TTY)."""

from __future__ import annotations

import os
import re
import sys
from typing import Any


def use_color() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


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


# Canonical units (DESIGN: drivers convert to these), for `name=value unit` on screen.
UNITS = {
    "temperature": "°C", "humidity": "%RH", "pressure": "hPa", "co2": "ppm",
    "pm1_0": "µg/m³", "pm2_5": "µg/m³", "pm4_0": "µg/m³", "pm10": "µg/m³",
    "voltage": "V", "battery_voltage": "V", "current": "A", "power": "W",
    "speed": "m/s", "latitude": "°", "longitude": "°", "course": "°", "altitude": "m",
    "state_of_charge": "%", "battery": "%",
}
_SUFFIX_UNITS = (("_temperature", "°C"), ("_voltage", "V"), ("_current", "A"), ("_power", "W"))


def unit(name: str) -> str:
    if name in UNITS:
        return UNITS[name]
    if name.startswith("temperature_"):  # temperature_motor, temperature_fet
        return "°C"
    return next((u for suffix, u in _SUFFIX_UNITS if name.endswith(suffix)), "")


def value_text(name: str, v: Any) -> str:
    """`co2=612 ppm`, `latitude=56.0434°`, `fix=gps`, `moving=true`."""
    if isinstance(v, bool):
        return f"{name}={'true' if v else 'false'}"
    u = unit(name) if isinstance(v, int | float) else ""
    text = f"{v:.6g}" if isinstance(v, float) else str(v)
    return f"{name}={text}" + ("" if not u else u if u == "°" else f" {u}")


def values_text(values: dict[str, Any], limit: int = 60, *, nbsp: bool = False) -> str:
    """`co2=612 ppm, temperature=21.4 °C` clipped to `limit` characters.

    nbsp: value and unit joined by a no-break space, so `wrap` never parts them.
    """
    text = ", ".join(value_text(k, v) for k, v in values.items())
    text = text if len(text) <= limit else text[: max(1, limit - 1)] + "…"
    return text.replace(" ", NBSP).replace(","+NBSP, ", ") if nbsp else text


NBSP = "\u00a0"

def width() -> int:
    """Columns of the terminal (or $COLUMNS); 80 when unknown, never below 40."""
    import shutil

    return max(40, shutil.get_terminal_size((80, 24)).columns)


def wrap(text: str, cols: int, indent: int = 0, first: str = "") -> list[str]:
    """`first + text` folded to `cols`, continuation lines indented by `indent` spaces.

    Words are never broken: a path longer than a line is left whole (the terminal folds it, and
    a copy-paste still gets it in one piece).
    """
    import textwrap

    text = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", NBSP), text)  # a command stays whole
    lines = textwrap.wrap(text, cols, initial_indent=first, subsequent_indent=" " * indent,
                          break_on_hyphens=False, break_long_words=False) or [first.rstrip()]
    return [line.replace(NBSP, " ") for line in lines]


_ERRNO = re.compile(r"\[Errno -?\d+\] ")


def words(err: str) -> str:
    """An OS error said once, in words: `cannot open X: [Errno 2] could not open port X: [Errno 2]
    No such file or directory: 'X'` -> `cannot open X: no such file or directory`."""
    if not _ERRNO.search(err):
        return err
    head = err[: _ERRNO.search(err).start()]  # type: ignore[union-attr]
    last = _ERRNO.split(err)[-1]
    last = re.sub(r": '[^']*'?$", "", last).strip()  # the path again (maybe cut short)
    last = last[:1].lower() + last[1:]
    return f"{head}{last}" if head else last
