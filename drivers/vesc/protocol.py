"""VESC motor controller protocol: packet framing, COMM_GET_VALUES decoding. Pure, no I/O.

Framing (vedderb/bldc comm/packet.c): ``02 len payload crc_hi crc_lo 03`` for payloads of
1-255 bytes, ``03 len_hi len_lo payload crc 03`` for 255-512; CRC-16/XMODEM (poly 0x1021,
init 0) over the payload, everything big-endian. The first payload byte is the command id.

COMM_GET_VALUES (id 4) reply layout (comm/commands.c, FW 3.7 and later), field by field:
temp_fet int16/10, temp_motor int16/10, motor_current int32/100, input_current int32/100,
id int32/100, iq int32/100, duty int16/1000, erpm int32, v_in int16/10, amp_hours int32/1e4,
amp_hours_charged int32/1e4, watt_hours int32/1e4, watt_hours_charged int32/1e4,
tachometer int32, tachometer_abs int32, fault uint8 (54 payload bytes so far), then, on newer
firmware, pid_pos, controller_id, three MOSFET temperatures, vd, vq, status (74 bytes).
Replies are parsed by payload length: 54 and longer is that layout (the tail is not needed
here); exactly 56 is the layout before FW 3.7 (six MOSFET and a PCB temperature first, no
motor temperature, no id/iq). COMM_GET_VALUES_SELECTIVE (id 50) replies carry the same fields
selected by a 32-bit mask and are decoded too (another master on the line may ask for them).

The gateway only ever sends ``GET_VALUES_REQUEST``: nothing here can build a write command.
"""

from __future__ import annotations

import binascii
import math
import struct
from dataclasses import dataclass

from drivers.base import FramedProtocol
from edge_common.errors import DriverError

Values = dict[str, float | int | str | bool]

COMM_GET_VALUES = 4
COMM_GET_VALUES_SELECTIVE = 50
MAX_PAYLOAD = 512  # PACKET_MAX_PL_LEN of the firmware
END = 0x03

# mc_fault_code in vedderb/bldc datatypes.h, in enum order (FAULT_CODE_ prefix dropped).
FAULTS: tuple[str, ...] = (
    "NONE", "OVER_VOLTAGE", "UNDER_VOLTAGE", "DRV", "ABS_OVER_CURRENT", "OVER_TEMP_FET",
    "OVER_TEMP_MOTOR", "GATE_DRIVER_OVER_VOLTAGE", "GATE_DRIVER_UNDER_VOLTAGE", "MCU_UNDER_VOLTAGE",
    "BOOTING_FROM_WATCHDOG_RESET", "ENCODER_SPI", "ENCODER_SINCOS_BELOW_MIN_AMPLITUDE",
    "ENCODER_SINCOS_ABOVE_MAX_AMPLITUDE", "FLASH_CORRUPTION", "HIGH_OFFSET_CURRENT_SENSOR_1",
    "HIGH_OFFSET_CURRENT_SENSOR_2", "HIGH_OFFSET_CURRENT_SENSOR_3", "UNBALANCED_CURRENTS", "BRK",
    "RESOLVER_LOT", "RESOLVER_DOS", "RESOLVER_LOS", "FLASH_CORRUPTION_APP_CFG", "FLASH_CORRUPTION_MC_CFG",
    "ENCODER_NO_MAGNET", "ENCODER_MAGNET_TOO_STRONG", "PHASE_FILTER", "ENCODER_FAULT", "LV_OUTPUT_FAULT",
    "ENCODER_SLIP", "OVERSPEED", "UNDERSPEED", "ABS_OVERSPEED",
)


def fault_name(code: int) -> str:
    """The firmware's name of a fault code ("UNKNOWN_<n>" for codes newer than this table)."""
    return FAULTS[code] if code < len(FAULTS) else f"UNKNOWN_{code}"


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (the firmware's crc16)."""
    return binascii.crc_hqx(data, 0)


def frame(payload: bytes) -> bytes:
    """`payload` framed as the firmware sends it."""
    n = len(payload)
    if not 1 <= n <= MAX_PAYLOAD:
        raise ValueError(f"VESC payload must be 1..{MAX_PAYLOAD} bytes, got {n}")
    head = bytes([2, n]) if n <= 255 else bytes([3, n >> 8, n & 0xFF])
    return head + payload + crc16(payload).to_bytes(2, "big") + bytes([END])


GET_VALUES_REQUEST = frame(bytes([COMM_GET_VALUES]))  # 02 01 04 40 84 03


@dataclass(frozen=True, slots=True)
class Geometry:
    """Drive train: speed and distance from eRPM and the tachometer."""

    motor_poles: int  # magnets, not pole pairs
    gear_ratio: float  # motor turns per wheel turn (1 for a hub motor)
    wheel_diameter: float  # m

    def speed(self, erpm: int) -> float:
        """m/s (negative when reversing)."""
        wheel_rpm = erpm / (self.motor_poles / 2) / self.gear_ratio
        return round(wheel_rpm / 60 * math.pi * self.wheel_diameter, 3)

    def distance(self, tachometer_abs: int) -> float:
        """m travelled: the tachometer counts 6 steps per electrical turn, 3 * poles per motor turn."""
        turns = tachometer_abs / (3 * self.motor_poles) / self.gear_ratio
        return round(turns * math.pi * self.wheel_diameter, 3)


# (mask bit, quantity or None when not published, struct code, divisor; None: integer as is)
_FIELDS: tuple[tuple[int, str | None, str, float | None], ...] = (
    (0, "temperature_fet", "h", 10), (1, "temperature_motor", "h", 10),
    (2, "motor_current", "i", 100), (3, "input_current", "i", 100),
    (4, None, "i", 100), (5, None, "i", 100),  # id, iq
    (6, "duty", "h", 1000), (7, "erpm", "i", None), (8, "input_voltage", "h", 10),
    (9, "amp_hours", "i", 10000), (10, "amp_hours_charged", "i", 10000),
    (11, "watt_hours", "i", 10000), (12, "watt_hours_charged", "i", 10000),
    (13, "tachometer", "i", None), (14, "tachometer_abs", "i", None), (15, "fault", "B", None),
    (16, None, "i", 1e6), (17, None, "B", None), (18, None, "hhh", None),  # pid_pos, controller_id, MOSFET temps
    (19, None, "i", 1e3), (20, None, "i", 1e3), (21, None, "B", None),  # vd, vq, status
)
_CURRENT = struct.Struct(">" + "".join(f[2] for f in _FIELDS[:16]))  # 53 bytes after the id
_CURRENT_NAMES = [(name, div) for _, name, _, div in _FIELDS[:16]]
_LEGACY = struct.Struct(">7hiihihiiiiiiB")  # before FW 3.7: 55 bytes after the id
_LEGACY_NAMES: list[tuple[str | None, float | None]] = [
    ("temperature_fet", 10), *[(None, None)] * 6, ("motor_current", 100), ("input_current", 100),
    ("duty", 1000), ("erpm", None), ("input_voltage", 10), ("amp_hours", 10000), ("amp_hours_charged", 10000),
    ("watt_hours", 10000), ("watt_hours_charged", 10000), ("tachometer", None), ("tachometer_abs", None),
    ("fault", None),
]
_FIELD_SIZE = {bit: struct.calcsize(">" + code) for bit, _, code, _ in _FIELDS}


class VescError(DriverError, ValueError):
    """A frame that is valid on the wire but not a GET_VALUES reply this decoder understands."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _scale(names: list[tuple[str | None, float | None]], raw: tuple[int, ...]) -> Values:
    out: Values = {}
    for (name, div), v in zip(names, raw, strict=True):
        if name is None:
            continue
        if name == "fault":
            out[name] = fault_name(v)
        else:
            out[name] = v if div is None else v / div
    return out


def decode_values(payload: bytes, geometry: Geometry | None = None) -> Values:
    """The quantities of a COMM_GET_VALUES(_SELECTIVE) reply payload (id byte included)."""
    if not payload:
        raise VescError("malformed", "empty payload")
    cmd, n = payload[0], len(payload)
    if cmd == COMM_GET_VALUES:
        if n == 1 + _LEGACY.size:
            out = _scale(_LEGACY_NAMES, _LEGACY.unpack_from(payload, 1))
        elif n >= 1 + _CURRENT.size:
            out = _scale(_CURRENT_NAMES, _CURRENT.unpack_from(payload, 1))
        else:
            raise VescError("short", f"GET_VALUES reply of {n} bytes (at least {1 + _CURRENT.size} expected)")
    elif cmd == COMM_GET_VALUES_SELECTIVE:
        out = _selective(payload)
    else:
        raise VescError("unsupported", f"command {cmd} is not a GET_VALUES reply")
    if geometry is not None:
        if "erpm" in out:
            out["speed"] = geometry.speed(int(out["erpm"]))
        if "tachometer_abs" in out:
            out["distance"] = geometry.distance(int(out["tachometer_abs"]))
    return out


def _selective(payload: bytes) -> Values:
    if len(payload) < 5:
        raise VescError("short", "GET_VALUES_SELECTIVE reply without its mask")
    mask = int.from_bytes(payload[1:5], "big")
    pos, out = 5, {}
    for bit, name, code, div in _FIELDS:
        if not mask & (1 << bit):
            continue
        size = _FIELD_SIZE[bit]
        if pos + size > len(payload):
            raise VescError("short", f"GET_VALUES_SELECTIVE reply ends inside field {bit}")
        raw = struct.unpack_from(">" + code, payload, pos)
        pos += size
        if name is not None:
            out.update(_scale([(name, div)], raw))
    return out


class VescProtocol(FramedProtocol):
    """Feed bytes; returns the quantities of every GET_VALUES reply, resynchronising like the firmware.

    Errors: "noise" (bytes before a start byte), "malformed" (bad length or end byte), "checksum",
    "truncated" (a frame cut short, dropped by `flush`), "short" (reply with too few fields),
    "unsupported" (a valid frame of another command). Requests seen on the line are counted in
    `requests`, not as frames.
    """

    def __init__(self, geometry: Geometry | None = None) -> None:
        super().__init__()
        self.geometry = geometry
        self.requests = 0

    starts, end = b"\x02\x03", END

    def header_len(self, first: int) -> int:
        return first  # 2: one length byte, 3: two (payloads of 255 bytes and more)

    def frame_len(self, buf: bytearray, head: int) -> int | None:
        n = buf[1] if head == 2 else buf[1] << 8 | buf[2]
        if n == 0 or n > MAX_PAYLOAD or (head == 3 and n < 255):
            return None
        return head + n + 3

    def checksum(self, frame: bytes, head: int) -> int:
        return crc16(frame[head:-3])

    def on_frame(self, frame: bytes, head: int, out: list[Values]) -> None:
        payload = frame[head:-3]
        if payload == b"\x04" or (payload[0] == COMM_GET_VALUES_SELECTIVE and len(payload) == 5):
            self.requests += 1
            return
        try:
            values = decode_values(payload, self.geometry)
        except VescError as e:
            self.errors[e.kind] += 1
            return
        self.frames += 1
        out.append(values)


def encode_values(values: Values, controller_id: int = 0) -> bytes:
    """A full (74-byte) COMM_GET_VALUES reply frame carrying `values` (simulator, tests)."""

    def q(name: str, mul: float) -> int:
        return round(float(values.get(name, 0)) * mul)

    fault = values.get("fault", "NONE")
    code = FAULTS.index(str(fault)) if isinstance(fault, str) else int(fault)
    body = _CURRENT.pack(
        q("temperature_fet", 10), q("temperature_motor", 10), q("motor_current", 100), q("input_current", 100),
        0, q("motor_current", 100), q("duty", 1000), q("erpm", 1), q("input_voltage", 10),
        q("amp_hours", 10000), q("amp_hours_charged", 10000), q("watt_hours", 10000),
        q("watt_hours_charged", 10000), q("tachometer", 1), q("tachometer_abs", 1), code,
    )
    fet = q("temperature_fet", 10)
    tail = struct.pack(">iB3hiiB", 0, controller_id, fet, fet, fet, 0, 0, 0)
    return frame(bytes([COMM_GET_VALUES]) + body + tail)
