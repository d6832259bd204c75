"""Keys common to every device and the human size/duration field types of the config file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from edge_common.units import parse_duration, parse_size

# The JSON Schema (`config schema`) admits the human forms the file may use ("256MB", "14d").
_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {
    "type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([Bb]|[KkMmGg][Ii]?[Bb])?\s*$"}]}
_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, {
    "type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}]}
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0), WithJsonSchema(_SIZE_SCHEMA)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0), WithJsonSchema(_DURATION_SCHEMA)]

DEVICE_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class DeviceConfig(BaseModel):
    """Keys common to every device; driver-specific keys are checked by the driver's Options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    driver: str
    enabled: bool = True
    port: str | None = None
    baud: int | None = Field(default=None, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    address: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # Silent for longer than this -> offline (event, status). Default: per driver.
    expected_interval: Duration | None = None
    # A recorded capture played into the driver instead of opening `port` (serial stream drivers).
    replay: Path | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(DEVICE_ID, v):
            raise ValueError(f"{v!r} is not a device id: 1-64 of a-z 0-9 '_' '.' '-', starting with a letter or digit")
        return v

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", v):
            raise ValueError("must be a Bluetooth address like C7:F5:2A:A1:B2:C3")
        return v.upper() if v else v

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def error_key(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the config key it names, e.g. ``devices[0].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[")) or part in ("constrained-str", "lax-or-strict"):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"
