"""OBD-II through an ELM327 adapter: the replies to mode 01 PID requests, and the PIDs the driver reads.

Pure. An ELM327 ends every reply with its `>` prompt; `Elm327Protocol` collects a reply, skips
`SEARCHING...`, counts `NO DATA`, `?` and the bus errors, and decodes the data lines (headers on,
`ATH1`; spaces on or off): CAN 11-bit (`7E8 03 41 0D 32`), CAN 29-bit (`18DAF110 03 41 0D 32`)
and the legacy protocols (`48 6B 10 41 0D 32 cs`: three header bytes, data, checksum).
Formulas from SAE J1979 as python-OBD implements them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.base import StreamProtocol
from edge_common.device import Duration as AnyDuration
from edge_common.model import Value

Duration = Annotated[AnyDuration, Field(gt=0, le=86400)]


@dataclass(frozen=True, slots=True)
class Pid:
    """A mode 01 PID: its quantity, payload length and formula (payload bytes -> canonical value)."""

    pid: int
    quantity: str
    length: int
    decode: Callable[[bytes], Value]
    unit: str


def _u16(b: bytes) -> int:
    return b[0] << 8 | b[1]


PIDS: dict[int, Pid] = {p.pid: p for p in (
    Pid(0x05, "coolant_temperature", 1, lambda b: b[0] - 40, "°C"),
    Pid(0x0C, "rpm", 2, lambda b: _u16(b) / 4, "rpm"),
    Pid(0x0D, "speed", 1, lambda b: round(b[0] / 3.6, 4), "m/s"),  # km/h on the wire
    Pid(0x42, "module_voltage", 2, lambda b: _u16(b) / 1000, "V"),
    Pid(0x5B, "pack_remaining_life", 1, lambda b: round(b[0] * 100 / 255, 2), "%"),  # hybrid/EV battery
)}
BY_NAME = {p.quantity: p.pid for p in PIDS.values()}
INIT = ("ATZ", "ATE0", "ATL0", "ATS0", "ATH1", "ATSP0")  # reset, echo off, no LF, no spaces, headers, auto protocol

# Replies that are not data: counted under these names
ERRORS = {
    "NO DATA": "no_data", "?": "refused", "CAN ERROR": "can_error", "BUS ERROR": "bus_error",
    "BUS BUSY": "bus_error", "FB ERROR": "bus_error", "DATA ERROR": "data_error", "<DATA ERROR": "data_error",
    "UNABLE TO CONNECT": "unable_to_connect", "STOPPED": "stopped", "BUFFER FULL": "buffer_full",
    "ACT ALERT": "adapter_error", "LV RESET": "adapter_error", "BUS INIT: ...ERROR": "bus_error",
}


class Obd2Options(BaseModel):
    """Keys of an `obd2` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Annotated[str, Field(pattern="^serial$")] = "serial"  # Bluetooth SPP adapters are rfcomm serial ports
    pids: list[int | str] = Field(default_factory=lambda: list[int | str](BY_NAME))
    poll_interval: Duration = 1.0
    timeout: Duration = 2.0  # per reply; the first one may take seconds while the adapter searches
    offline_after: int = Field(default=3, ge=1, le=1000)

    @field_validator("pids")
    @classmethod
    def _pids(cls, v: list[int | str]) -> list[int | str]:
        for p in v:
            if pid_number(p) is None:
                known = ", ".join(f"0x{k:02X} {q}" for q, k in BY_NAME.items())
                raise ValueError(f"unknown PID {p!r} (one of {known})")
        if not v:
            raise ValueError("at least one PID")
        return v


def pid_number(p: int | str) -> int | None:
    """0x0D, "0x0D", "13" or "speed" -> 13; None for a PID this driver does not decode."""
    if isinstance(p, str):
        if p in BY_NAME:
            return BY_NAME[p]
        try:
            p = int(p, 0)
        except ValueError:
            return None
    return p if p in PIDS else None


def request(pid: int) -> bytes:
    """The mode 01 request line for `pid`."""
    return f"01{pid:02X}\r".encode()


def parse_line(line: str) -> bytes | None:
    """The message bytes (mode, PID, payload) of one data line with headers, None if it is not one.

    CAN 11-bit: 3 hex header + PCI + data; CAN 29-bit: 8 hex header (18DA...) + PCI + data; legacy:
    3 header bytes + data (2-7 bytes) + checksum. Lengths are checked as python-OBD does.
    """
    tokens = line.split()
    h = "".join(tokens)
    if not h or any(c not in "0123456789ABCDEFabcdef" for c in h):
        return None
    if len(tokens) > 1:  # spaces on: the grouping tells the header apart, and every byte must be whole
        if any(len(t) != 2 for t in tokens[1:]) or len(tokens[0]) not in (2, 3, 8):
            return None
    if len(h) % 2:  # CAN 11-bit: an odd number of digits
        raw = bytes.fromhex(h[3:]) if len(h) > 3 else b""
        return _single_frame(raw)
    raw = bytes.fromhex(h)
    if h[:4].upper() == "18DA" and len(raw) >= 5:
        return _single_frame(raw[4:])
    if 6 <= len(raw) <= 11:  # legacy: header 3, data 2..7, checksum 1
        return raw[3:-1]
    return None


def _single_frame(raw: bytes) -> bytes | None:
    """The data of a CAN single frame (PCI = length, 1-7), None when the length does not match."""
    if len(raw) < 2 or raw[0] >> 4 != 0:
        return None
    n = raw[0] & 0x0F
    if n == 0 or n > 7 or len(raw) != n + 1:
        return None
    return raw[1:]


def decode_message(msg: bytes) -> dict[str, Value] | None:
    """A mode 01 reply (41 PID payload) as {quantity: value}; None when it is not one this driver reads."""
    if len(msg) < 2 or msg[0] != 0x41 or msg[1] not in PIDS:
        return None
    p = PIDS[msg[1]]
    if len(msg) < 2 + p.length:
        return None
    return {p.quantity: p.decode(msg[2:2 + p.length])}


class Elm327Protocol(StreamProtocol):
    """ELM327 replies (each ended by `>`) -> the values of the PIDs in them; one frame per reply."""

    max_reply = 4096

    def __init__(self) -> None:
        super().__init__()
        self._buf = b""
        self.replies: deque[list[str]] = deque(maxlen=32)  # the text lines of the latest replies (for the driver)

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        self._buf += data
        out: list[dict[str, Value]] = []
        while (i := self._buf.find(b">")) >= 0:
            reply, self._buf = self._buf[:i], self._buf[i + 1:]
            out += self._reply(reply)
        if len(self._buf) > self.max_reply:
            self.errors["overflow"] += 1
            self._buf = b""
        return out

    def _reply(self, raw: bytes) -> list[dict[str, Value]]:
        self.frames += 1
        text = raw.replace(b"\x00", b"").decode("ascii", "replace")
        lines = [ln.strip() for ln in text.replace("\n", "\r").split("\r") if ln.strip()]
        self.replies.append(lines)
        values: dict[str, Value] = {}
        for ln in lines:
            up = ln.upper()
            if up.startswith("SEARCHING"):
                continue
            if up in ERRORS or up.startswith(("BUS INIT", "ERR")):
                self.errors[ERRORS.get(up, "adapter_error")] += 1
                continue
            msg = parse_line(ln)
            if msg is None:
                if not up.startswith(("01", "AT", "OK", "ELM")):  # an echo, an OK, the banner
                    self.errors["malformed"] += 1
                continue
            v = decode_message(msg)
            if v is None:
                continue  # another mode or PID (e.g. a second ECU's reply to something else)
            for k, x in v.items():
                values.setdefault(k, x)  # the first ECU to answer (7E8, the engine) wins
        return [values] if values else []
