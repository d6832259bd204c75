"""`modbus` and `senseair_s8` drivers: a Modbus RTU master polling a register map (pymodbus).

Every poll reads the planned blocks (drivers/modbus/protocol.py) and emits one reading with the
values that arrived. A timeout counts "timeout", a garbled or bad-CRC reply "crc", an exception
reply "exception"; after `offline_after` consecutive polls without any reply the link is reported
"disconnected" (and "connected" again on the next reply). A vanished port is reopened with backoff.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import DeviceContext, Driver
from drivers.modbus.protocol import (
    S8_REGISTERS,
    Block,
    Duration,
    ModbusOptions,
    Register,
    decode_block,
    plan_reads,
)
from edge_common.backoff import Backoff

if TYPE_CHECKING:
    from edge_common.device import DeviceConfig

log = logging.getLogger(__name__)
# pymodbus logs every timeout at ERROR; the driver counts them instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_CLIENT_PARAMS = inspect.signature(AsyncModbusSerialClient.__init__).parameters
_ID_KW = "device_id" if "device_id" in inspect.signature(
    AsyncModbusSerialClient.read_input_registers).parameters else "slave"

SCD30_REGISTERS = (
    Register(quantity="co2", address=0x28, function=3, type="float32", unit="ppm"),
    Register(quantity="temperature", address=0x2A, function=3, type="float32", unit="°C"),
    Register(quantity="humidity", address=0x2C, function=3, type="float32", unit="%RH"),
)
SCD30_START_CONTINUOUS = 0x0036  # write the ambient pressure in mbar, 0 = no compensation


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


class ModbusDriver(Driver):
    """Generic Modbus RTU slave; the register map comes from the device config."""

    name = "modbus"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "serial"
    Options: ClassVar[type[BaseModel]] = ModbusOptions
    default_baud: ClassVar[int] = 9600
    reopen_backoff_max: ClassVar[float] = 2.0

    def __init__(self, device: DeviceConfig, ctx: DeviceContext) -> None:
        super().__init__(device, ctx)
        self._rx = bytearray()

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

    def _id_kw(self) -> dict[str, Any]:
        return {_ID_KW: self.slave()}  # pymodbus < 3.10 calls it `slave`, later `device_id`

    def baud(self) -> int:
        if self.device.baud:
            return self.device.baud
        return 19200 if getattr(self.options, "preset", None) == "scd30" else self.default_baud

    async def on_connect(self, client: AsyncModbusSerialClient) -> None:
        """Hook after the port opened (SCD30: start continuous measurement)."""
        if getattr(self.options, "preset", None) == "scd30":
            try:
                await client.write_register(SCD30_START_CONTINUOUS, 0, **self._id_kw())
            except ModbusIOException:
                self.ctx.count_error("timeout")

    # -- I/O ----------------------------------------------------------------------------------
    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx.clear()
        else:
            self._rx += data
        return data

    def _client(self) -> AsyncModbusSerialClient:
        d = self.device
        assert d.port is not None
        kw: dict[str, Any] = {
            "baudrate": self.baud(), "bytesize": d.bytesize, "parity": d.parity, "stopbits": d.stopbits,
            "timeout": self.options.timeout, "retries": 0,
        }
        if "reconnect_delay" in _CLIENT_PARAMS:
            kw["reconnect_delay"] = 0  # reopening is ours (with backoff and link state)
        if "trace_packet" in _CLIENT_PARAMS:
            kw["trace_packet"] = self._trace
        return AsyncModbusSerialClient(d.port, **kw)

    async def _read(self, client: AsyncModbusSerialClient, block: Block) -> list[int]:
        fn = client.read_holding_registers if block.function == 3 else client.read_input_registers
        self._rx.clear()
        try:
            rr = await fn(block.address, count=block.count, **self._id_kw())
        except ConnectionException:
            raise
        except ModbusIOException as e:
            if not client.connected:
                raise ConnectionException(str(e)) from e
            raise _Failed("crc" if self._rx else "timeout", str(e)) from None
        except ModbusException as e:
            raise _Failed("crc" if self._rx else "timeout", str(e)) from None
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise _Failed("exception", f"exception reply {code if code is not None else '?'}", code)
        regs = list(rr.registers)
        if len(regs) < block.count:
            raise _Failed("malformed", f"{len(regs)} of {block.count} registers")
        return regs

    async def run(self) -> None:
        blocks = plan_reads(self.registers())
        if not blocks:
            raise ValueError("no registers to poll")
        o = self.options
        port = self.device.port
        backoff = Backoff(0.1, self.reopen_backoff_max)
        while True:
            client = self._client()
            try:
                opened = await client.connect()
            except Exception as e:  # pyserial raises on absent ports in some versions
                log.debug("%s: open failed: %s", self.device.id, e)
                opened = False
            if not opened:
                client.close()
                self.ctx.set_link("disconnected", f"cannot open {port}")
                await asyncio.sleep(backoff.next())
                continue
            log.info("%s: opened %s at %d baud (slave %d)", self.device.id, port, self.baud(), self.slave())
            self.ctx.set_link("connected", str(port))
            backoff.reset()
            try:
                await self._poll_loop(client, blocks, o.poll_interval, o.offline_after)
            except ConnectionException as e:
                log.warning("%s: port lost: %s; reopening", self.device.id, e)
                self.ctx.set_link("disconnected", f"{port}: {e}")
            finally:
                client.close()
            await asyncio.sleep(backoff.next())

    async def _poll_loop(self, client: AsyncModbusSerialClient, blocks: list[Block],
                         interval: float, offline_after: int) -> None:
        await self.on_connect(client)
        failures = 0
        while True:
            t0 = time.monotonic()
            values: dict[str, float | int | str | bool] = {}
            answered = False
            last = ""
            i = 0
            while i < len(blocks):
                block = blocks[i]
                i += 1
                if not client.connected:
                    raise ConnectionException("port closed")
                try:
                    words = await self._read(client, block)
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
                self.ctx.set_link("connected", str(self.device.port))
            else:
                failures += 1
                if failures >= offline_after:
                    self.ctx.set_link("disconnected", f"slave {self.slave()} silent for {failures} polls ({last})")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


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
