"""Nova Fitness SDS011 decoder and command builder: pure, incremental, resynchronising on 0xAA.

Sensor → host, 10 bytes: ``AA C0 p25lo p25hi p10lo p10hi id1 id2 sum AB`` (measurement) or
``AA C5 …`` (command reply); sum = low byte of the sum of the six data bytes.
pm2_5 = (p25lo + 256 * p25hi) / 10, pm10 likewise, in µg/m³ (Laser Dust Sensor Control Protocol V1.3).
Host → sensor, 19 bytes: ``AA B4`` + 15 data bytes (the last two are the device id, FF FF = all)
+ sum + ``AB``. Hand-written: the py-sds011 style libraries own the port and block.
"""

from __future__ import annotations

from drivers.base import StreamProtocol

HEAD, TAIL = 0xAA, 0xAB
DATA, REPLY, COMMAND = 0xC0, 0xC5, 0xB4
FRAME = 10


def _sum(data: bytes) -> int:
    return sum(data) & 0xFF


def data_frame(pm2_5_tenths: int, pm10_tenths: int, device_id: int = 0xA160) -> bytes:
    """A measurement frame (values in tenths of µg/m³, as on the wire)."""
    body = (pm2_5_tenths.to_bytes(2, "little") + pm10_tenths.to_bytes(2, "little")
            + device_id.to_bytes(2, "big"))
    return bytes([HEAD, DATA]) + body + bytes([_sum(body), TAIL])


def command(data: bytes, device_id: int = 0xFFFF) -> bytes:
    """A 19-byte host command; `data` is up to 13 bytes (zero padded)."""
    if len(data) > 13:
        raise ValueError("SDS011 command data is at most 13 bytes")
    body = data.ljust(13, b"\x00") + device_id.to_bytes(2, "big")
    return bytes([HEAD, COMMAND]) + body + bytes([_sum(body), TAIL])


def set_active_mode(device_id: int = 0xFFFF) -> bytes:
    """Report measurements continuously (factory default; stored in the sensor)."""
    return command(b"\x02\x01\x00", device_id)


def set_working_period(minutes: int, device_id: int = 0xFFFF) -> bytes:
    """Duty cycle: 0 = continuous, 1-30 = one measurement every N minutes (fan off between)."""
    if not 0 <= minutes <= 30:
        raise ValueError("working period must be 0..30 minutes")
    return command(bytes([0x08, 0x01, minutes]), device_id)


def set_work(device_id: int = 0xFFFF) -> bytes:
    """Wake the sensor (leave sleep mode)."""
    return command(b"\x06\x01\x01", device_id)


class Sds011Protocol(StreamProtocol):
    """Feed bytes; returns {pm2_5, pm10} (floats, µg/m³) per valid measurement frame."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self.replies = 0

    def feed(self, data: bytes) -> list[dict[str, float | int | str | bool]]:
        out: list[dict[str, float | int | str | bool]] = []
        buf = self._buf
        buf += data
        while buf:
            start = buf.find(HEAD)
            if start < 0:
                self.errors["noise"] += 1
                buf.clear()
                break
            if start > 0:
                self.errors["noise"] += 1
                del buf[:start]
            if len(buf) < 2:
                break
            if buf[1] not in (DATA, REPLY):
                self.errors["noise"] += 1
                del buf[:1]
                continue
            if len(buf) < FRAME:
                break
            raw = bytes(buf[:FRAME])
            if raw[9] != TAIL:
                self.errors["malformed"] += 1
                del buf[:1]
                continue
            if _sum(raw[2:8]) != raw[8]:
                self.errors["checksum"] += 1
                del buf[:1]
                continue
            del buf[:FRAME]
            if raw[1] == REPLY:
                self.replies += 1
                continue
            self.frames += 1
            out.append({
                "pm2_5": (raw[2] | raw[3] << 8) / 10,
                "pm10": (raw[4] | raw[5] << 8) / 10,
            })
        return out
