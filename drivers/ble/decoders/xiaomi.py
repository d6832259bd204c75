"""Xiaomi thermometers (LYWSD03MMC & co.): pvvx and ATC1441 custom formats, stock MiBeacon.

Custom firmware (github.com/pvvx/ATC_MiThermometer), service data UUID 0x181A:
  13 bytes  ATC1441: MAC (6, display order), temperature s16 BE 0.1 °C, humidity u8 %,
            battery u8 %, battery mV u16 BE, frame counter u8
  15 bytes  pvvx custom: MAC (6, reversed), temperature s16 LE 0.01 °C, humidity u16 LE
            0.01 %, battery mV u16 LE, battery u8 %, frame counter u8, flags u8
  11 bytes  pvvx custom, encrypted: counter u8, ciphertext (temperature s16 LE 0.01 °C,
            humidity u16 LE 0.01 %, battery u8 %, flags u8), MIC (4)
   8 bytes  ATC1441, encrypted: counter u8, ciphertext (temperature u8 0.5 °C - 40,
            humidity u8 0.5 %, battery u8 % with bit 7 = trigger), MIC (4)
  Encrypted custom formats: AES-CCM, nonce = MAC (reversed) + the AD header
  (length, 0x16, 0x1A, 0x18) + counter, associated data 0x11.
Stock MiBeacon, service data UUID 0xFE95: frame control u16, product id u16, frame
counter u8, [MAC (6, reversed)], [capability], object list (type u16, length u8, data);
encrypted v4/v5: ciphertext, 3-byte extended counter, 4-byte MIC; AES-CCM with the
16-byte bindkey, nonce = MAC (reversed) + product id + frame counter + extended counter,
associated data 0x11. Legacy v2/v3 encryption (no MIC) is refused with DecodeError.

Values: temperature (°C), humidity (%RH), battery (%), battery_voltage (V, custom formats),
packet_id (frame counter), and from MiBeacon objects also illuminance (lx), moisture (%),
conductivity (µS/cm), formaldehyde (mg/m³). As xiaomi-ble does, MiBeacon humidity from
LYWSD03MMC and MHO-C401 (object 0x1006) is truncated to whole percent (their tenths are
noise).

Encoder:
    encode(address: str, values: Mapping[str, float | int | bool], *, fmt: str = "pvvx",
           key: bytes | None = None, packet_id: int = 0, product_id: int = 0x055B,
           ext_counter: int = 0, name: str | None = "ATC_ABCDEF", rssi: int | None = -60) -> Advert
fmt is "pvvx" (15 bytes; encrypted 11 bytes with key), "atc1441" (13; encrypted 8 with key)
or "mibeacon" (MiBeacon v5 with objects 0x1004/0x1006/0x100A, encrypted with key).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from drivers.ble.decoders import (
    Advert,
    DecodeError,
    KeyRequired,
    Values,
    aes_ccm,
    ccm_decrypt,
    mac_bytes,
    mac_str,
    service_data,
    uuid16,
)

UUID_CUSTOM = 0x181A
UUID_MIBEACON = 0xFE95

_ATC = struct.Struct(">6shBBHB")
_PVVX = struct.Struct("<6shHHBBB")
_HUMIDITY_WHOLE = frozenset({0x055B, 0x0387})  # LYWSD03MMC, MHO-C401
_AAD = b"\x11"


def matches(adv: Advert) -> bool:
    """True when the advert carries 0x181A custom or 0xFE95 MiBeacon service data."""
    return (
        service_data(adv, UUID_CUSTOM) is not None or service_data(adv, UUID_MIBEACON) is not None
    )


def decode(adv: Advert, key: bytes | None = None) -> Values | None:
    """Decode a custom-format or MiBeacon advert; None when there is no measurement in it."""
    custom = service_data(adv, UUID_CUSTOM)
    if custom is not None:
        return decode_custom(adv, custom, key)
    mibeacon = service_data(adv, UUID_MIBEACON)
    if mibeacon is not None:
        return decode_mibeacon(adv, mibeacon, key)
    return None


def _cipher(key: bytes | None, what: str) -> bytes:
    """The checked key of an encrypted advert."""
    if key is None:
        raise KeyRequired(f"xiaomi: {what} advert is encrypted; the device needs a key")
    if len(key) != 16:
        raise DecodeError(f"xiaomi: key must be 16 bytes, got {len(key)}")
    return key


def decode_custom(adv: Advert, data: bytes, key: bytes | None = None) -> Values:
    """pvvx / ATC1441 custom formats (service data under UUID 0x181A)."""
    n = len(data)
    if key is not None and n in (13, 15):
        raise DecodeError("xiaomi: unencrypted advert from a device configured with a key")
    if n == 15:
        _mac, t, h, mv, batt, cnt, _flags = _PVVX.unpack(data)
        return {
            "temperature": t / 100,
            "humidity": h / 100,
            "battery_voltage": mv / 1000,
            "battery": batt,
            "packet_id": cnt,
        }
    if n == 13:
        _mac, t, h, batt, mv, cnt = _ATC.unpack(data)
        return {
            "temperature": t / 10,
            "humidity": h,
            "battery": batt,
            "battery_voltage": mv / 1000,
            "packet_id": cnt,
        }
    if n in (11, 8):
        cipher = _cipher(key, "custom-format")
        mac = mac_bytes(adv.address)
        nonce = mac[::-1] + bytes([n + 3, 0x16, 0x1A, 0x18, data[0]])
        plain = ccm_decrypt(cipher, nonce, data[1:], _AAD)
        if plain is None:
            raise DecodeError(f"xiaomi: MIC check failed for {mac_str(mac)} (wrong key?)")
        if n == 11:
            t, h, batt, _flags = struct.unpack("<hHBB", plain)
            return {
                "temperature": t / 100,
                "humidity": h / 100,
                "battery": min(batt, 100),
                "packet_id": data[0],
            }
        return {
            "temperature": plain[0] / 2 - 40,
            "humidity": plain[1] / 2,
            "battery": min(plain[2] & 0x7F, 100),
            "packet_id": data[0],
        }
    raise DecodeError(f"xiaomi: custom-format advert of {n} bytes (expected 8, 11, 13 or 15)")


def decode_mibeacon(adv: Advert, data: bytes, key: bytes | None = None) -> Values | None:
    """Stock MiBeacon (service data under UUID 0xFE95); None for frames without objects."""
    if len(data) < 5:
        raise DecodeError(f"xiaomi: MiBeacon frame of {len(data)} bytes")
    frctrl = data[0] | data[1] << 8
    version = frctrl >> 12
    if frctrl & 0x80 or version < 2:
        return None  # mesh or pre-v2 frames carry no advertised measurements
    product_id = data[2] | data[3] << 8
    i = 5
    if frctrl & 0x10:
        i += 6
        if len(data) < i:
            raise DecodeError("xiaomi: MiBeacon frame too short for its MAC")
        mac = data[5:11][::-1]
    else:
        mac = mac_bytes(adv.address)
    if frctrl & 0x20:
        i += 1
        if len(data) < i:
            raise DecodeError("xiaomi: MiBeacon frame too short for its capability byte")
        if data[i - 1] & 0x20:
            i += 1
    if not frctrl & 0x40:
        return None  # no object: a pairing/heartbeat frame
    if frctrl & 0x08:
        if version <= 3:
            raise DecodeError(
                "xiaomi: MiBeacon v2/v3 (legacy, unauthenticated) encryption is not supported"
            )
        cipher = _cipher(key, "MiBeacon")
        if len(data) < i + 9:
            raise DecodeError(f"xiaomi: encrypted MiBeacon frame of {len(data)} bytes is too short")
        nonce = mac[::-1] + data[2:5] + data[-7:-4]
        decrypted = ccm_decrypt(cipher, nonce, data[i:-7] + data[-4:], _AAD)
        if decrypted is None:
            raise DecodeError(f"xiaomi: MIC check failed for {mac_str(mac)} (wrong key?)")
        payload = decrypted
    else:
        if len(data) < i + 3:
            raise DecodeError("xiaomi: MiBeacon object truncated")
        payload = data[i:]
    out = _objects(payload, product_id)
    if not out:
        return None
    out["packet_id"] = data[4]
    return out


def _float(raw: bytes, digits: int | None) -> float | None:
    v: float = struct.unpack("<f", raw)[0]
    if not math.isfinite(v):
        return None
    return round(v, digits) if digits is not None else v


def _objects(payload: bytes, product_id: int) -> Values:
    out: Values = {}
    i, n = 0, len(payload)
    while n - i >= 3:
        typ = payload[i] | payload[i + 1] << 8
        length = payload[i + 2]
        obj = payload[i + 3 : i + 3 + length]
        if len(obj) != length:
            raise DecodeError(f"xiaomi: MiBeacon object {typ:#06x} truncated")
        i += 3 + length
        if typ == 0x1004 and length == 2:
            out["temperature"] = int.from_bytes(obj, "little", signed=True) / 10
        elif typ == 0x1006 and length == 2:
            out["humidity"] = _humidity(int.from_bytes(obj, "little"), product_id)
        elif typ == 0x100D and length == 4:
            out["temperature"] = int.from_bytes(obj[:2], "little", signed=True) / 10
            out["humidity"] = int.from_bytes(obj[2:], "little") / 10
        elif typ in (0x100A, 0x4803, 0x4C03) and length >= 1:
            out["battery"] = obj[0]
        elif typ == 0x1007 and length == 3:
            out["illuminance"] = int.from_bytes(obj, "little")
        elif typ == 0x1008 and length >= 1:
            out["moisture"] = obj[0]
        elif typ == 0x1009 and length == 2:
            out["conductivity"] = int.from_bytes(obj, "little")
        elif typ == 0x1010 and length == 2:
            out["formaldehyde"] = int.from_bytes(obj, "little") / 100
        elif typ in (0x4802, 0x4C02) and length == 1:
            out["humidity"] = obj[0]
        elif typ in (0x4801, 0x4C01) and length == 4:
            v = _float(obj, 1 if typ == 0x4801 else 2)
            if v is not None:
                out["temperature"] = v
        elif typ == 0x4C08 and length == 4:
            v = _float(obj, None)
            if v is not None:
                out["humidity"] = v
        elif typ == 0x4805 and length == 4:
            v = _float(obj, None)
            if v is not None:
                out["illuminance"] = v
    return out


def _humidity(raw: int, product_id: int) -> float | int:
    return int(raw / 10) if product_id in _HUMIDITY_WHOLE else raw / 10


# ---------------------------------------------------------------- encoder


def _r(
    values: Mapping[str, float | int | bool], name: str, scale: float, default: float = 0
) -> int:
    return round(float(values.get(name, default)) * scale)


def encode_custom(
    address: str,
    values: Mapping[str, float | int | bool],
    *,
    fmt: str = "pvvx",
    key: bytes | None = None,
    packet_id: int = 0,
) -> bytes:
    """Service data for UUID 0x181A in the pvvx or ATC1441 custom format."""
    mac = mac_bytes(address)
    batt = int(values.get("battery", 100))
    cnt = packet_id & 0xFF
    if key is None:
        if fmt == "pvvx":
            return _PVVX.pack(
                mac[::-1],
                _r(values, "temperature", 100),
                _r(values, "humidity", 100),
                _r(values, "battery_voltage", 1000, 3.0),
                batt,
                cnt,
                0,
            )
        if fmt == "atc1441":
            return _ATC.pack(
                mac,
                _r(values, "temperature", 10),
                _r(values, "humidity", 1),
                batt,
                _r(values, "battery_voltage", 1000, 3.0),
                cnt,
            )
        raise ValueError(f"xiaomi: unknown custom format {fmt!r}")
    if fmt == "pvvx":
        plain = struct.pack(
            "<hHBB", _r(values, "temperature", 100), _r(values, "humidity", 100), batt, 0
        )
    elif fmt == "atc1441":
        plain = bytes(
            [_r(values, "temperature", 2, 0) + 80, _r(values, "humidity", 2), batt & 0x7F]
        )
    else:
        raise ValueError(f"xiaomi: unknown custom format {fmt!r}")
    n = 1 + len(plain) + 4
    nonce = mac[::-1] + bytes([n + 3, 0x16, 0x1A, 0x18, cnt])
    return bytes([cnt]) + aes_ccm(key).encrypt(nonce, plain, _AAD)


def encode_mibeacon(
    address: str,
    values: Mapping[str, float | int | bool],
    *,
    key: bytes | None = None,
    packet_id: int = 0,
    product_id: int = 0x055B,
    ext_counter: int = 0,
) -> bytes:
    """MiBeacon v5 service data (UUID 0xFE95) with temperature/humidity/battery objects."""
    mac = mac_bytes(address)
    objs = b""
    if "temperature" in values:
        objs += struct.pack("<HBh", 0x1004, 2, _r(values, "temperature", 10))
    if "humidity" in values:
        objs += struct.pack("<HBH", 0x1006, 2, _r(values, "humidity", 10))
    if "battery" in values:
        objs += struct.pack("<HBB", 0x100A, 1, int(values["battery"]))
    frctrl = 0x5000 | 0x0040 | 0x0010 | (0x0008 if key is not None else 0)
    head = struct.pack("<HHB", frctrl, product_id, packet_id & 0xFF) + mac[::-1]
    if key is None:
        return head + objs
    ext = ext_counter.to_bytes(3, "little")
    nonce = mac[::-1] + head[2:5] + ext
    sealed = aes_ccm(key).encrypt(nonce, objs, _AAD)
    return head + sealed[:-4] + ext + sealed[-4:]


def encode(
    address: str,
    values: Mapping[str, float | int | bool],
    *,
    fmt: str = "pvvx",
    key: bytes | None = None,
    packet_id: int = 0,
    product_id: int = 0x055B,
    ext_counter: int = 0,
    name: str | None = "ATC_ABCDEF",
    rssi: int | None = -60,
) -> Advert:
    """A Xiaomi-family advert carrying `values` in the given format."""
    if fmt == "mibeacon":
        uuid = uuid16(UUID_MIBEACON)
        data = encode_mibeacon(
            address,
            values,
            key=key,
            packet_id=packet_id,
            product_id=product_id,
            ext_counter=ext_counter,
        )
    else:
        uuid = uuid16(UUID_CUSTOM)
        data = encode_custom(address, values, fmt=fmt, key=key, packet_id=packet_id)
    return Advert(
        address=address.upper(),
        name=name,
        rssi=rssi,
        manufacturer_data={},
        service_data={uuid: data},
        service_uuids=(uuid,),
    )
