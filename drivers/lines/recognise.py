"""`probe serial`'s recognisers of the line formats (declared in drivers/lines/__init__.py)."""

from __future__ import annotations

from collections import Counter

from drivers.lines.protocol import LinesOptions, LinesProtocol


def _lines(fmt: str, columns: list[str] | None = None) -> LinesProtocol:
    return LinesProtocol(LinesOptions(format=fmt, unknown_fields="keep", columns=columns))  # type: ignore[arg-type]


def json_lines() -> LinesProtocol:
    return _lines("json")


def kv_lines() -> LinesProtocol:
    return _lines("kv")


def csv_lines() -> LinesProtocol:
    return _lines("csv")


def csv_without_header(data: bytes) -> tuple[str, LinesProtocol] | None:
    """CSV rows that arrive without their header (it was sent at boot): generic column names."""
    widths = Counter(len(line.split(b",")) for line in data.splitlines() if line.count(b",") >= 1)
    if not widths:
        return None
    n = widths.most_common(1)[0][0]
    return "CSV lines (no header seen; set `columns`)", _lines("csv", [f"col{i + 1}" for i in range(n)])
