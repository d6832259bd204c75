"""A simulator's wire bytes as a transport: the first chunk at once, then one per `interval` on the
shared grid (multiples of `interval` on the loop clock: no drift, equal intervals share a wake-up)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

from edge_common.errors import TransportClosed
from edge_common.ticks import sleep_until


class SimulatorTransport:
    """Reads return the simulator's next chunk when its time comes; writes (init commands) are dropped."""

    def __init__(self, chunks: Iterator[bytes], interval: float, name: str) -> None:
        self._chunks, self._interval, self._name = chunks, interval, name
        self._k: int | None = None
        self._ts: float | None = None

    @property
    def name(self) -> str:
        return self._name

    async def read(self, n: int = 4096) -> bytes:
        if self._k is None:
            self._k = math.floor(asyncio.get_running_loop().time() / self._interval)
        else:
            self._k += 1
            await sleep_until(self._k * self._interval)
        self._ts = time.time()
        try:
            return next(self._chunks)
        except StopIteration:
            raise TransportClosed(f"{self._name}: simulation ended") from None

    def recorded_time(self) -> float:
        """When the current chunk was sent: its readings' time, however long the driver holds them back."""
        return self._ts if self._ts is not None else time.time()

    async def write(self, data: bytes) -> None:
        return None

    async def close(self) -> None:
        return None
