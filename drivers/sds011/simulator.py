"""SDS011 simulator: byte-exact 10-byte measurement frames."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from drivers.family import SimParams, Simulation
from drivers.sds011.protocol import data_frame


@dataclass(frozen=True, slots=True)
class Sample:
    """One simulated measurement in tenths of µg/m³ (the wire resolution)."""

    pm2_5_tenths: int
    pm10_tenths: int

    def values(self) -> dict[str, float]:
        return {"pm2_5": self.pm2_5_tenths / 10, "pm10": self.pm10_tenths / 10}


def samples(seed: int = 0) -> Iterator[Sample]:
    """Endless plausible samples (pm2_5 <= pm10)."""
    n = seed
    while True:
        p25 = max(0, round(85 + 60 * math.sin(n / 12)) + n * 31 % 17)
        yield Sample(p25, p25 + 40 + n * 13 % 29)
        n += 1


def frame_bytes(s: Sample, device_id: int = 0xA160) -> bytes:
    return data_frame(s.pm2_5_tenths, s.pm10_tenths, device_id)


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: frames and the real decoder."""
    from drivers.sds011.protocol import Sds011Protocol

    return (frame_bytes(s) for s in samples()), Sds011Protocol()
