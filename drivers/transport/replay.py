"""Replay of a recorded capture into a real driver (`replay = "capture.bin"`), timing and timestamps kept.

Capture format (`edge-agent probe serial --capture FILE` writes it): the line ``EDGECAP1\n``, then
per chunk read from the port a big-endian float64 wall-clock time, a uint32 length and the bytes.
A file without that header is taken as raw bytes: played at once, stamped with the current time.
After the last chunk the transport stays open and silent (the driver flushes what it holds).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from edge_common.errors import TransportClosed

MAGIC = b"EDGECAP1\n"
_HEAD = struct.Struct(">dI")
RAW_CHUNK = 256


def write_record(f: BinaryIO, ts: float, data: bytes) -> None:
    """Append one chunk (read at wall-clock `ts`) to a capture opened with `start_capture`."""
    f.write(_HEAD.pack(ts, len(data)) + data)


def start_capture(f: BinaryIO) -> None:
    f.write(MAGIC)


def write_capture(path: Path, records: Iterable[tuple[float, bytes]]) -> None:
    with open(path, "wb") as f:
        start_capture(f)
        for ts, data in records:
            write_record(f, ts, data)


def read_capture(data: bytes) -> Iterator[tuple[float | None, bytes]]:
    """(recorded time or None for a raw file, chunk); TransportClosed naming a truncated record."""
    if not data.startswith(MAGIC):
        for i in range(0, len(data), RAW_CHUNK):
            yield None, data[i:i + RAW_CHUNK]
        return
    pos = len(MAGIC)
    while pos < len(data):
        if pos + _HEAD.size > len(data):
            raise TransportClosed(f"capture truncated at byte {pos}")
        ts, n = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        if pos + n > len(data):
            raise TransportClosed(f"capture truncated at byte {pos}")
        yield ts, data[pos:pos + n]
        pos += n


class ReplayTransport:
    """Plays a capture: chunks spaced as recorded; `recorded_time()` is the current chunk's wall-clock time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._records = read_capture(path.read_bytes())
        except OSError as e:
            raise TransportClosed(f"cannot read capture {path}: {e.strerror}") from e
        self._first: tuple[float, float] | None = None  # (recorded, monotonic) of the first chunk
        self._ts: float | None = None
        self._prev: float | None = None  # the recorded time of the chunk before
        self.ended = False

    @classmethod
    async def open(cls, path: Path) -> ReplayTransport:
        return cls(path)

    @property
    def name(self) -> str:
        return f"replay {self.path}"

    def recorded_time(self) -> float:
        return self._ts if self._ts is not None else time.time()

    def quiet_before(self) -> float:
        """The recorded pause before the current chunk (0 when the capture has no times)."""
        return self._ts - self._prev if self._ts is not None and self._prev is not None else 0.0

    async def read(self, n: int = 4096) -> bytes:
        try:
            ts, chunk = next(self._records)
        except StopIteration:
            self.ended = True
            await asyncio.Event().wait()  # the capture is over: silent, as a device that stopped talking
            raise AssertionError("unreachable") from None
        if ts is not None:
            if self._first is None:
                self._first = (ts, time.monotonic())
            due = self._first[1] + (ts - self._first[0])
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        self._prev, self._ts = self._ts, ts
        return chunk

    async def write(self, data: bytes) -> None:
        return None  # a replayed device hears nothing

    async def close(self) -> None:
        return None
