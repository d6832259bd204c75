"""StreamDriver: a serial port feeding a StreamProtocol, reopened with backoff when it vanishes."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections import Counter
from typing import ClassVar, Literal

from drivers.base import Driver, StreamProtocol
from drivers.transport import ByteTransport, Opener
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

    async def on_open(self, port: ByteTransport) -> None:
        """Hook: send an init command after opening (e.g. set reporting mode)."""

    async def serve(self, port: ByteTransport, proto: StreamProtocol, seen: Counter[str]) -> None:
        """Decode what the device sends until the port goes away (TransportClosed)."""
        idle = _IdleFlush(self, proto, seen)
        quiet_before = getattr(port, "quiet_before", None)  # a replay or simulator knows its line's pauses
        quiet_after = getattr(port, "quiet_after", None)  # a simulator knows the next one too
        try:
            while True:
                last = self.ctx.now()  # a stamped port: the time of the chunk read last
                chunk = await port.read()
                if (quiet_before is not None and self.idle_flush is not None and proto.pending
                        and quiet_before() >= self.idle_flush):
                    # The line was quiet that long before this chunk, by its own clock: what the last one
                    # left held back goes out first, with that chunk's time, as the idle timer does live
                    # (on a loaded machine the chunk can come before the timer ran).
                    self._flush_as_of(last, proto, seen)
                self.ctx.deliver(proto.feed(chunk), proto.errors, seen)
                if (quiet_after is not None and self.idle_flush is not None and proto.pending
                        and quiet_after() >= self.idle_flush):
                    # The line stays quiet that long after this chunk: what it left held back goes out
                    # now, as the idle timer would send it then, without the timer's wake-up.
                    self.ctx.deliver(proto.flush(), proto.errors, seen)
                idle.data_seen()
        finally:
            idle.cancel()

    def _flush_as_of(self, ts: float, proto: StreamProtocol, seen: Counter[str]) -> None:
        now, self.ctx.now = self.ctx.now, lambda: ts
        try:
            self.ctx.deliver(proto.flush(), proto.errors, seen)
        finally:
            self.ctx.now = now

    supports_replay: ClassVar[bool] = True
    injected_transport: ClassVar[bool] = True

    def opener(self) -> Opener:
        """The device context's transport if it injects one, else the capture to replay, else the port."""
        if self.ctx.open_transport is not None:
            return self.ctx.open_transport
        if self.device.replay is not None:
            from drivers.transport.replay import ReplayTransport

            return lambda: ReplayTransport.open(self.device.replay)  # type: ignore[arg-type]
        settings = self.settings()
        return lambda: SerialPort.open(settings)

    async def run(self) -> None:
        backoff = Backoff(0.1, self.reopen_backoff_max)
        open_transport = self.opener()
        while True:
            try:
                port = await open_transport()
            except TransportClosed as e:
                self.ctx.set_link("disconnected", str(e))
                await asyncio.sleep(backoff.next())
                continue
            self.ctx.set_link("connected", port.name)
            if isinstance(port, SerialPort):
                log.info("%s: opened %s at %d baud", self.device.id, port.name, port.settings.baud)
            else:
                log.info("%s: opened %s", self.device.id, port.name)
            self.ctx.now = getattr(port, "recorded_time", time.time)  # a replay or simulator stamps its chunks
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
                self.ctx.now = time.time
                await port.close()
            await asyncio.sleep(backoff.next())


class _IdleFlush:
    """Flushes a protocol's held-back values once the line has been quiet for `idle_flush`.

    One timer per quiet period, armed only while the protocol holds something back: an idle
    port costs no wake-ups, and a burst read in many chunks does not arm a timer per read.
    """

    def __init__(self, driver: StreamDriver, proto: StreamProtocol, seen: Counter[str]) -> None:
        self._driver, self._proto, self._seen = driver, proto, seen
        self._loop = asyncio.get_running_loop()
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def data_seen(self) -> None:
        """Bytes just arrived and were fed."""
        quiet = self._driver.idle_flush
        if quiet is None:
            return
        self._last = self._loop.time()
        if self._timer is None and self._proto.pending:
            self._timer = self._loop.call_at(self._last + quiet, self._check)

    def _check(self) -> None:
        quiet = self._driver.idle_flush
        assert quiet is not None
        due = self._last + quiet
        if due - self._loop.time() > 1e-3:  # bytes came after the timer was armed: wait on
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer = None
        self._driver.ctx.deliver(self._proto.flush(), self._proto.errors, self._seen)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
