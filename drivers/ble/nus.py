"""`ble_nus` driver: a Nordic UART Service notify stream fed to the `lines` protocol.

Finds the peripheral through the shared scanner (never a second scanner: BlueZ answers a second
discovery from the same client with InProgress), connects with bleak-retry-connector, subscribes
to the NUS TX characteristic and feeds every notification to a `lines` protocol. Notifications
are MTU-sized chunks; the protocol's line buffer reassembles lines split across them. When the
link drops (or bluetoothd restarts) the driver reports ``disconnected`` and reconnects with
backoff; a partial line from the old link is discarded with the protocol.

Options are those of the `lines` driver (format, field map, unknown_fields...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel

from drivers.base import Driver, StreamProtocol
from drivers.ble.adverts import scanner_of
from drivers.lines.protocol import LinesOptions, LinesProtocol
from edge_common.backoff import Backoff

if TYPE_CHECKING:
    from bleak import BleakClient

    from drivers.ble.scanner import BleScanner

log = logging.getLogger(__name__)

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # central -> peripheral (write)
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # peripheral -> central (notify)

FIND_TIMEOUT = 10.0
CONNECT_ATTEMPTS = 2
MAX_LINE = 4096

class BleNusDriver(Driver):
    name = "ble_nus"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "ble"
    Options: ClassVar[type[BaseModel]] = LinesOptions
    default_expected_interval = 60.0

    def make_protocol(self) -> StreamProtocol:
        """A fresh `lines` protocol configured from this device's options."""
        return LinesProtocol(self.options)

    async def run(self) -> None:
        scanner = scanner_of(self)
        assert self.device.address is not None
        address = self.device.address
        # The subscription keeps the NUS or-pattern in the passive monitor.
        sub = scanner.subscribe(address, lambda _adv: None, family="ble_nus")
        lost = asyncio.Event()
        remove = scanner.add_bluez_listener(lambda _present: lost.set())  # bluetoothd restarted
        try:
            await self._connect_loop(scanner, address, lost)
        finally:
            scanner.unsubscribe(sub)
            remove()

    async def _connect_loop(self, scanner: BleScanner, address: str, lost: asyncio.Event) -> None:
        from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

        backoff = Backoff(0.5, 30.0)
        while True:
            device = scanner.ble_device(address) or await scanner.wait_for_device(
                address, FIND_TIMEOUT
            )
            if device is None:
                self.ctx.set_link("disconnected", "not advertising (not found by the scanner)")
                await asyncio.sleep(backoff.next())
                continue
            lost.clear()
            self.ctx.set_link("starting", "connecting")
            try:
                client = await establish_connection(
                    BleakClientWithServiceCache,
                    device,
                    self.device.id,
                    disconnected_callback=lambda _c: lost.set(),
                    max_attempts=CONNECT_ATTEMPTS,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.ctx.count_error("connect")
                self.ctx.set_link("disconnected", f"connect failed: {e}"[:300])
                log.warning("%s: connect to %s failed: %s", self.device.id, address, e)
                await asyncio.sleep(backoff.next())
                continue
            try:
                await self._stream(client, lost)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.ctx.count_error("link")
                log.warning("%s: NUS stream failed: %s", self.device.id, e)
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await client.disconnect()
            self.ctx.set_link("disconnected", "link lost")
            log.warning("%s: link to %s lost; reconnecting", self.device.id, address)
            await asyncio.sleep(backoff.next())

    async def _stream(self, client: BleakClient, lost: asyncio.Event) -> None:
        proto = self.make_protocol()
        seen = proto.errors.copy()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(NUS_TX, lambda _char, data: queue.put_nowait(bytes(data)))
        self.ctx.set_link("connected", f"{client.address} notify {NUS_TX[:8]}")
        log.info("%s: NUS stream from %s open", self.device.id, client.address)
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    chunks = []
                    while not queue.empty():  # notifications that arrived before the drop
                        chunks.append(queue.get_nowait())
                    self._feed(proto, b"".join(chunks), seen)
                    return
                self._feed(proto, get.result(), seen)
        finally:
            lost_wait.cancel()

    def _feed(self, proto: StreamProtocol, data: bytes, seen: Counter[str]) -> None:
        if not data:
            return
        self.ctx.deliver(proto.feed(data), proto.errors, seen)
