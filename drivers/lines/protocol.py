"""Generic line protocol for custom boards: JSON lines, CSV (header or configured columns), key=value.

Pure and incremental (no I/O), shared by the serial `lines` driver and the BLE `ble_nus` driver::

    from drivers.lines.protocol import LinesOptions, LinesProtocol
    proto = LinesProtocol(options)      # LinesOptions, a plain dict of the same keys, or any
                                        # object with those attributes (validated on the way in;
                                        # pydantic.ValidationError if invalid)
    for values in proto.feed(chunk):    # bytes in any chunking; one dict per complete line
        ...                             # values in canonical units; errors counted in proto.errors

Keys (all optional): ``format`` = "auto" | "json" | "csv" | "kv"; ``columns`` (CSV without a
header line); ``delimiter`` (CSV, default ","); ``fields`` = {field: {quantity, scale, offset,
unit}}; ``unknown_fields`` = "ignore" | "keep"; ``max_line`` (bytes).
value = raw * scale + offset, then converted from ``unit`` to the quantity's canonical unit
(e.g. "°F" -> °C, "kPa" -> hPa, "mV" -> V, "km/h" -> m/s). In "auto" a line starting with "{" is
JSON, a line with "=" is key=value, anything else CSV; a CSV line without any number is a header.
Error kinds: "malformed" (undecodable line), "overflow" (line longer than max_line),
"columns" (CSV cell count differs from the header), "value" (a mapped field is not a number).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.base import StreamProtocol

Values = dict[str, float | int | str | bool]
QUANTITY = r"^[a-z][a-z0-9_]{0,63}$"

# unit -> (factor, offset) into the canonical unit: canonical = raw * factor + offset.
UNIT_CONVERSIONS: dict[str, tuple[float, float]] = {
    "°c": (1.0, 0.0), "c": (1.0, 0.0), "°f": (5 / 9, -32 * 5 / 9), "f": (5 / 9, -32 * 5 / 9),
    "k": (1.0, -273.15),
    "%": (1.0, 0.0), "%rh": (1.0, 0.0),
    "hpa": (1.0, 0.0), "mbar": (1.0, 0.0), "pa": (0.01, 0.0), "kpa": (10.0, 0.0), "bar": (1000.0, 0.0),
    "ppm": (1.0, 0.0), "ppb": (0.001, 0.0),
    "µg/m³": (1.0, 0.0), "ug/m3": (1.0, 0.0),
    "v": (1.0, 0.0), "mv": (0.001, 0.0), "a": (1.0, 0.0), "ma": (0.001, 0.0),
    "w": (1.0, 0.0), "kw": (1000.0, 0.0), "m/s": (1.0, 0.0), "km/h": (1 / 3.6, 0.0),
    "kn": (1852 / 3600, 0.0), "mph": (0.44704, 0.0), "m": (1.0, 0.0), "km": (1000.0, 0.0),
    "deg": (1.0, 0.0), "°": (1.0, 0.0), "s": (1.0, 0.0), "ms": (0.001, 0.0),
}


class FieldMap(BaseModel):
    """How one incoming field becomes a quantity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: str | None = Field(default=None, pattern=QUANTITY)  # default: the field name
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    unit: str | None = None  # the unit the board sends in; converted to the canonical unit

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() not in UNIT_CONVERSIONS:
            raise ValueError(f"unknown unit {v!r} (known: {', '.join(sorted(UNIT_CONVERSIONS))})")
        return v


class LinesOptions(BaseModel):
    """Keys of a `lines` (or `ble_nus`) device that describe the line format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["auto", "json", "csv", "kv"] = "auto"
    columns: list[str] | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    fields: dict[str, FieldMap] = Field(default_factory=dict)
    unknown_fields: Literal["ignore", "keep"] = "ignore"
    max_line: int = Field(default=1024, ge=16, le=65536)

    @model_validator(mode="after")
    def _check(self) -> LinesOptions:
        if self.columns is not None and (not self.columns or len(set(self.columns)) != len(self.columns)):
            raise ValueError("columns must be a non-empty list of distinct names")
        if self.unknown_fields == "ignore" and not self.fields:
            raise ValueError("fields is empty and unknown_fields is 'ignore': nothing would be read")
        return self


_KV = re.compile(r'([A-Za-z_][A-Za-z0-9_.\-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,;]*)')
_KEEP_KEY = re.compile(r"[^a-z0-9_]+")


def _number(text: str) -> float | int | None:
    t = text.strip()
    if not t or len(t) > 40:
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _options(options: Any) -> LinesOptions:
    if isinstance(options, LinesOptions):
        return options
    if isinstance(options, Mapping):
        return LinesOptions.model_validate(dict(options))
    if isinstance(options, BaseModel):
        data = options.model_dump()
        return LinesOptions.model_validate({k: data[k] for k in LinesOptions.model_fields if k in data})
    return LinesOptions.model_validate(
        {k: getattr(options, k) for k in LinesOptions.model_fields if hasattr(options, k)})


class LinesProtocol(StreamProtocol):
    """Feed bytes; returns one values dict per complete line with at least one value."""

    def __init__(self, options: Any = None) -> None:
        super().__init__()
        self.options = _options(options if options is not None else {"unknown_fields": "keep"})
        self._buf = bytearray()
        self._discarding = False
        self._header: list[str] | None = list(self.options.columns) if self.options.columns else None
        self._conv = {
            name: (fm.quantity or name, fm.scale, fm.offset,
                   UNIT_CONVERSIONS[fm.unit.strip().lower()] if fm.unit else (1.0, 0.0))
            for name, fm in self.options.fields.items()
        }
        self.ignored = 0

    def feed(self, data: bytes) -> list[Values]:
        out: list[Values] = []
        buf = self._buf
        buf += data
        limit = self.options.max_line
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > limit:
                    if not self._discarding:
                        self.errors["overflow"] += 1
                    self._discarding = True
                    buf.clear()
                break
            line = bytes(buf[:end])
            del buf[: end + 1]
            if self._discarding:  # tail of an overlong line
                self._discarding = False
                continue
            if len(line) > limit:
                self.errors["overflow"] += 1
                continue
            values = self.decode_line(line)
            if values:
                self.frames += 1
                out.append(values)
        return out

    # -- one line ------------------------------------------------------------------------------
    def decode_line(self, raw: bytes) -> Values:
        """Values of one line (without its newline); {} for blank, comment or header lines."""
        try:
            text = raw.decode("utf-8").strip().strip("\x00")
        except UnicodeDecodeError:
            self.errors["malformed"] += 1
            return {}
        if not text or text.startswith("#"):
            return {}
        fmt = self.options.format
        if fmt == "auto":
            fmt = "json" if text.startswith("{") else "kv" if "=" in text else "csv"
        if fmt == "json":
            pairs = self._json(text)
        elif fmt == "kv":
            pairs = self._kv(text)
        else:
            pairs = self._csv(text)
        if pairs is None:
            return {}
        return self._map(pairs)

    def _json(self, text: str) -> list[tuple[str, object]] | None:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            self.errors["malformed"] += 1
            return None
        if not isinstance(obj, dict):
            self.errors["malformed"] += 1
            return None
        return list(obj.items())

    def _kv(self, text: str) -> list[tuple[str, object]] | None:
        pairs: list[tuple[str, object]] = []
        for m in _KV.finditer(text):
            v = m.group(2)
            if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                try:
                    v = json.loads(v)
                except ValueError:
                    v = v[1:-1]
            pairs.append((m.group(1), v))
        if not pairs:
            self.errors["malformed"] += 1
            return None
        return pairs

    def _csv(self, text: str) -> list[tuple[str, object]] | None:
        try:
            cells = [c.strip() for c in next(csv.reader([text], delimiter=self.options.delimiter))]
        except (csv.Error, StopIteration):
            self.errors["malformed"] += 1
            return None
        if self.options.columns is None and not any(_number(c) is not None for c in cells):
            if len(set(cells)) == len(cells) and all(cells):
                self._header = cells  # a (new) header line, e.g. after the board rebooted
            else:
                self.errors["malformed"] += 1
            return None
        if self._header is None:
            self.errors["columns"] += 1  # data before any header
            return None
        if len(cells) != len(self._header):
            self.errors["columns"] += 1
            return None
        return list(zip(self._header, cells, strict=True))

    def _map(self, pairs: list[tuple[str, object]]) -> Values:
        out: Values = {}
        keep = self.options.unknown_fields == "keep"
        for name, raw in pairs:
            conv = self._conv.get(name)
            if conv is None:
                if keep:
                    key = _KEEP_KEY.sub("_", name.lower()).strip("_")[:64]
                    v = self._plain(raw)
                    if key and key[0].isalpha() and v is not None:
                        out.setdefault(key, v)
                else:
                    self.ignored += 1
                continue
            quantity, scale, offset, (factor, off2) = conv
            num = raw if isinstance(raw, int | float) and not isinstance(raw, bool) else (
                _number(raw) if isinstance(raw, str) else None)
            if num is None or not math.isfinite(num):
                self.errors["value"] += 1
                continue
            if scale == 1.0 and offset == 0.0 and factor == 1.0 and off2 == 0.0:
                out[quantity] = num
                continue
            v = (num * scale + offset) * factor + off2
            if math.isfinite(v):
                out[quantity] = round(v, 9)
            else:
                self.errors["value"] += 1
        return out

    @staticmethod
    def _plain(raw: object) -> float | int | str | bool | None:
        """A kept unknown field: numbers and booleans as such, short strings as text, no nesting."""
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int | float):
            return raw if math.isfinite(raw) else None
        if isinstance(raw, str):
            n = _number(raw)
            return n if n is not None else raw[:256]
        return None
