"""Byte transports: the small interface every stream driver reads through, and who opens which.

`SerialPort` (serialport.py), `SimulatorTransport` (simulated.py: a simulator's bytes, paced) and
`ReplayTransport` (replay.py: a recorded capture, its timing and timestamps kept). A driver's
`DeviceContext.open_transport` overrides the choice (the `sim` driver injects a simulator).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol


class ByteTransport(Protocol):
    """An open byte stream; `read` raises TransportClosed when it goes away."""

    @property
    def name(self) -> str: ...

    async def read(self, n: int = 4096) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


Opener = Callable[[], Awaitable[ByteTransport]]
