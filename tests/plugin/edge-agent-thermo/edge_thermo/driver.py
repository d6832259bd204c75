"""`acme_th1` driver: the TH-1 prints one sentence every 2 s at 9600 baud."""

from __future__ import annotations

from drivers.base import StreamProtocol
from drivers.stream import StreamDriver
from edge_thermo.protocol import Th1Protocol


class Th1Driver(StreamDriver):
    name = "acme_th1"
    default_baud = 9600
    default_expected_interval = 10.0

    def make_protocol(self) -> StreamProtocol:
        return Th1Protocol()
