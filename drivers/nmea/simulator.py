"""NMEA simulator: a delivery vehicle driving a loop around central Helsingborg."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from drivers.family import SimParams, Simulation
from drivers.nmea.protocol import KNOT, sentence

# Waypoints (lat, lon): Knutpunkten -> Stortorget -> Kärnan -> Sofiero road -> back.
ROUTE = [
    (56.04307, 12.69451),
    (56.04639, 12.69453),
    (56.04918, 12.69444),
    (56.05480, 12.69120),
    (56.05720, 12.70200),
    (56.04990, 12.70850),
    (56.04307, 12.69451),
]


@dataclass(frozen=True, slots=True)
class Fix:
    """One simulated fix; the exact values a decoder must return."""

    t: float
    latitude: float
    longitude: float
    altitude: float
    speed: float  # m/s
    course: float
    satellites: int
    hdop: float


def _ddmm(value: float, deg_digits: int) -> tuple[str, float]:
    a = abs(value)
    deg = int(a)
    minutes = round((a - deg) * 60, 5)
    if minutes >= 60:
        deg, minutes = deg + 1, 0.0
    text = f"{deg:0{deg_digits}d}{minutes:08.5f}"
    # The value the text encodes (what a decoder will read back).
    back = deg + float(f"{minutes:.5f}") / 60.0
    return text, (-back if value < 0 else back)


def fixes(start: float | None = None, speed: float = 8.0, step: float = 1.0) -> Iterator[Fix]:
    """Endless fixes along ROUTE at `speed` m/s, one per `step` seconds."""
    t = start if start is not None else math.floor(time.time())
    seg, pos = 0, 0.0
    n = 0
    while True:
        (la1, lo1), (la2, lo2) = ROUTE[seg], ROUTE[(seg + 1) % len(ROUTE)]
        dy = (la2 - la1) * 111_320.0
        dx = (lo2 - lo1) * 111_320.0 * math.cos(math.radians(la1))
        length = math.hypot(dx, dy) or 1.0
        frac = pos / length
        lat = la1 + (la2 - la1) * frac
        lon = lo1 + (lo2 - lo1) * frac
        course = (math.degrees(math.atan2(dx, dy)) + 360) % 360
        _, lat_v = _ddmm(lat, 2)
        _, lon_v = _ddmm(lon, 3)
        yield Fix(t, round(lat_v, 9), round(lon_v, 9), round(12.0 + 3 * math.sin(n / 20), 1),
                  round(round(speed / KNOT, 3) * KNOT, 4), round(course, 1), 7 + n % 5, round(0.8 + (n % 4) / 10, 1))
        n += 1
        t += step
        pos += speed * step
        while pos >= length:
            pos -= length
            seg = (seg + 1) % (len(ROUTE) - 1)
            (la1, lo1), (la2, lo2) = ROUTE[seg], ROUTE[seg + 1]
            length = math.hypot((la2 - la1) * 111_320.0,
                                (lo2 - lo1) * 111_320.0 * math.cos(math.radians(la1))) or 1.0


def epoch_bytes(fix: Fix, talker: str = "GN") -> bytes:
    """The sentences a u-blox style receiver sends for one fix: RMC, VTG, GGA, GSA."""
    dt = datetime.fromtimestamp(fix.t, UTC)
    hms = dt.strftime("%H%M%S") + ".00"
    date = dt.strftime("%d%m%y")
    lat, _ = _ddmm(fix.latitude, 2)
    lon, _ = _ddmm(fix.longitude, 3)
    ns = "N" if fix.latitude >= 0 else "S"
    ew = "E" if fix.longitude >= 0 else "W"
    knots = fix.speed / KNOT
    out = [
        sentence(f"{talker}RMC,{hms},A,{lat},{ns},{lon},{ew},{knots:.3f},{fix.course:.1f},{date},,,A"),
        sentence(f"{talker}VTG,{fix.course:.1f},T,,M,{knots:.3f},N,{fix.speed * 3.6:.3f},K,A"),
        sentence(f"{talker}GGA,{hms},{lat},{ns},{lon},{ew},1,{fix.satellites:02d},{fix.hdop:.1f},{fix.altitude:.1f},M,36.0,M,,"),
        sentence(f"{talker}GSA,A,3,05,07,13,20,,,,,,,,,1.9,{fix.hdop:.1f},1.5"),
    ]
    return b"".join(out)


def expected_values(fix: Fix) -> dict[str, float | int | str]:
    """Exactly what NmeaProtocol must decode from epoch_bytes(fix)."""
    dt = datetime.fromtimestamp(fix.t, UTC)
    return {
        "latitude": fix.latitude,
        "longitude": fix.longitude,
        "altitude": fix.altitude,
        "speed": fix.speed,
        "course": fix.course,
        "satellites": fix.satellites,
        "hdop": fix.hdop,
        "fix": "gps",
        "gnss_time": dt.strftime("%Y-%m-%dT%H:%M:%S") + ".000Z",
    }


def simulation(p: SimParams) -> Simulation:
    """The `sim` driver's source: a receiver's epochs and the real decoder."""
    from drivers.nmea.protocol import NmeaProtocol

    return (epoch_bytes(f) for f in fixes(start=p.start)), NmeaProtocol()
