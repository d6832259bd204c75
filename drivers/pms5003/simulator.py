"""PMS5003 simulator: byte-exact 32-byte frames from a slowly drifting classroom aerosol."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from drivers.family import SimParams, Simulation
from drivers.pms5003.protocol import frame


@dataclass(frozen=True, slots=True)
class Sample:
    """One simulated measurement (atmospheric µg/m³) and its particle counts."""

    pm1_0: int
    pm2_5: int
    pm10: int

    def values(self) -> dict[str, int]:
        return {"pm1_0": self.pm1_0, "pm2_5": self.pm2_5, "pm10": self.pm10}


def samples(seed: int = 0) -> Iterator[Sample]:
    """Endless plausible samples (pm1_0 <= pm2_5 <= pm10)."""
    n = seed
    while True:
        base = 6 + 5 * math.sin(n / 15) + (n * 7919 % 5)
        p1 = max(0, round(base))
        p25 = p1 + 2 + n % 4
        p10 = p25 + 3 + n % 6
        yield Sample(p1, p25, p10)
        n += 1


def frame_bytes(s: Sample) -> bytes:
    """The PMS5003 frame for `s`: CF=1 words a little above atmospheric, counts, reserved word."""
    cf = [s.pm1_0 + s.pm1_0 // 10, s.pm2_5 + s.pm2_5 // 10, s.pm10 + s.pm10 // 10]
    counts = [s.pm1_0 * 120 + 300, s.pm1_0 * 36 + 90, s.pm2_5 * 6, s.pm2_5, s.pm10 // 4, s.pm10 // 9]
    return frame([*cf, s.pm1_0, s.pm2_5, s.pm10, *counts, 0x9700])


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: frames and the real decoder."""
    from drivers.pms5003.protocol import Pms5003Protocol

    return (frame_bytes(s) for s in samples()), Pms5003Protocol()
