"""`jbd_bms` driver: polls basic info (0x03) and cell voltages (0x04) from a JBD / Xiaoxiang BMS.

Serial: the BMS's UART port (9600 8N1, TTL levels; not isolated on most boards). BLE:
``transport = "ble"`` and ``address``: the BMS's Bluetooth module (service FF00, notify FF01,
write FF02); replies are split over notifications and reassembled. One reading per poll carries
both replies' values.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from drivers.base import StreamProtocol
from drivers.jbd_bms.protocol import BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST, JbdProtocol
from drivers.polled import PolledDriver, PollOptions

JBD_NOTIFY = "0000ff01-0000-1000-8000-00805f9b34fb"
JBD_WRITE = "0000ff02-0000-1000-8000-00805f9b34fb"


class JbdBmsOptions(PollOptions):
    """Keys of a `jbd_bms` device (those of every polled device)."""


class JbdBmsDriver(PolledDriver):
    name = "jbd_bms"
    default_baud = 9600
    default_expected_interval = 30.0
    Options: ClassVar[type[BaseModel]] = JbdBmsOptions
    requests = (BASIC_INFO_REQUEST, CELL_VOLTAGES_REQUEST)
    ble_family = "jbd_bms"
    ble_notify = JBD_NOTIFY
    ble_write = JBD_WRITE

    def make_protocol(self) -> StreamProtocol:
        return JbdProtocol()
