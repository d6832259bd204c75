"""StreamDriver: a serial port feeding a StreamProtocol, reopened with backoff when it vanishes."""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections import Counter
from typing import ClassVar, Literal

from drivers.base import Driver, StreamProtocol
from drivers.transport.serialport import SerialPort, SerialSettings
from edge_common.backoff import Backoff
from edge_common.errors import TransportClosed

log = logging.getLogger(__name__)


class StreamDriver(Driver):
    """Serial device that talks continuously; subclasses only provide the protocol."""

    transport: ClassVar[Literal["serial", "ble", "none"]] = "serial"
    default_baud: ClassVar[int] = 9600
    # Reopen quickly: a replugged USB adapter must resume within 5 s.
    reopen_backoff_max: ClassVar[float] = 2.0
    # Quiet time after which the protocol's held-back values are flushed (None: never).
    idle_flush: ClassVar[float | None] = None

    @abstractmethod
    def make_protocol(self) -> StreamProtocol:
        """A fresh decoder (called on every (re)open)."""

    def settings(self) -> SerialSettings:
        d = self.device
        assert d.port is not None
        return SerialSettings(
            port=d.port, baud=d.baud or self.default_baud, parity=d.parity,
            stopbits=d.stopbits, bytesize=d.bytesize,
        )

    async def on_open(self, port: SerialPort) -> None:
        """Hook: send an init command after opening (e.g. set reporting mode)."""

    async def serve(self, port: SerialPort, proto: StreamProtocol, seen: Counter[str]) -> None:
        """Decode what the device sends until the port goes away (TransportClosed)."""
        while True:
            if self.idle_flush is None:
                chunk = await port.read()
            else:
                try:
                    async with asyncio.timeout(self.idle_flush):
                        chunk = await port.read()
                except TimeoutError:
                    self.ctx.deliver(proto.flush(), proto.errors, seen)
                    continue
            self.ctx.deliver(proto.feed(chunk), proto.errors, seen)

    async def run(self) -> None:
        backoff = Backoff(0.1, self.reopen_backoff_max)
        settings = self.settings()
        while True:
            try:
                port = await SerialPort.open(settings)
            except TransportClosed as e:
                self.ctx.set_link("disconnected", str(e))
                await asyncio.sleep(backoff.next())
                continue
            self.ctx.set_link("connected", settings.port)
            log.info("%s: opened %s at %d baud", self.device.id, settings.port, settings.baud)
            backoff.reset()
            proto = self.make_protocol()
            seen_errors = proto.errors.copy()
            try:
                await self.on_open(port)
                await self.serve(port, proto, seen_errors)
            except TransportClosed as e:
                log.warning("%s: port lost: %s; reopening", self.device.id, e)
                self.ctx.set_link("disconnected", str(e))
            except asyncio.CancelledError:
                # stopping: what the decoder held back goes to the buffer too
                self.ctx.deliver(proto.flush(), proto.errors, seen_errors)
                raise
            finally:
                await port.close()
            await asyncio.sleep(backoff.next())
