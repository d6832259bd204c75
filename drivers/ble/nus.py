"""`ble_nus` driver: a Nordic UART Service notify stream fed to the `lines` protocol.

Connects through drivers/transport/gatt.py (found by the shared scanner, reconnected with
backoff), subscribes to the NUS TX characteristic and feeds every notification to a `lines`
protocol. Notifications are MTU-sized chunks; the protocol's line buffer reassembles lines split
across them. A partial line from a dropped link is discarded with the protocol. A link the device
context injects (`open_transport`: the `sim` driver's simulator) is read the same way, each read
one notification's payload, and reopened with backoff when it closes.

Options are those of the `lines` driver (format, field map, unknown_fields...).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel

from drivers.base import Driver, StreamProtocol
from drivers.lines.protocol import LinesOptions, LinesProtocol
from drivers.transport.gatt import NOTIFY_PAYLOAD, NUS_TX, GattLink, run_sessions
from edge_common.backoff import Backoff
from edge_common.errors import TransportClosed

if TYPE_CHECKING:
    from bleak import BleakClient

log = logging.getLogger(__name__)


class BleNusDriver(Driver):
    name = "ble_nus"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "ble"
    Options: ClassVar[type[BaseModel]] = LinesOptions
    default_expected_interval = 60.0
    injected_transport: ClassVar[bool] = True

    def make_protocol(self) -> StreamProtocol:
        """A fresh `lines` protocol configured from this device's options."""
        return LinesProtocol(self.options)

    async def run(self) -> None:
        if self.ctx.open_transport is not None:
            await self._injected()
            return
        # The subscription keeps the NUS or-pattern in the passive monitor.
        await run_sessions(self, "ble_nus", self._stream)

    async def _stream(self, client: BleakClient, lost: asyncio.Event) -> None:
        link = GattLink(client, lost)
        await link.subscribe(NUS_TX)
        self.ctx.set_link("connected", f"{client.address} notify {NUS_TX[:8]}")
        log.info("%s: NUS stream from %s open", self.device.id, client.address)
        await self._serve(link.read)

    async def _injected(self) -> None:
        """The device context's link in place of GATT: reopened with backoff when it closes."""
        assert self.ctx.open_transport is not None
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                link = await self.ctx.open_transport()
            except TransportClosed as e:
                self.ctx.set_link("disconnected", str(e))
                await asyncio.sleep(backoff.next())
                continue
            self.ctx.set_link("connected", f"{link.name} notify {NUS_TX[:8]}")
            backoff.reset()
            try:
                await self._serve(functools.partial(link.read, NOTIFY_PAYLOAD))
            finally:
                await link.close()
            self.ctx.set_link("disconnected", "link lost")
            await asyncio.sleep(backoff.next())

    async def _serve(self, read: Callable[[], Awaitable[bytes]]) -> None:
        """Feed every notification to a fresh protocol until the link closes."""
        proto = self.make_protocol()
        seen = proto.errors.copy()
        try:
            while True:
                self.ctx.deliver(proto.feed(await read()), proto.errors, seen)
        except TransportClosed:
            return
