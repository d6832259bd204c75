"""`nmea` driver: GNSS receiver on a serial port."""

from __future__ import annotations

from typing import ClassVar

from drivers.base import StreamProtocol
from drivers.nmea.protocol import NmeaProtocol
from drivers.stream import StreamDriver


class NmeaDriver(StreamDriver):
    name = "nmea"
    default_baud = 9600
    default_expected_interval = 10.0
    # Receivers send one burst per fix; emit the epoch once the burst is over.
    idle_flush: ClassVar[float | None] = 0.15

    def make_protocol(self) -> StreamProtocol:
        return NmeaProtocol()
