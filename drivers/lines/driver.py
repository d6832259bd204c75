"""`lines` driver: a custom board printing one reading per line on a serial port."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from drivers.base import StreamProtocol
from drivers.lines.protocol import LinesOptions, LinesProtocol
from drivers.stream import StreamDriver


class LinesDriver(StreamDriver):
    name = "lines"
    default_baud = 115200
    default_expected_interval = 60.0
    Options: ClassVar[type[BaseModel]] = LinesOptions

    def make_protocol(self) -> StreamProtocol:
        return LinesProtocol(self.options)
