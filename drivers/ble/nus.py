"""`ble_nus` driver: a Nordic UART Service notify stream fed to the `lines` protocol.

Connects through drivers/transport/gatt.py (found by the shared scanner, reconnected with
backoff), subscribes to the NUS TX characteristic and feeds every notification to a `lines`
protocol. Notifications are MTU-sized chunks; the protocol's line buffer reassembles lines split
across them. A partial line from a dropped link is discarded with the protocol.

Options are those of the `lines` driver (format, field map, unknown_fields...).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel

from drivers.base import Driver, StreamProtocol
from drivers.lines.protocol import LinesOptions, LinesProtocol
from drivers.transport.gatt import NUS_TX, GattLink, run_sessions
from edge_common.errors import TransportClosed

if TYPE_CHECKING:
    from bleak import BleakClient

log = logging.getLogger(__name__)


class BleNusDriver(Driver):
    name = "ble_nus"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "ble"
    Options: ClassVar[type[BaseModel]] = LinesOptions
    default_expected_interval = 60.0

    def make_protocol(self) -> StreamProtocol:
        """A fresh `lines` protocol configured from this device's options."""
        return LinesProtocol(self.options)

    async def run(self) -> None:
        # The subscription keeps the NUS or-pattern in the passive monitor.
        await run_sessions(self, "ble_nus", self._stream)

    async def _stream(self, client: BleakClient, lost: asyncio.Event) -> None:
        proto = self.make_protocol()
        seen = proto.errors.copy()
        link = GattLink(client, lost)
        await link.subscribe(NUS_TX)
        self.ctx.set_link("connected", f"{client.address} notify {NUS_TX[:8]}")
        log.info("%s: NUS stream from %s open", self.device.id, client.address)
        try:
            while True:
                self.ctx.deliver(proto.feed(await link.read()), proto.errors, seen)
        except TransportClosed:
            return
