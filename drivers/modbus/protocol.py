"""Modbus RTU: register-map config, read planning, value decoding and RTU framing. Pure, no I/O.

The agent polls through its own RTU master (drivers/modbus/driver.py). This module
holds what must not depend on I/O: the register map (`Register`, validated pydantic models),
grouping registers into as few read requests as possible (`plan_reads`), turning the returned
16-bit words into values (`decode_block`), CRC-16/MODBUS framing (`read_request`, `reply`,
`parse_reply`) used by the master, the simulator and the probe, and `RtuSniffer`, a
resynchronising decoder of requests and replies seen on a bus.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.base import StreamProtocol
from edge_common.device import Duration as AnyDuration
from edge_common.errors import DriverError

Duration = Annotated[AnyDuration, Field(gt=0)]
RegType = Literal["int16", "uint16", "int32", "uint32", "float32"]
MAX_READ = 125  # registers per read request (Modbus spec)
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


class Register(BaseModel):
    """One value in the device's register map (address is the 0-based protocol address)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    address: int = Field(ge=0, le=65535)
    function: Literal[3, 4] = 3
    type: RegType = "uint16"
    word_order: Literal["big", "little"] = "big"
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    unit: str | None = None

    @property
    def width(self) -> int:
        return _WIDTH[self.type]


class ModbusOptions(BaseModel):
    """Keys of a `modbus` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slave: int = Field(default=1, ge=0, le=255)
    poll_interval: Duration = 10.0
    timeout: Duration = 1.0
    offline_after: int = Field(default=3, ge=1, le=1000)
    # A device preset fills registers (and defaults) for a known sensor: "scd30".
    preset: Literal["scd30"] | None = None
    registers: list[Register] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers from `address` with `function`, feeding `members`."""

    function: int
    address: int
    count: int
    members: tuple[Register, ...]


# Senseair S8: CO2 in input register 3 (here so the `sim` driver needs no driver module).
S8_REGISTERS = (Register(quantity="co2", address=3, function=4, type="int16", unit="ppm"),)


def plan_reads(registers: Sequence[Register], max_gap: int = 8) -> list[Block]:
    """Group registers into contiguous reads (gaps up to `max_gap` words are read and ignored)."""
    blocks: list[Block] = []
    for fn in (3, 4):
        regs = sorted((r for r in registers if r.function == fn), key=lambda r: r.address)
        cur: list[Register] = []
        start = end = 0
        for r in regs:
            r_end = r.address + r.width
            if cur and r.address <= end + max_gap and max(end, r_end) - start <= MAX_READ:
                cur.append(r)
                end = max(end, r_end)
                continue
            if cur:
                blocks.append(Block(fn, start, end - start, tuple(cur)))
            cur, start, end = [r], r.address, r_end
        if cur:
            blocks.append(Block(fn, start, end - start, tuple(cur)))
    return blocks


def decode_register(reg: Register, words: Sequence[int]) -> float | int | None:
    """The scaled value of `reg` from its words (big-endian bytes within each word); None if not finite."""
    w = [x & 0xFFFF for x in words[: reg.width]]
    if len(w) < reg.width:
        return None
    if reg.word_order == "little":
        w.reverse()
    raw_bytes = b"".join(x.to_bytes(2, "big") for x in w)
    raw: float | int
    if reg.type == "uint16":
        raw = w[0]
    elif reg.type == "int16":
        raw = struct.unpack(">h", raw_bytes)[0]
    elif reg.type == "uint32":
        raw = struct.unpack(">I", raw_bytes)[0]
    elif reg.type == "int32":
        raw = struct.unpack(">i", raw_bytes)[0]
    else:
        raw = struct.unpack(">f", raw_bytes)[0]
        if not math.isfinite(raw):
            return None
        raw = float(f"{raw:.7g}")  # the precision a float32 carries
    if reg.scale == 1.0 and reg.offset == 0.0:
        return raw
    v = raw * reg.scale + reg.offset
    return round(v, 9) if math.isfinite(v) else None


def decode_block(block: Block, words: Sequence[int]) -> dict[str, float | int | str | bool]:
    """Values of every member of `block` from the words the read returned."""
    out: dict[str, float | int | str | bool] = {}
    for reg in block.members:
        i = reg.address - block.address
        v = decode_register(reg, words[i : i + reg.width])
        if v is not None:
            out[reg.quantity] = v
    return out


# -- RTU framing (simulator, sim driver, probe) ----------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def read_request(slave: int, function: int, address: int, count: int) -> bytes:
    """An RTU read request (function 3 or 4)."""
    return with_crc(bytes([slave, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


def reply(slave: int, function: int, words: Sequence[int]) -> bytes:
    """An RTU read reply carrying `words`."""
    data = b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)
    return with_crc(bytes([slave, function, len(data)]) + data)


def exception_reply(slave: int, function: int, code: int) -> bytes:
    return with_crc(bytes([slave, function | 0x80, code]))


class ModbusReplyError(DriverError, ValueError):
    """A reply that is not a valid answer to the request (kind in .kind)."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


def parse_reply(request: bytes, data: bytes) -> list[int]:
    """The words of a read reply to `request`; ModbusReplyError (kind crc|exception|malformed)."""
    if len(request) < 6:
        raise ModbusReplyError("malformed", f"not a read request: {request.hex()}")
    slave, fn, count = request[0], request[1], int.from_bytes(request[4:6], "big")
    if len(data) >= 5 and data[0] == slave and data[1] == fn | 0x80:
        if crc16(data[:3]) != int.from_bytes(data[3:5], "little"):
            raise ModbusReplyError("crc", "bad CRC")
        raise ModbusReplyError("exception", f"exception code {data[2]}")
    want = 5 + 2 * count
    if len(data) != want or data[0] != slave or data[1] != fn or data[2] != 2 * count:
        raise ModbusReplyError("malformed", f"unexpected reply {data[:8].hex()}")
    if crc16(data[:-2]) != int.from_bytes(data[-2:], "little"):
        raise ModbusReplyError("crc", "bad CRC")
    return [int.from_bytes(data[3 + 2 * i : 5 + 2 * i], "big") for i in range(count)]


class RtuSniffer(StreamProtocol):
    """Listen to a Modbus RTU bus: decodes read requests (3/4) and their replies, resynchronising.

    Each reply yields {"slave", "function", and one key per register: "hr<addr>" / "ir<addr>"
    when the request was seen, else "word<i>"}. Requests alone yield nothing (counted in `requests`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._last_request: bytes | None = None
        self.requests = 0

    def feed(self, data: bytes) -> list[dict[str, float | int | str | bool]]:
        out: list[dict[str, float | int | str | bool]] = []
        buf = self._buf
        buf += data
        skipped = False
        while len(buf) >= 5:
            got = self._try_frame(buf, out)
            if got == 0:  # need more bytes for a candidate frame at 0
                break
            if got < 0:
                skipped = True
                del buf[:1]
                continue
            del buf[:got]
        if skipped:
            self.errors["noise"] += 1
        if len(buf) > 512:
            self.errors["noise"] += 1
            del buf[:-256]
        return out

    def _try_frame(self, buf: bytearray, out: list[dict[str, float | int | str | bool]]) -> int:
        """Bytes consumed by a valid frame at buf[0]; 0 = maybe, need more; -1 = no frame here."""
        fn = buf[1]
        if fn in (3, 4):
            # A request is 8 bytes; a reply is 5 + byte count. Try both (shortest valid wins).
            if len(buf) >= 8 and crc16(bytes(buf[:6])) == int.from_bytes(buf[6:8], "little"):
                self._last_request = bytes(buf[:8])
                self.requests += 1
                return 8
            n = buf[2]
            if n and n % 2 == 0 and n <= 250:
                if len(buf) < 5 + n:
                    return 0
                frame_ = bytes(buf[: 5 + n])
                if crc16(frame_[:-2]) == int.from_bytes(frame_[-2:], "little"):
                    self.frames += 1
                    out.append(self._values(frame_))
                    return 5 + n
            return -1 if len(buf) >= 8 else 0
        if fn in (0x83, 0x84):
            if crc16(bytes(buf[:3])) == int.from_bytes(buf[3:5], "little"):
                self.errors["exception"] += 1
                return 5
        return -1

    def _values(self, frame_: bytes) -> dict[str, float | int | str | bool]:
        slave, fn, n = frame_[0], frame_[1], frame_[2]
        words = [int.from_bytes(frame_[3 + 2 * i : 5 + 2 * i], "big") for i in range(n // 2)]
        v: dict[str, float | int | str | bool] = {"slave": slave, "function": fn}
        req = self._last_request
        if req is not None and req[0] == slave and req[1] == fn and int.from_bytes(req[4:6], "big") == len(words):
            base, prefix = int.from_bytes(req[2:4], "big"), ("hr" if fn == 3 else "ir")
            v.update({f"{prefix}{base + i}": w for i, w in enumerate(words)})
        else:
            v.update({f"word{i}": w for i, w in enumerate(words)})
        self._last_request = None
        return v


def probe_refine(samples: Sequence[dict[str, float | int | str | bool]]) -> tuple[str, str] | None:
    """`probe serial`: a master reading input register 3 (IR4, CO2) with function 4 is polling a Senseair S8."""
    if samples and all(g.get("function") == 4 and "ir3" in g for g in samples):
        return "senseair_s8", "Senseair S8 (Modbus RTU, CO2 in input register IR4)"
    return None
