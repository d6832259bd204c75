"""TEMPORARY test stand-in for ``drivers.ble.decoders`` until the real package lands.

Implements only the agreed interface (Advert, DecodeError, FAMILIES, identify) with the few
formats the BLE stack tests send. ``install()`` registers it as ``drivers.ble.decoders`` only
when the real package is not importable, so it disappears by itself once that package exists.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import DriverError


@dataclass(frozen=True, slots=True)
class Advert:
    address: str
    name: str | None
    rssi: int | None
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()


class DecodeError(DriverError):
    """Malformed advertisement payload."""


def _u16(u: int) -> str:
    return f"0000{u:04x}-0000-1000-8000-00805f9b34fb"


class _Ruuvi:
    @staticmethod
    def matches(adv: Advert) -> bool:
        return 0x0499 in adv.manufacturer_data

    @staticmethod
    def decode(adv: Advert, key: bytes | None = None) -> dict[str, Any] | None:
        d = adv.manufacturer_data.get(0x0499)
        if d is None:
            return None
        if not d or d[0] != 5:
            raise DecodeError("unsupported ruuvi format")
        if len(d) < 24:
            raise DecodeError("short ruuvi df5 frame")
        t, h, p, ax, ay, az, pw, mv, seq = struct.unpack(">hHHhhhHBH", d[1:18])
        return {
            "temperature": round(t * 0.005, 3), "humidity": round(h * 0.0025, 4),
            "pressure": round((p + 50000) / 100, 2), "acceleration_x": ax / 1000,
            "acceleration_y": ay / 1000, "acceleration_z": az / 1000,
            "battery_voltage": round(((pw >> 5) + 1600) / 1000, 3), "tx_power": (pw & 0x1F) * 2 - 40,
            "movement_counter": mv, "measurement_sequence": seq,
        }


class _Bthome:
    UUID = _u16(0xFCD2)

    @staticmethod
    def matches(adv: Advert) -> bool:
        return _Bthome.UUID in adv.service_data

    @staticmethod
    def decode(adv: Advert, key: bytes | None = None) -> dict[str, Any] | None:
        d = adv.service_data.get(_Bthome.UUID)
        if d is None:
            return None
        if not d:
            raise DecodeError("empty bthome frame")
        info, body = d[0], d[1:]
        if info & 0x01:
            if key is None:
                raise DecodeError("encrypted bthome advert and no key")
            if len(body) < 8:
                raise DecodeError("short encrypted bthome frame")
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESCCM

            mac = bytes.fromhex(adv.address.replace(":", ""))
            ct, counter, mic = body[:-8], body[-8:-4], body[-4:]
            nonce = mac + b"\xd2\xfc" + bytes([info]) + counter
            try:
                body = AESCCM(key, tag_length=4).decrypt(nonce, ct + mic, None)
            except InvalidTag:
                raise DecodeError("bthome MIC check failed (wrong key?)") from None
        out: dict[str, Any] = {}
        i = 0
        sizes = {0x00: (1, 1, "packet_id", False), 0x01: (1, 1, "battery", False),
                 0x02: (2, 0.01, "temperature", True), 0x03: (2, 0.01, "humidity", False),
                 0x12: (2, 1, "co2", False), 0x0C: (2, 0.001, "voltage", False)}
        while i < len(body):
            oid = body[i]
            if oid not in sizes or i + 1 + sizes[oid][0] > len(body):
                raise DecodeError(f"bthome object 0x{oid:02x} unknown or truncated")
            n, scale, name, signed = sizes[oid]
            raw = int.from_bytes(body[i + 1:i + 1 + n], "little", signed=signed)
            out[name] = round(raw * scale, 4) if scale != 1 else raw
            i += 1 + n
        return out


class _Xiaomi:
    UUID = _u16(0x181A)

    @staticmethod
    def matches(adv: Advert) -> bool:
        return _Xiaomi.UUID in adv.service_data or _u16(0xFE95) in adv.service_data

    @staticmethod
    def decode(adv: Advert, key: bytes | None = None) -> dict[str, Any] | None:
        d = adv.service_data.get(_Xiaomi.UUID)
        if d is None:
            return None
        if len(d) == 15:  # pvvx custom
            t, h, mv, bat = struct.unpack("<hHHB", d[6:13])
            return {"temperature": t / 100, "humidity": h / 100, "battery_voltage": mv / 1000, "battery": bat}
        if len(d) == 13:  # ATC1441
            t, h, bat, mv = struct.unpack(">hBBH", d[6:12])
            return {"temperature": t / 10, "humidity": h, "battery_voltage": mv / 1000, "battery": bat}
        raise DecodeError(f"xiaomi 181a frame of {len(d)} bytes")


class _Aranet4:
    @staticmethod
    def matches(adv: Advert) -> bool:
        return 0x0702 in adv.manufacturer_data

    @staticmethod
    def decode(adv: Advert, key: bytes | None = None) -> dict[str, Any] | None:
        d = adv.manufacturer_data.get(0x0702)
        if d is None:
            return None
        if len(d) < 22:
            raise DecodeError("short aranet4 frame")
        if not d[0] & 0x20:
            return None  # integrations off: no readings advertised
        co2, t, p, h, bat = struct.unpack("<HHHBB", d[8:16])
        return {"co2": co2, "temperature": round(t * 0.05, 2), "pressure": round(p * 0.1, 1),
                "humidity": h, "battery": bat}


FAMILIES: dict[str, Any] = {"ruuvi": _Ruuvi, "bthome": _Bthome, "xiaomi": _Xiaomi, "aranet4": _Aranet4}


def identify(adv: Advert) -> str | None:
    for name, fam in FAMILIES.items():
        if fam.matches(adv):
            return name
    return None


def install() -> None:
    """Register this module as drivers.ble.decoders if the real one is missing."""
    if "drivers.ble.decoders" in sys.modules:
        return
    try:
        if importlib.util.find_spec("drivers.ble.decoders") is not None:
            return
    except ModuleNotFoundError:
        pass
    mod = types.ModuleType("drivers.ble.decoders")
    mod.__dict__.update({k: globals()[k] for k in ("Advert", "DecodeError", "FAMILIES", "identify")})
    mod.__dict__["STUB"] = True
    sys.modules["drivers.ble.decoders"] = mod
    import drivers.ble

    drivers.ble.decoders = mod  # type: ignore[attr-defined]
