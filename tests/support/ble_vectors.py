"""Raw advertisement payloads from published vectors and format specs (independent of our decoders)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
ENV_SENSING_UUID = "0000181a-0000-1000-8000-00805f9b34fb"  # pvvx / ATC custom firmware

# Ruuvi RAWv2 (data format 5) "valid data" vector from docs.ruuvi.com:
# 24.3 °C, 53.49 %, 1000.44 hPa, acc (0.004, -0.004, 1.036) g, 2.977 V, +4 dBm, movement 66, seq 205.
RUUVI_DF5_VALID = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")

# BTHome v2 spec examples: plain 25.06 °C / 50.55 %, and the same encrypted with the spec's key.
BTHOME_PLAIN = bytes.fromhex("4002ca0903bf13")
BTHOME_KEY = "231d39c1d7cc1ab1aee224cd096db932"
BTHOME_ENC_MAC = "54:48:E6:8F:80:A5"
BTHOME_ENCRYPTED = bytes.fromhex("41a47266c95f730011223378237214")


@dataclass(frozen=True)
class Adv:
    """What one advertising event carries (the scripted BlueZ's `advertise` kwargs)."""

    name: str | None = None
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()

    def kwargs(self) -> dict[str, object]:
        return {"name": self.name, "manufacturer_data": self.manufacturer_data,
                "service_data": self.service_data, "service_uuids": self.service_uuids}


def ruuvi_df5(temp_c: float, humidity: float, pressure_hpa: float, seq: int, mac: str) -> bytes:
    """A RAWv2 frame per the Ruuvi spec (acceleration 0, 3.0 V, +4 dBm)."""
    power = ((3000 - 1600) << 5) | ((4 + 40) // 2)
    return struct.pack(">BhHHhhhHBH", 5, round(temp_c / 0.005), round(humidity / 0.0025),
                       round(pressure_hpa * 100) - 50000, 0, 0, 1000, power, 0, seq) + bytes.fromhex(mac.replace(":", ""))


def bthome_plain(packet_id: int, temp_c: float, humidity: float) -> bytes:
    return bytes([0x40, 0x00, packet_id, 0x02]) + round(temp_c * 100).to_bytes(2, "little", signed=True) \
        + b"\x03" + round(humidity * 100).to_bytes(2, "little")


def pvvx(mac: str, temp_c: float, humidity: float, mv: int, battery: int, counter: int) -> bytes:
    """pvvx custom format: MAC reversed, int16 0.01 °C, uint16 0.01 %, uint16 mV, uint8 %, counter, flags."""
    return bytes.fromhex(mac.replace(":", ""))[::-1] + struct.pack(
        "<hHHBBB", round(temp_c * 100), round(humidity * 100), mv, battery, counter, 0)


def atc1441(mac: str, temp_c: float, humidity: int, battery: int, mv: int, counter: int) -> bytes:
    """ATC1441 format: MAC, int16 BE 0.1 °C, uint8 %, uint8 battery %, uint16 BE mV, counter."""
    return bytes.fromhex(mac.replace(":", "")) + struct.pack(">hBBHB", round(temp_c * 10), humidity, battery, mv, counter)


def aranet4(co2: int, temp_c: float, pressure_hpa: float, humidity: int, battery: int,
            interval: int = 300, ago: int = 10, counter: int = 1) -> bytes:
    """Aranet4 manufacturer data (0x0702), integrations on, as read by Aranet4-Python."""
    head = bytes([0x22, 0x13, 0x04, 0x01]) + b"\x00\x0c\x01\x01"  # flags, version v1.4.19, unknown
    return head + struct.pack("<HHHBBBHHB", co2, round(temp_c / 0.05), round(pressure_hpa * 10),
                              humidity, battery, 1, interval, ago, counter)
