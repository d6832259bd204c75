"""`can` driver: a CAN bus (an slcan adapter on a serial port, or socketcan), decoded from a DBC.

slcan: the port is opened with pyserial (exclusive, like every serial driver), the adapter is set
up with `C`, `Sn` and `L` (listen-only) or `O`, and its lines are read on the event loop and parsed
by drivers/can/protocol.py. python-can's own slcan reader works over the same port but cost ~15x
the agent's CPU at 500 frames/s (a read syscall and a Python loop per frame; BENCHMARKS.md) and
wedges on line noise, so it is only the reference the parser is tested against.
socketcan: python-can's bus; its blocking `recv` runs in a reader thread that hands frames to the
loop in batches. A byte transport the device context injects (`open_transport`: the `sim` driver's
simulated bus) carries slcan lines read by the same parser, without the adapter set-up. Either way
the loop takes frames at most every COALESCE seconds (one wake-up per batch, not per frame), then
decodes and rate-limits them.

The gateway only reads: no frame is ever sent. A vanished adapter, a bus that went down or a
failed open is retried with backoff; a bus that falls silent after traffic is reopened once
(an slcan controller that went bus-off stays off until it is re-initialised).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from drivers.base import DeviceContext, Driver
from drivers.can.protocol import (
    SLCAN_BITRATES,
    CanDecoder,
    CanOptions,
    DbcError,
    Frame,
    SlcanReader,
    build_plans,
    load_dbc,
)
from edge_common.backoff import Backoff
from edge_common.errors import TransportClosed

if TYPE_CHECKING:
    import can
    import serial

    from drivers.transport import ByteTransport
    from edge_common.device import DeviceConfig

log = logging.getLogger(__name__)

COALESCE = 0.1  # s between batches: ~50 frames per wake-up at 500 frames/s, well inside a tty's buffer
RECV_TIMEOUT = 0.25  # how often the socketcan reader thread looks at its stop flag
REPLY_TIMEOUT = 1.0  # an slcan adapter answers a command within this
SILENT_WARNING = 10.0  # no frame this long after opening: say what to check
BUS_SILENT = 5.0  # frames flowed, then none this long: reopen the channel once


class _Lost(Exception):
    """The bus or adapter went away (or refused to open)."""


class _Silent(_Lost):
    """Traffic stopped: the adapter is still there; the controller may be bus-off (or the bus asleep)."""


class _Slcan:
    """An open slcan adapter: the serial port, read on the event loop."""

    def __init__(self, port: serial.Serial, reader: SlcanReader, pending: bytes, where: str) -> None:
        self.port = port
        self.reader = reader
        self.pending = pending
        self.where = where
        self.errors = reader.errors

    @classmethod
    def open(cls, path: str, baud: int, o: CanOptions) -> _Slcan:
        """Open and set up the adapter (blocking); _Lost if absent, busy or refusing."""
        import serial

        try:
            port = serial.Serial(path, baudrate=baud, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            raise _Lost(f"cannot open {path}: {e}") from None
        try:
            time.sleep(o.open_delay)
            port.write(b"C\r")  # closed first: an open adapter refuses a bitrate (its reply drowns in frames)
            time.sleep(0.05)
            port.reset_input_buffer()
            code = f"S{SLCAN_BITRATES.index(o.bitrate)}"
            if cls._command(port, code)[0] == b"\a":
                raise _Lost(f"{path}: the adapter refused {code} (bitrate {o.bitrate})")
            mode = "L" if o.listen_only else "O"
            answer, rest = cls._command(port, mode)
            if answer == b"\a":
                hint = "; set listen_only = false if it lacks the slcan L command" if mode == "L" else ""
                raise _Lost(f"{path}: the adapter refused to open the channel ({mode}){hint}")
        except serial.SerialException as e:
            port.close()
            raise _Lost(f"{path}: {e}") from None
        except BaseException:
            port.close()
            raise
        kind = "listen-only" if o.listen_only else "normal (ACKs, never transmits)"
        return cls(port, SlcanReader(), rest, f"slcan {path} at {o.bitrate // 1000} kbit/s, {kind}")

    @staticmethod
    def _command(port: serial.Serial, cmd: str) -> tuple[bytes, bytes]:
        """Send a setup command on a quiet channel: (its reply: CR ok, BEL refused, b"" none; the bytes after it)."""
        port.write(cmd.encode() + b"\r")
        got = b""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            got += port.read(4096)
            i = min((k for k in (got.find(b"\r"), got.find(b"\a")) if k >= 0), default=-1)
            if i >= 0:
                return got[i:i + 1], got[i + 1:]
            time.sleep(0.005)
        return b"", got

    async def batch(self) -> list[Frame]:
        """The frames of the next chunk of bytes (waits for them); _Lost when the port goes away."""
        if self.pending:
            data, self.pending = self.pending, b""
            return list(self.reader.feed(data))
        loop = asyncio.get_running_loop()
        fd = self.port.fileno()
        ready = asyncio.Event()
        loop.add_reader(fd, ready.set)
        try:
            await ready.wait()
        finally:
            loop.remove_reader(fd)  # level-triggered: off while decoding and coalescing
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return []
        except OSError as e:
            raise _Lost(f"{self.port.port}: {e.strerror or e}") from None
        if not data:
            raise _Lost(f"{self.port.port}: end of stream")
        return list(self.reader.feed(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.port.write(b"C\r")  # close the channel (while the adapter is still there)
        with contextlib.suppress(Exception):
            self.port.close()


class _SlcanStream:
    """slcan lines on an injected byte transport (a simulated bus): the adapter's stream, no set-up."""

    def __init__(self, transport: ByteTransport) -> None:
        self.transport = transport
        self.reader = SlcanReader()
        self.errors = self.reader.errors
        self.where = transport.name

    async def batch(self) -> list[Frame]:
        try:
            data = await self.transport.read(65536)
        except TransportClosed as e:
            raise _Lost(str(e)) from None
        return list(self.reader.feed(data))

    def close(self) -> None:
        """Nothing to undo on the line; the transport is closed by `aclose`."""

    async def aclose(self) -> None:
        await self.transport.close()


class _Socketcan:
    """An open python-can bus; a reader thread receives, the loop takes batches."""

    def __init__(self, bus: can.BusABC, where: str) -> None:
        self.bus = bus
        self.where = where
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._inbox: list[can.Message] = []
        self._lost: list[str] = []
        self._stop = threading.Event()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read, name=f"can-{where}", daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, channel: str, interface: str = "socketcan") -> _Socketcan:
        import can

        try:
            bus = await asyncio.to_thread(can.Bus, interface=interface, channel=channel, receive_own_messages=False)
        except (can.CanError, OSError, ValueError) as e:
            raise _Lost(f"cannot open {channel}: {e}") from None
        return cls(bus, f"{interface} {channel}")

    def _read(self) -> None:
        import can

        while not self._stop.is_set():
            try:
                msg = self.bus.recv(RECV_TIMEOUT)
            except (can.CanError, OSError) as e:
                self._lost.append(str(e) or type(e).__name__)
                break
            except Exception as e:  # anything else from a backend: reopen rather than die silently
                self._lost.append(f"{type(e).__name__}: {e}")
                break
            if msg is None:
                continue
            with self._lock:
                self._inbox.append(msg)
                first = len(self._inbox) == 1
            if first:
                self._loop.call_soon_threadsafe(self._wake.set)
        self._loop.call_soon_threadsafe(self._wake.set)

    async def batch(self) -> list[Frame]:
        await self._wake.wait()
        self._wake.clear()
        with self._lock:
            out: list[Frame] = list(self._inbox)
            self._inbox.clear()
        if not out and self._lost:
            raise _Lost(self._lost[0])
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(RECV_TIMEOUT * 4)
        with contextlib.suppress(Exception):
            self.bus.shutdown()


class CanDriver(Driver):
    """Frames of the DBC's (selected) messages -> one reading per frame with the signals due."""

    name = "can"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "serial"
    Options: ClassVar[type[BaseModel]] = CanOptions
    path_options: ClassVar[tuple[str, ...]] = ("dbc",)
    default_baud: ClassVar[int] = 115200  # the adapter's tty; USB CDC adapters (CANable) ignore it
    default_expected_interval = 120.0  # every signal is re-sent at least every max_interval (60 s)
    reopen_backoff_max: ClassVar[float] = 2.0
    injected_transport: ClassVar[bool] = True

    def __init__(self, device: DeviceConfig, ctx: DeviceContext) -> None:
        super().__init__(device, ctx)
        self.frames = 0

    @classmethod
    def transport_problems(cls, device: DeviceConfig) -> list[tuple[str, str]]:
        problems = super().transport_problems(device)
        opts = device.options
        if opts.get("interface") == "socketcan":
            problems = [(k, m) for k, m in problems if k != "port"]
            for key in ("port", "baud"):
                if key in device.model_fields_set:
                    problems.append((key, "not used with interface = \"socketcan\" (it reads `channel`)"))
            if not opts.get("channel"):
                problems.append(("channel", "required with interface = \"socketcan\" (e.g. \"can0\")"))
            for key in ("bitrate", "listen_only", "open_delay"):
                if key in opts:
                    problems.append((key, "not used with socketcan: set bitrate and listen-only on the interface "
                                          "(`ip link set can0 type can bitrate 500000 listen-only on`)"))
        elif "channel" in opts:
            problems.append(("channel", "not used with interface = \"slcan\" (it reads `port`)"))
        return problems

    @classmethod
    def schema_rules(cls) -> dict[str, Any]:
        return {"if": {"properties": {"interface": {"const": "socketcan"}}, "required": ["interface"]},
                "then": {"required": ["channel"]}, "else": {"required": ["port"]}}

    @classmethod
    def check_device(cls, device: DeviceConfig) -> list[tuple[str, str]]:
        problems = super().check_device(device)
        o = CanOptions.model_validate(device.options)
        try:
            build_plans(load_dbc(o.dbc), o)
        except DbcError as e:
            problems.append((e.key, str(e)))
        return problems

    async def _open(self) -> _Slcan | _Socketcan | _SlcanStream:
        o: CanOptions = self.options
        if self.ctx.open_transport is not None:
            try:
                return _SlcanStream(await self.ctx.open_transport())
            except TransportClosed as e:
                raise _Lost(str(e)) from None
        if o.interface == "socketcan":
            assert o.channel is not None
            return await _Socketcan.open(o.channel)
        assert self.device.port is not None
        opening = asyncio.ensure_future(asyncio.to_thread(
            _Slcan.open, self.device.port, self.device.baud or self.default_baud, o))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:  # stopping while the thread still opens: close what it opens
            def close(f: asyncio.Future[_Slcan]) -> None:
                if not f.cancelled() and f.exception() is None:
                    f.result().close()

            opening.add_done_callback(close)
            raise

    async def run(self) -> None:
        decoder = CanDecoder(load_dbc(self.options.dbc), self.options)
        backoff = Backoff(0.1, self.reopen_backoff_max)
        while True:
            try:
                link = await self._open()
            except _Lost as e:
                self.ctx.set_link("disconnected", str(e))
                await asyncio.sleep(backoff.next())
                continue
            log.info("%s: opened %s", self.device.id, link.where)
            self.ctx.set_link("connected", link.where)
            backoff.reset()
            try:
                await self._pump(link, decoder)
            except _Silent as e:
                log.warning("%s: bus silent: %s; reopening the channel", self.device.id, e)
                self.ctx.count_error("silent")
            except _Lost as e:
                log.warning("%s: bus lost: %s; reopening", self.device.id, e)
                self.ctx.set_link("disconnected", str(e))
            finally:
                if isinstance(link, _SlcanStream):
                    await link.aclose()
                else:
                    await asyncio.to_thread(link.close)
            await asyncio.sleep(backoff.next())

    async def _pump(self, link: _Slcan | _Socketcan | _SlcanStream, decoder: CanDecoder) -> None:
        """Decode batches until the link is lost (raises _Lost) or the task is cancelled."""
        opened = time.monotonic()
        warned = False
        frames_before = self.frames
        seen = link.errors.copy()
        while True:
            flowing = self.frames > frames_before
            try:
                async with asyncio.timeout(BUS_SILENT if flowing else None if warned else SILENT_WARNING):
                    batch = await link.batch()
                    while not batch:  # replies, noise: keep waiting within the same silence window
                        self.ctx.deliver([], link.errors, seen)
                        batch = await link.batch()
            except TimeoutError:
                if flowing:
                    raise _Silent(f"no frame for {BUS_SILENT:.0f} s after traffic (bus-off, or the bus went to "
                                  "sleep)") from None
                warned = True
                hint = ("; an adapter without the slcan `L` command needs listen_only = false"
                        if self.options.interface == "slcan" and self.options.listen_only else "")
                log.warning("%s: no CAN frame in %.0f s since opening %s: check the bitrate, CAN_H/CAN_L wiring "
                            "and termination%s", self.device.id, time.monotonic() - opened, link.where, hint)
                continue
            self._deliver(batch, decoder)
            self.ctx.deliver([], link.errors, seen)
            await asyncio.sleep(COALESCE)

    def _deliver(self, batch: list[Frame], decoder: CanDecoder) -> None:
        now = time.monotonic()
        ts = time.time()
        before = decoder.errors.copy()
        for f in batch:
            values = decoder.decode(f, now)
            if values:
                self.ctx.emit(values, ts=getattr(f, "timestamp", None) or ts)
        self.frames += len(batch)
        self.ctx.deliver([], decoder.errors, before)
