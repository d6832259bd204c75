"""`pms5003` driver: Plantower PMS5003/7003 in its default active mode (one frame per second or so)."""

from __future__ import annotations

from drivers.base import StreamProtocol
from drivers.pms5003.protocol import Pms5003Protocol
from drivers.stream import StreamDriver


class Pms5003Driver(StreamDriver):
    name = "pms5003"
    default_baud = 9600
    default_expected_interval = 30.0

    def make_protocol(self) -> StreamProtocol:
        return Pms5003Protocol()
