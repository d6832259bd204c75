"""`modbus` and `senseair_s8` drivers: a Modbus RTU master polling a register map.

Every poll reads the planned blocks (drivers/modbus/protocol.py) and emits one reading with the
values that arrived. A timeout counts "timeout", a garbled or bad-CRC reply "crc", an exception
reply "exception"; after `offline_after` consecutive polls without any reply the link is reported
"disconnected" (and "connected" again on the next reply). A vanished port is reopened with backoff.

The master is the project's own (`RtuMaster`: the frames of drivers/modbus/protocol.py over the
serial transport every serial driver uses), not pymodbus' client: a request is one write and its
reply one or two reads of the expected length, where pymodbus' serial transport waited for a
write-ready event before every write and ran each request as a task under `wait_for` (8 event-loop
iterations per poll against 3; benchmarks.load, BENCHMARKS.md "CPU at 10 x 1 Hz"). It also reads
through any injected transport: a `sim` device answers without a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import Driver
from drivers.modbus.protocol import (
    S8_REGISTERS,
    Block,
    Duration,
    ModbusOptions,
    ModbusReplyError,
    Register,
    crc16,
    decode_block,
    parse_reply,
    plan_reads,
    read_request,
    with_crc,
)
from drivers.transport.serialport import SerialPort, SerialSettings
from edge_common.backoff import Backoff
from edge_common.errors import TransportClosed
from edge_common.ticks import next_tick, sleep_until

if TYPE_CHECKING:
    from drivers.transport import ByteTransport, Opener
    from edge_common.device import DeviceConfig

log = logging.getLogger(__name__)

SCD30_REGISTERS = (
    Register(quantity="co2", address=0x28, function=3, type="float32", unit="ppm"),
    Register(quantity="temperature", address=0x2A, function=3, type="float32", unit="°C"),
    Register(quantity="humidity", address=0x2C, function=3, type="float32", unit="%RH"),
)
SCD30_START_CONTINUOUS = 0x0036  # write the ambient pressure in mbar, 0 = no compensation
STRAY_QUIET = 0.05  # after a failed exchange: bytes of a late reply are read and dropped until this quiet


class _Failed(Exception):
    def __init__(self, kind: str, detail: str, code: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.code = code  # the exception code of an exception reply


ILLEGAL_DATA_ADDRESS = 2


def _split(block: Block) -> list[Block]:
    """`block` as reads without the unmapped words between its registers (several when it had gaps)."""
    if block.count <= sum(r.width for r in block.members):
        return [block]
    return plan_reads(block.members, max_gap=0)


def _reply_length(request: bytes, rx: bytes | bytearray) -> int | None:
    """How long the reply that starts `rx` is, once its first bytes tell (None: not yet)."""
    if len(rx) < 3:
        return None
    if rx[1] == request[1] | 0x80:
        return 5  # slave, function | 0x80, exception code, CRC
    if request[1] in (3, 4):
        return 5 + rx[2]  # slave, function, byte count, data, CRC
    return len(request)  # a write (function 6) is answered by its echo


def check_reply(request: bytes, reply: bytes) -> list[int]:
    """The words of a whole reply to `request` (a write's echo: []); _Failed crc|exception|malformed."""
    if len(reply) < 5 or crc16(reply[:-2]) != int.from_bytes(reply[-2:], "little"):
        raise _Failed("crc", f"bad CRC or cut short: {reply[:8].hex()}")
    if reply[1] == request[1] | 0x80:
        raise _Failed("exception", f"exception reply {reply[2]}", reply[2])
    if request[1] not in (3, 4):
        if reply != request:
            raise _Failed("malformed", f"unexpected reply {reply[:8].hex()}")
        return []
    try:
        return parse_reply(request, reply)
    except ModbusReplyError as e:
        raise _Failed(e.kind, str(e)) from None


class RtuMaster:
    """Modbus RTU requests over a byte transport: one write, then reads until the reply is whole or
    `timeout` passes. TransportClosed when the port goes away."""

    def __init__(self, port: ByteTransport, timeout: float) -> None:
        self._port, self._timeout = port, timeout
        self._rx = bytearray()
        self._stray = False  # a failed exchange may leave a late reply on the line

    async def exchange(self, request: bytes) -> list[int]:
        """Send `request`, return the words of its reply; _Failed timeout|crc|exception|malformed."""
        if self._stray:
            await self._drop_stray()
        rx = self._rx
        rx.clear()
        await self._port.write(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            while (n := _reply_length(request, rx)) is None or len(rx) < n:
                try:
                    async with asyncio.timeout_at(deadline):
                        rx += await self._port.read()
                except TimeoutError:
                    raise _Failed("crc" if rx else "timeout",
                                  f"reply cut short: {rx[:8].hex()}" if rx else "no reply") from None
            return check_reply(request, bytes(rx[:n]))
        except _Failed:
            self._stray = True
            raise

    async def _drop_stray(self) -> None:
        self._stray = False
        while True:
            try:
                async with asyncio.timeout(STRAY_QUIET):
                    await self._port.read()
            except TimeoutError:
                return


class ModbusDriver(Driver):
    """Generic Modbus RTU slave; the register map comes from the device config."""

    name = "modbus"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "serial"
    Options: ClassVar[type[BaseModel]] = ModbusOptions
    default_baud: ClassVar[int] = 9600
    reopen_backoff_max: ClassVar[float] = 2.0
    injected_transport: ClassVar[bool] = True

    @classmethod
    def check_device(cls, device: DeviceConfig) -> list[tuple[str, str]]:
        problems = super().check_device(device)
        if cls is ModbusDriver:
            o = ModbusOptions.model_validate(device.options)
            if not o.registers and o.preset is None:
                problems.append(("registers", "at least one register (or a preset) is required"))
            names = [r.quantity for r in o.registers]
            for i, r in enumerate(o.registers):
                if names.index(r.quantity) != i:
                    problems.append((f"registers[{i}].quantity", f"duplicate quantity {r.quantity!r}"))
        return problems

    # -- what to poll -------------------------------------------------------------------------
    def registers(self) -> tuple[Register, ...]:
        o = self.options
        regs = tuple(o.registers)
        if getattr(o, "preset", None) == "scd30":
            regs = SCD30_REGISTERS + regs
        return regs

    def slave(self) -> int:
        o = self.options
        if getattr(o, "preset", None) == "scd30" and "slave" not in o.model_fields_set:
            return 0x61
        return int(o.slave)

    def baud(self) -> int:
        if self.device.baud:
            return self.device.baud
        return 19200 if getattr(self.options, "preset", None) == "scd30" else self.default_baud

    async def on_connect(self, master: RtuMaster) -> None:
        """Hook after the port opened (SCD30: start continuous measurement)."""
        if getattr(self.options, "preset", None) == "scd30":
            request = with_crc(bytes([self.slave(), 6]) + SCD30_START_CONTINUOUS.to_bytes(2, "big") + bytes(2))
            try:
                await master.exchange(request)
            except _Failed as f:
                self.ctx.count_error(f.kind)

    # -- I/O ----------------------------------------------------------------------------------
    def opener(self) -> Opener:
        """The device context's transport if it injects one (a `sim` device), else the serial port."""
        if self.ctx.open_transport is not None:
            return self.ctx.open_transport
        d = self.device
        assert d.port is not None
        settings = SerialSettings(port=d.port, baud=self.baud(), parity=d.parity, stopbits=d.stopbits,
                                  bytesize=d.bytesize)
        return lambda: SerialPort.open(settings)

    async def _read(self, master: RtuMaster, block: Block) -> list[int]:
        words = await master.exchange(read_request(self.slave(), block.function, block.address, block.count))
        if len(words) < block.count:
            raise _Failed("malformed", f"{len(words)} of {block.count} registers")
        return words

    async def run(self) -> None:
        blocks = plan_reads(self.registers())
        if not blocks:
            raise ValueError("no registers to poll")
        o = self.options
        backoff = Backoff(0.1, self.reopen_backoff_max)
        open_transport = self.opener()
        while True:
            try:
                port = await open_transport()
            except TransportClosed as e:
                log.debug("%s: open failed: %s", self.device.id, e)
                self.ctx.set_link("disconnected", f"cannot open {self.device.port}")
                await asyncio.sleep(backoff.next())
                continue
            log.info("%s: opened %s at %d baud (slave %d)", self.device.id, port.name, self.baud(), self.slave())
            self.ctx.set_link("connected", port.name)
            backoff.reset()
            try:
                await self._poll_loop(RtuMaster(port, o.timeout), port.name, blocks, o.poll_interval,
                                      o.offline_after)
            except TransportClosed as e:
                log.warning("%s: port lost: %s; reopening", self.device.id, e)
                self.ctx.set_link("disconnected", str(e))
            finally:
                await port.close()
            await asyncio.sleep(backoff.next())

    async def _poll_loop(self, master: RtuMaster, where: str, blocks: list[Block],
                         interval: float, offline_after: int) -> None:
        await self.on_connect(master)
        failures = 0
        while True:
            t0 = asyncio.get_running_loop().time()
            values: dict[str, float | int | str | bool] = {}
            answered = False
            last = ""
            i = 0
            while i < len(blocks):
                block = blocks[i]
                i += 1
                try:
                    words = await self._read(master, block)
                except _Failed as f:
                    self.ctx.count_error(f.kind)
                    last = f"{f.kind}: {f}"
                    answered = answered or f.kind == "exception"
                    parts = _split(block) if f.code == ILLEGAL_DATA_ADDRESS else [block]
                    if len(parts) > 1:
                        # Many devices refuse reads that span unmapped words: read around the gaps
                        # from now on (this poll included).
                        log.info("%s: slave refuses reading %d registers from %d (illegal data address); "
                                 "reading them in %d requests", self.device.id, block.count, block.address,
                                 len(parts))
                        i -= 1
                        blocks[i:i + 1] = parts
                    continue
                answered = True
                values.update(decode_block(block, words))
            if values:
                self.ctx.emit(values)
            if answered:
                failures = 0
                self.ctx.set_link("connected", where)
            else:
                failures += 1
                if failures >= offline_after:
                    self.ctx.set_link("disconnected", f"slave {self.slave()} silent for {failures} polls ({last})")
            # The next poll on the shared grid (a multiple of `interval` on the loop clock): it wakes
            # with the agent's other periodic work instead of on a phase of its own.
            # A poll that overran its interval is followed by the next one at once, as before.
            await sleep_until(next_tick(interval, t0))


class SenseairS8Options(BaseModel):
    """Keys of a `senseair_s8` device (the register map is fixed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 0xFE is the S8's "any address": fine for one sensor per port.
    slave: int = Field(default=0xFE, ge=0, le=255)
    poll_interval: Duration = 4.0  # the S8 measures every 2 s
    timeout: Duration = 1.0
    offline_after: int = Field(default=3, ge=1, le=1000)


class SenseairS8Driver(ModbusDriver):
    """Senseair S8 CO2: input register IR4 (0-based address 3) = CO2 in ppm; 9600 8N1."""

    name = "senseair_s8"
    Options: ClassVar[type[BaseModel]] = SenseairS8Options
    default_baud = 9600
    default_expected_interval = 30.0

    def registers(self) -> tuple[Register, ...]:
        return S8_REGISTERS
