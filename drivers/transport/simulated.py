"""Simulated devices as transports. `SimulatorTransport`: a talking simulator's wire bytes, the first chunk
at once, then one per `interval` on the shared grid (multiples of `interval` on the loop clock: no drift,
equal intervals share a wake-up). `RespondingTransport`: a device that answers requests (a `Responder`);
`PtyResponder`: the same behind a pseudo-terminal, for drivers that open their port themselves."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from edge_common.errors import TransportClosed
from edge_common.ticks import sleep_until

if TYPE_CHECKING:
    from drivers.family import Responder


class SimulatorTransport:
    """Reads return the simulator's next chunk when its time comes (at most `n` bytes a read: the rest of a
    chunk comes at once on the next reads, as a burst does); writes (init commands) are dropped."""

    def __init__(self, chunks: Iterator[bytes], interval: float, name: str) -> None:
        self._chunks, self._interval, self._name = chunks, interval, name
        self._k: int | None = None
        self._ts: float | None = None
        self._rest = b""
        self._quiet = 0.0

    @property
    def name(self) -> str:
        return self._name

    async def read(self, n: int = 4096) -> bytes:
        if self._rest:
            self._quiet = 0.0
        else:
            if self._k is None:
                self._k = math.floor(asyncio.get_running_loop().time() / self._interval)
            else:
                self._k += 1
                await sleep_until(self._k * self._interval)
            self._ts = time.time()
            self._quiet = self._interval
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                raise TransportClosed(f"{self._name}: simulation ended") from None
        out, self._rest = self._rest[:n], self._rest[n:]
        return out

    def recorded_time(self) -> float:
        """When the current chunk was sent: its readings' time, however long the driver holds them back."""
        return self._ts if self._ts is not None else time.time()

    def quiet_before(self) -> float:
        """The simulated line's pause before the current read: one interval before a chunk, none inside one."""
        return self._quiet

    def quiet_after(self) -> float:
        """The pause after the current chunk: one interval (the driver need not wait to know it)."""
        return self._interval

    async def write(self, data: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


class RespondingTransport:
    """A simulated device that is asked: what the driver writes goes to the responder, its reply is read back.

    No pacing of its own: a polling driver keeps its `poll_interval`; a request the device ignores
    leaves nothing to read (the driver's reply timeout counts it).
    """

    def __init__(self, responder: Responder, name: str) -> None:
        self._responder, self._name = responder, name
        self._rx = bytearray()
        self._ready = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    async def read(self, n: int = 4096) -> bytes:
        while not self._rx:
            self._ready.clear()
            await self._ready.wait()
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    async def write(self, data: bytes) -> None:
        reply = self._responder.answer(data)
        if reply:
            self._rx += reply
            self._ready.set()

    async def close(self) -> None:
        return None


class PtyResponder:
    """A responder behind a pseudo-terminal: for drivers that open their serial port by path (slcan),
    the real port code runs against the simulated device. Serve with `run()`; the slave side's path
    is `port`."""

    def __init__(self, responder: Responder) -> None:
        import tty

        self._responder = responder
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line discipline before the driver's pyserial sets its own
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)

    async def run(self) -> None:
        """Answer what the driver writes until cancelled; closes the pty then."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self._master, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(self._master, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # EIO: no one has the slave side open right now
                    await asyncio.sleep(0.05)
                    continue
                reply = self._responder.answer(data)
                while reply:
                    try:
                        reply = reply[os.write(self._master, reply):]
                    except BlockingIOError:
                        await asyncio.sleep(0.001)
        finally:
            loop.remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
