"""PolledDriver: a device that answers read requests, over a serial port or a BLE GATT link.

Every `poll_interval` (on the shared timer grid, edge_common/ticks.py) the driver writes the
family's read requests one after the other, waits up to `timeout` for each reply (counted
"timeout" when none came; a frame cut short is dropped by the protocol's `flush`), and emits
one reading with the values of all the replies of that poll. After `offline_after` polls
without any reply the link is reported "disconnected" (and "connected" again on the next reply).
The serial port is reopened with backoff when it vanishes (drivers/stream.py); a BLE link is
reconnected (drivers/transport/gatt.py).

Only the family's fixed `requests` are ever written: the gateway reads and never configures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import abstractmethod
from collections import Counter
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import StreamProtocol
from drivers.stream import StreamDriver
from edge_common.device import Duration as AnyDuration
from edge_common.ticks import sleep_until

if TYPE_CHECKING:
    from bleak import BleakClient

    from drivers.transport import ByteTransport
    from edge_common.device import DeviceConfig
    from edge_common.model import Value

log = logging.getLogger(__name__)

Duration = Annotated[AnyDuration, Field(gt=0, le=86400)]


class PollOptions(BaseModel):
    """Keys of every polled device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["serial", "ble"] = "serial"
    poll_interval: Duration = 1.0
    timeout: Duration = 0.5  # per reply
    offline_after: int = Field(default=3, ge=1, le=1000)


class Link(Protocol):
    """A byte link to the device: a serial port or a GATT notify/write pair."""

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class PolledDriver(StreamDriver):
    """Request/reply device; subclasses give the protocol, the requests and the BLE characteristics."""

    Options: ClassVar[type[BaseModel]] = PollOptions
    requests: ClassVar[tuple[bytes, ...]]
    ble_family: ClassVar[str]  # scanner family (passive or-pattern) of the BLE variant
    ble_notify: ClassVar[str]
    ble_write: ClassVar[str]

    @abstractmethod
    def make_protocol(self) -> StreamProtocol:
        """A fresh decoder of the replies."""

    @classmethod
    def device_transport(cls, device: DeviceConfig) -> Literal["serial", "ble", "none"]:
        return "ble" if device.options.get("transport") == "ble" else "serial"

    @classmethod
    def transports(cls) -> tuple[Literal["serial", "ble", "none"], ...]:
        return ("serial", "ble")  # by the device's `transport` key

    @property
    def expected_interval(self) -> float:
        return self.device.expected_interval or max(self.default_expected_interval, 5 * self.options.poll_interval)

    async def run(self) -> None:
        if self.device_transport(self.device) == "ble":
            from drivers.transport.gatt import run_sessions

            await run_sessions(self, self.ble_family, self._ble_session)
        else:
            await super().run()

    async def serve(self, port: ByteTransport, proto: StreamProtocol, seen: Counter[str]) -> None:
        await self.poll(port, proto, seen, str(self.device.port))

    async def _ble_session(self, client: BleakClient, lost: asyncio.Event) -> None:
        from drivers.transport.gatt import GattLink

        link = GattLink(client, lost, self.ble_write)
        await link.subscribe(self.ble_notify)
        self.ctx.set_link("connected", f"{client.address} notify {self.ble_notify[:8]}")
        log.info("%s: GATT link to %s open", self.device.id, client.address)
        proto = self.make_protocol()
        await self.poll(link, proto, proto.errors.copy(), client.address)

    async def poll(self, link: Link, proto: StreamProtocol, seen: Counter[str], where: str) -> None:
        """Poll until the link goes away (TransportClosed)."""
        o: PollOptions = self.options
        silent = 0
        loop = asyncio.get_running_loop()
        k = math.floor(loop.time() / o.poll_interval)  # the first poll at once, then on the shared grid
        while True:
            values: dict[str, Value] = {}
            answered = 0
            for request in self.poll_requests():
                got, ok = await self._exchange(link, proto, request, o.timeout)
                for v in got:
                    values.update(v)
                answered += ok
                if not ok:
                    self.ctx.count_error("timeout")
            self.ctx.deliver([self.combine(values)] if values else [], proto.errors, seen)
            if answered:
                silent = 0
                self.ctx.set_link("connected", where)
            else:
                silent += 1
                if silent >= o.offline_after:
                    self.ctx.set_link("disconnected", f"no reply to {silent} polls")
            # Polls on multiples of poll_interval on the loop clock (edge_common/ticks.py): devices with the
            # same interval poll in one wake-up, and the devices of one simulated vehicle see one instant.
            # A slow link drops the slots it missed.
            k = max(k + 1, math.floor(loop.time() / o.poll_interval) + 1)
            await sleep_until(k * o.poll_interval)

    def poll_requests(self) -> tuple[bytes, ...]:
        """Hook: the requests of one poll (the family's fixed `requests`; obd2: the configured PIDs)."""
        return self.requests

    def combine(self, values: dict[str, Value]) -> dict[str, Value]:
        """Hook: the reading of one poll from the merged replies."""
        return values

    async def _exchange(self, link: Link, proto: StreamProtocol, request: bytes,
                        timeout: float) -> tuple[list[dict[str, Value]], bool]:  # noqa: ASYNC109
        frames = proto.frames
        await link.write(request)
        out: list[dict[str, Value]] = []
        deadline = time.monotonic() + timeout
        while proto.frames == frames:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    chunk = await link.read()
            except TimeoutError:
                out += proto.flush()
                break
            out += proto.feed(chunk)
        return out, proto.frames > frames
