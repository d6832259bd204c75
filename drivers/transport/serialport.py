"""Serial transport shared by every serial driver (pyserial-asyncio-fast).

Opens the port, yields chunks of bytes, and turns every way a USB adapter can vanish
(EOF, EIO, ENXIO, port gone) into `TransportClosed` so the driver can reopen with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import serial
import serial_asyncio_fast

from edge_common.errors import TransportClosed

log = logging.getLogger(__name__)

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


@dataclass(frozen=True, slots=True)
class SerialSettings:
    port: str
    baud: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8


READ_SIZE = 4096  # Linux's tty buffer (N_TTY_BUF_SIZE)


def _read_more_per_wakeup(transport: asyncio.BaseTransport) -> None:
    """Let the transport take up to READ_SIZE bytes per readiness event (it takes 1024).

    A fast talker (a GNSS receiver at 115200 baud, or the kernel's backlog after the loop was
    busy) then costs one loop wake-up, select and read per 4 KB instead of four. The attribute
    is pyserial-asyncio-fast's own; tests/test_serial_drivers.py fails if it goes away.
    """
    if isinstance(getattr(transport, "_max_read_size", None), int):
        transport._max_read_size = READ_SIZE  # type: ignore[attr-defined]


class SerialPort:
    """One open serial port: read chunks, write bytes, close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, settings: SerialSettings) -> None:
        self._reader = reader
        self._writer = writer
        self.settings = settings

    @classmethod
    async def open(cls, settings: SerialSettings) -> SerialPort:
        """Open the port; TransportClosed if it is absent or busy."""
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=settings.port,
                baudrate=settings.baud,
                parity=_PARITY[settings.parity],
                stopbits=settings.stopbits,
                bytesize=settings.bytesize,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise TransportClosed(f"cannot open {settings.port}: {e}") from e
        _read_more_per_wakeup(writer.transport)
        return cls(reader, writer, settings)

    @property
    def name(self) -> str:
        return self.settings.port

    async def read(self, n: int = 4096) -> bytes:
        """Next chunk of bytes (at least one); TransportClosed when the port goes away."""
        try:
            data = await self._reader.read(n)
        except (serial.SerialException, OSError) as e:
            raise TransportClosed(f"{self.settings.port}: {e}") from e
        if not data:
            raise TransportClosed(f"{self.settings.port}: end of stream")
        return data

    async def write(self, data: bytes) -> None:
        """Write and drain; TransportClosed on failure."""
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (serial.SerialException, OSError) as e:
            raise TransportClosed(f"{self.settings.port}: {e}") from e

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.read()
