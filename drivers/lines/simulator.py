"""Line-protocol simulator: a classroom board printing JSON lines, CSV or key=value, byte-exact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from drivers.family import SimParams, Simulation

Format = Literal["json", "csv", "kv"]
CSV_HEADER = b"temp_c,rh,co2_ppm,light\r\n"

# The field map that turns this board's lines into canonical readings (used by tests and `sim`).
FIELDS = {
    "temp_c": {"quantity": "temperature"},
    "rh": {"quantity": "humidity"},
    "co2_ppm": {"quantity": "co2"},
    "light": {"quantity": "illuminance"},
}


@dataclass(frozen=True, slots=True)
class Sample:
    temperature: float
    humidity: float
    co2: int
    light: int

    def values(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "humidity": self.humidity, "co2": self.co2,
                "illuminance": self.light}


def samples(seed: int = 0) -> Iterator[Sample]:
    n = seed
    while True:
        yield Sample(round(20.0 + (n % 30) / 10, 1), round(35.0 + (n % 17) / 2, 1), 450 + (n * 23) % 700,
                     300 + (n * 11) % 200)
        n += 1


def line_bytes(s: Sample, fmt: Format = "json") -> bytes:
    """One line as the board prints it (CRLF, like Arduino's println)."""
    if fmt == "json":
        text = json.dumps({"temp_c": s.temperature, "rh": s.humidity, "co2_ppm": s.co2, "light": s.light},
                          separators=(",", ":"))
    elif fmt == "csv":
        text = f"{s.temperature},{s.humidity},{s.co2},{s.light}"
    else:
        text = f"temp_c={s.temperature} rh={s.humidity} co2_ppm={s.co2} light={s.light}"
    return text.encode() + b"\r\n"


def chunks(fmt: str = "json") -> Iterator[bytes]:
    """The board's output in `fmt` (CSV starts with its header)."""
    if fmt == "csv":
        yield CSV_HEADER
    for s in samples():
        yield line_bytes(s, fmt)  # type: ignore[arg-type]


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: the board's lines and the real decoder with the board's field map."""
    from drivers.lines.protocol import LinesOptions, LinesProtocol

    return chunks(p.format), LinesProtocol(LinesOptions.model_validate({"fields": FIELDS}))

# The device keys under which the `lines` driver decodes this board (conformance tests, demo).
DEVICE_OPTIONS = {"fields": FIELDS}
