"""BLE GATT transport: find, connect, run a session, reconnect; a byte link over notify/write.

Shared by every driver that connects instead of listening to adverts (`ble_nus`, and the
`vesc` and `jbd_bms` drivers with ``transport = "ble"``). The peripheral is found through the
shared scanner service (``ctx.services["ble"]``; never a second scanner: BlueZ answers a second
discovery from the same client with InProgress) and connected with bleak-retry-connector. When
the link drops (or bluetoothd restarts) the driver reports ``disconnected`` and reconnects with
backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_common.backoff import Backoff
from edge_common.errors import DriverError, TransportClosed

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.device import BLEDevice

    from drivers.base import Driver

log = logging.getLogger(__name__)

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"  # Nordic UART Service
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # central -> peripheral (write)
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # peripheral -> central (notify)

NOTIFY_PAYLOAD = 20  # bytes per notification at the default ATT MTU of 23
FIND_TIMEOUT = 10.0
CONNECT_ATTEMPTS = 2

Session = Callable[["BleakClient", asyncio.Event], Awaitable[None]]


class Scanner(Protocol):
    """What a connecting driver needs of the shared scanner (drivers/ble/scanner.py BleScanner)."""

    def subscribe(self, address: str | None, callback: Callable[[Any], None], *, family: str | None = None) -> Any: ...

    def unsubscribe(self, sub: Any) -> None: ...

    def add_bluez_listener(self, fn: Callable[[bool], None]) -> Callable[[], None]: ...

    def ble_device(self, address: str) -> BLEDevice | None: ...

    async def wait_for_device(self, address: str, timeout: float) -> BLEDevice | None: ...  # noqa: ASYNC109


class GattLink:
    """A connected peripheral as a byte link: notifications of one characteristic in, writes to another out."""

    def __init__(self, client: BleakClient, lost: asyncio.Event, write_char: str | None = None) -> None:
        self.client = client
        self.lost = lost
        self.write_char = write_char
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def subscribe(self, notify_char: str) -> None:
        await self.client.start_notify(notify_char, lambda _c, data: self._queue.put_nowait(bytes(data)))

    async def read(self) -> bytes:
        """The next notification; notifications that arrived before a drop are still returned first."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if self.lost.is_set():
            raise TransportClosed("link lost")
        get = asyncio.ensure_future(self._queue.get())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({get, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        raise TransportClosed("link lost")

    async def write(self, data: bytes) -> None:
        assert self.write_char is not None
        if self.lost.is_set():
            raise TransportClosed("link lost")
        try:
            await self.client.write_gatt_char(self.write_char, data)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise TransportClosed(f"write failed: {e}") from e


async def run_sessions(driver: Driver, family: str, session: Session) -> None:
    """Connect to the driver's `address` and run `session` on every connection, until cancelled."""
    scanner: Scanner | None = driver.ctx.services.get("ble")
    if scanner is None:
        raise DriverError("no BLE scanner service (the agent creates it for BLE devices)")
    assert driver.device.address is not None
    address = driver.device.address
    # The subscription keeps the family's or-pattern in the passive monitor.
    sub = scanner.subscribe(address, lambda _adv: None, family=family)
    lost = asyncio.Event()
    remove = scanner.add_bluez_listener(lambda _present: lost.set())  # bluetoothd restarted
    try:
        await _connect_loop(driver, scanner, address, lost, session)
    finally:
        scanner.unsubscribe(sub)
        remove()


async def _connect_loop(driver: Driver, scanner: Scanner, address: str, lost: asyncio.Event,
                        session: Session) -> None:
    from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

    ctx, dev_id = driver.ctx, driver.device.id
    backoff = Backoff(0.5, 30.0)
    while True:
        device = scanner.ble_device(address) or await scanner.wait_for_device(address, FIND_TIMEOUT)
        if device is None:
            ctx.set_link("disconnected", "not advertising (not found by the scanner)")
            await asyncio.sleep(backoff.next())
            continue
        lost.clear()
        ctx.set_link("starting", "connecting")
        try:
            client = await establish_connection(
                BleakClientWithServiceCache,
                device,
                dev_id,
                disconnected_callback=lambda _c: lost.set(),
                max_attempts=CONNECT_ATTEMPTS,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            ctx.count_error("connect")
            ctx.set_link("disconnected", f"connect failed: {e}"[:300])
            log.warning("%s: connect to %s failed: %s", dev_id, address, e)
            await asyncio.sleep(backoff.next())
            continue
        try:
            await session(client, lost)
            backoff.reset()
        except TransportClosed:
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            ctx.count_error("link")
            log.warning("%s: GATT session failed: %s", dev_id, e)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.disconnect()
        ctx.set_link("disconnected", "link lost")
        log.warning("%s: link to %s lost; reconnecting", dev_id, address)
        await asyncio.sleep(backoff.next())
