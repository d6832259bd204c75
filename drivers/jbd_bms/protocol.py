"""JBD / "Xiaoxiang" smart BMS protocol: frames, basic info (0x03) and cell voltages (0x04). Pure, no I/O.

Frame: ``DD`` register status length data checksum_hi checksum_lo ``77`` from the BMS, ``DD A5``
register length data checksum ``77`` to it (``DD 5A`` would be a write: never sent by the
gateway); checksum = 0x10000 - the sum of the bytes from status (or register) through the data.
Basic info (JBD register map, as in the bms-tools documentation and syssi/esphome-jbd-bms):
pack voltage u16 10 mV, current s16 10 mA (negative = discharging), remaining and nominal
capacity u16 10 mAh, cycles u16, production date, balance bits (2 x u16, cells 1-16 and 17-32),
protection bits u16, version, state of charge %, FET bits (bit 0 charge, bit 1 discharge), cell
count, NTC count, NTC temperatures u16 in 0.1 K (°C = (raw - 2731) / 10). Cell voltages: u16 mV each.
Replies may arrive in pieces (BLE notifications of 20 bytes): the stream parser reassembles them.
"""

from __future__ import annotations

from drivers.base import FramedProtocol
from edge_common.errors import DriverError

Values = dict[str, float | int | str | bool]

START, END = 0xDD, 0x77
READ, WRITE = 0xA5, 0x5A
BASIC_INFO, CELL_VOLTAGES = 0x03, 0x04

# Protection status bits (bit 0 first); bits the register map leaves undefined get "unknown_bit_N".
PROTECTIONS: tuple[str, ...] = (
    "cell_overvoltage", "cell_undervoltage", "pack_overvoltage", "pack_undervoltage",
    "charge_overtemperature", "charge_undertemperature", "discharge_overtemperature", "discharge_undertemperature",
    "charge_overcurrent", "discharge_overcurrent", "short_circuit", "frontend_ic_error", "fet_software_lock",
    "charge_timeout", "unknown_bit_14", "unknown_bit_15",
)


def checksum(body: bytes) -> int:
    """0x10000 - sum, 16 bits."""
    return (0x10000 - sum(body)) & 0xFFFF


def _frame(head: int, body: bytes) -> bytes:
    return bytes([START, head]) + body + checksum(body).to_bytes(2, "big") + bytes([END])


def read_request(register: int) -> bytes:
    """A read request for `register` (the only kind of frame the gateway sends)."""
    return _frame(READ, bytes([register, 0]))


BASIC_INFO_REQUEST = read_request(BASIC_INFO)  # DD A5 03 00 FF FD 77
CELL_VOLTAGES_REQUEST = read_request(CELL_VOLTAGES)  # DD A5 04 00 FF FC 77


def reply(register: int, data: bytes, status: int = 0) -> bytes:
    """A BMS reply frame (simulator, tests)."""
    return _frame(register, bytes([status, len(data)]) + data)


def protection_names(bits: int) -> str:
    """The set protection flags by name, comma-separated ("" when none)."""
    return ",".join(name for i, name in enumerate(PROTECTIONS) if bits >> i & 1)


class JbdError(DriverError, ValueError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def decode_basic_info(data: bytes) -> Values:
    """The quantities of a register 0x03 reply's data."""
    if len(data) < 23:
        raise JbdError("short", f"basic info of {len(data)} bytes (at least 23 expected)")
    def u16(i: int) -> int:
        return data[i] << 8 | data[i + 1]

    voltage = u16(0) / 100
    raw_current = u16(2)
    current = (raw_current - 0x10000 if raw_current & 0x8000 else raw_current) / 100
    ntc = data[22]
    if len(data) < 23 + 2 * ntc:
        raise JbdError("short", f"basic info announces {ntc} temperatures in {len(data)} bytes")
    out: Values = {
        "voltage": voltage,
        "current": current,
        "power": round(voltage * current, 2),
        "remaining_capacity": u16(4) / 100,
        "nominal_capacity": u16(6) / 100,
        "cycles": u16(8),
        "state_of_charge": data[19],
        "cell_count": data[21],
        "charge_fet": bool(data[20] & 1),
        "discharge_fet": bool(data[20] & 2),
        "protection": protection_names(u16(16)),
        "balancing": (u16(12) | u16(14)) != 0,
    }
    for i in range(ntc):
        out[f"temperature_{i + 1}"] = (u16(23 + 2 * i) - 2731) / 10
    return out


def decode_cell_voltages(data: bytes) -> Values:
    """The quantities of a register 0x04 reply's data (V)."""
    if not data or len(data) % 2:
        raise JbdError("malformed", f"cell voltages of {len(data)} bytes")
    mv = [data[i] << 8 | data[i + 1] for i in range(0, len(data), 2)]
    out: Values = {f"cell_voltage_{i + 1}": v / 1000 for i, v in enumerate(mv)}
    out["cell_voltage_min"] = min(mv) / 1000
    out["cell_voltage_max"] = max(mv) / 1000
    out["cell_voltage_delta"] = (max(mv) - min(mv)) / 1000
    return out


class JbdProtocol(FramedProtocol):
    """Feed bytes; returns the quantities of every basic-info and cell-voltage reply.

    Errors: "noise" (bytes before a start byte), "malformed" (bad end byte or data), "checksum",
    "truncated" (a frame cut short, dropped by `flush`), "status" (the BMS answered with an error),
    "short", "unsupported" (a reply for another register). Requests seen on the line are counted in
    `requests` (writes from another master in `writes`), not as frames.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.writes = 0

    starts, end = bytes([START]), END

    def header_len(self, first: int) -> int:
        return 4  # start, command/register, status, length

    def frame_len(self, buf: bytearray, head: int) -> int:
        return 4 + buf[3] + 3

    def checksum(self, frame: bytes, head: int) -> int:
        return checksum(frame[2:-3])

    def on_frame(self, raw: bytes, head: int, out: list[Values]) -> None:
        reg, data = raw[1], raw[4:-3]
        if reg == READ:
            self.requests += 1
            return
        if reg == WRITE:
            self.writes += 1
            return
        if raw[2] != 0:
            self.errors["status"] += 1
            return
        try:
            if reg == BASIC_INFO:
                values = decode_basic_info(data)
            elif reg == CELL_VOLTAGES:
                values = decode_cell_voltages(data)
            else:
                raise JbdError("unsupported", f"reply for register 0x{reg:02x}")
        except JbdError as e:
            self.errors[e.kind] += 1
            return
        self.frames += 1
        out.append(values)
