"""BTHome v2 service data (UUID 0xFCD2), plain and AES-CCM encrypted (bthome.io/format).

Layout: device-info byte (bit 0 encrypted, bit 1 MAC included, bit 2 trigger based,
bits 5-7 version = 2), optional 6-byte MAC (reversed), then objects `id, data...` in
ascending id order. Encrypted: ciphertext, 4-byte counter (LE), 4-byte MIC; nonce =
MAC (6, display order) + UUID16 (d2 fc) + device-info byte + counter; no associated data.

Values are named after the object table below (canonical units: temperature °C, humidity
and moisture %, pressure hPa, illuminance lx, co2 ppm, pm2_5/pm10/tvoc µg/m³, voltage V,
current A, power W, energy kWh, battery %, speed m/s ...); binary objects are bools; a
button or command object gives its event name as a string, a dimmer its signed steps
(negative = rotate left). When one quantity occurs
more than once in an advert every occurrence is numbered (temperature_1, temperature_2),
as bthome-ble does. `packet_id` (object 0x00) is passed on; `is_newer_packet()` implements
the BTHome duplicate rule for the driver. Objects 0xF0-0xF2 (device type, firmware) are
metadata and skipped. An unknown object id ends parsing (its length is unknown): the
objects before it are returned, or DecodeError when there were none.

An advert that arrives unencrypted while a key is configured is refused (DecodeError):
accepting it would let anyone spoof the device.

Encoder:
    encode(address: str, values: Mapping[str, float | int | bool | str], *,
           key: bytes | None = None, counter: int = 0, mac_included: bool = False,
           trigger: bool = False, name: str | None = "BTHome sensor",
           rssi: int | None = -60) -> Advert
Each value name maps to its first object id in the table (temperature -> 0x02 at 0.01 °C);
objects are written in ascending id order; with `key` the payload is encrypted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

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

UUID16 = 0xFCD2
UUID = uuid16(UUID16)


class Obj(NamedTuple):
    """One BTHome object type."""

    name: str
    length: int  # data bytes; 0 = length-prefixed
    kind: str  # num | bool | button | dimmer | command | text | raw | meta
    signed: bool = False
    factor: float = 1
    decimals: int = 0


def _n(name: str, length: int, factor: float = 1, signed: bool = False) -> Obj:
    decimals = 0 if factor >= 1 else max(0, -math.floor(math.log10(factor) + 1e-9))
    if factor < 1 and round(factor, decimals) != factor:
        decimals += 1
    return Obj(name, length, "num", signed, factor, decimals)


def _b(name: str) -> Obj:
    return Obj(name, 1, "bool")


OBJECTS: dict[int, Obj] = {
    0x00: _n("packet_id", 1),
    0x01: _n("battery", 1),
    0x02: _n("temperature", 2, 0.01, True),
    0x03: _n("humidity", 2, 0.01),
    0x04: _n("pressure", 3, 0.01),
    0x05: _n("illuminance", 3, 0.01),
    0x06: _n("mass", 2, 0.01),
    0x07: _n("mass_lb", 2, 0.01),
    0x08: _n("dew_point", 2, 0.01, True),
    0x09: _n("count", 1),
    0x0A: _n("energy", 3, 0.001),
    0x0B: _n("power", 3, 0.01),
    0x0C: _n("voltage", 2, 0.001),
    0x0D: _n("pm2_5", 2),
    0x0E: _n("pm10", 2),
    0x0F: _b("generic"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _n("co2", 2),
    0x13: _n("tvoc", 2),
    0x14: _n("moisture", 2, 0.01),
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("carbon_monoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas_detected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_detected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _n("humidity", 1),
    0x2F: _n("moisture", 1),
    0x3A: Obj("button", 1, "button"),
    0x3B: Obj("command", 0, "command"),
    0x3C: Obj("dimmer", 2, "dimmer"),
    0x3D: _n("count", 2),
    0x3E: _n("count", 4),
    0x3F: _n("rotation", 2, 0.1, True),
    0x40: _n("distance_mm", 2),
    0x41: _n("distance", 2, 0.1),
    0x42: _n("duration", 3, 0.001),
    0x43: _n("current", 2, 0.001),
    0x44: _n("speed", 2, 0.01),
    0x45: _n("temperature", 2, 0.1, True),
    0x46: _n("uv_index", 1, 0.1),
    0x47: _n("volume", 2, 0.1),
    0x48: _n("volume_ml", 2),
    0x49: _n("volume_flow_rate", 2, 0.001),
    0x4A: _n("voltage", 2, 0.1),
    0x4B: _n("gas", 3, 0.001),
    0x4C: _n("gas", 4, 0.001),
    0x4D: _n("energy", 4, 0.001),
    0x4E: _n("volume", 4, 0.001),
    0x4F: _n("water", 4, 0.001),
    0x50: _n("timestamp", 4),
    0x51: _n("acceleration", 2, 0.001),
    0x52: _n("gyroscope", 2, 0.001),
    0x53: Obj("text", 0, "text"),
    0x54: Obj("raw", 0, "raw"),
    0x55: _n("volume_storage", 4, 0.001),
    0x56: _n("conductivity", 2),
    0x57: _n("temperature", 1, 1, True),
    0x58: _n("temperature", 1, 0.35, True),
    0x59: _n("count", 1, 1, True),
    0x5A: _n("count", 2, 1, True),
    0x5B: _n("count", 4, 1, True),
    0x5C: _n("power", 4, 0.01, True),
    0x5D: _n("current", 2, 0.001, True),
    0x5E: _n("direction", 2, 0.01),
    0x5F: _n("precipitation", 2, 0.1),
    0x60: _n("channel", 1),
    0x61: _n("rotational_speed", 2),
    0x62: _n("speed", 4, 0.000001, True),
    0x63: _n("acceleration", 4, 0.000001, True),
    0x64: _n("light_level", 1),
    0x65: _n("settings_revision", 1),
    0xF0: Obj("device_type_id", 2, "meta"),
    0xF1: Obj("firmware_version", 4, "meta"),
    0xF2: Obj("firmware_version", 3, "meta"),
}

BUTTON_EVENTS = {
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
    0x81: "hold_release",
}
DIMMER_EVENTS = {0x01: "rotate_left", 0x02: "rotate_right"}
COMMAND_EVENTS = {0x00: "off", 0x01: "on", 0x02: "toggle", 0x03: "step_up", 0x04: "step_down"}

# name -> first object id carrying it (used by the encoder)
_BY_NAME: dict[str, int] = {}
for _oid, _obj in OBJECTS.items():
    _BY_NAME.setdefault(_obj.name, _oid)


def matches(adv: Advert) -> bool:
    """True when the advert carries BTHome v2 service data."""
    return service_data(adv, UUID16) is not None


def decode(adv: Advert, key: bytes | None = None) -> Values | None:
    """Decode (and decrypt with `key`) a BTHome v2 advert; None when it is not BTHome."""
    data = service_data(adv, UUID16)
    if data is None:
        return None
    payload = _payload(adv, data, key)
    return parse_objects(payload)


def frame_counter(adv: Advert) -> int | None:
    """The encryption counter of an encrypted BTHome advert (for replay checks), else None."""
    data = service_data(adv, UUID16)
    if not data or not data[0] & 1 or len(data) < 9:
        return None
    return int.from_bytes(data[-8:-4], "little")


def is_newer_packet(previous: int | None, packet_id: int) -> bool:
    """BTHome's duplicate rule: a packet id is new when it is 1..63 ahead (mod 256)."""
    if previous is None:
        return True
    return 0 < (packet_id - previous) % 256 < 64


def _payload(adv: Advert, data: bytes, key: bytes | None) -> bytes:
    if not data:
        raise DecodeError("bthome: empty service data")
    info = data[0]
    version = info >> 5
    if version != 2:
        raise DecodeError(f"bthome: version {version} (only v2 is supported)")
    encrypted = bool(info & 1)
    if info & 2:
        if len(data) < 7:
            raise DecodeError("bthome: MAC flag set but advert too short")
        mac = data[1:7][::-1]
        body = data[7:]
    else:
        mac = b""
        body = data[1:]
    if not encrypted:
        if key is not None:
            raise DecodeError("bthome: unencrypted advert from a device configured with a key")
        return body
    if key is None:
        raise KeyRequired("bthome: advert is encrypted; the device needs a key")
    if len(key) != 16:
        raise DecodeError(f"bthome: key must be 16 bytes, got {len(key)}")
    if len(body) < 8 + 2:
        raise DecodeError(f"bthome: encrypted advert too short ({len(body)} bytes after header)")
    if not mac:
        mac = mac_bytes(adv.address)
    ciphertext, counter, mic = body[:-8], body[-8:-4], body[-4:]
    nonce = mac + b"\xd2\xfc" + bytes([info]) + counter
    plain = ccm_decrypt(key, nonce, ciphertext + mic, None)
    if plain is None:
        raise DecodeError(f"bthome: MIC check failed for {mac_str(mac)} (wrong key?)")
    return plain


def parse_objects(payload: bytes) -> Values:
    """Decode a plain BTHome v2 object list."""
    items: list[tuple[str, float | int | str | bool]] = []
    i, n = 0, len(payload)
    while i < n:
        oid = payload[i]
        obj = OBJECTS.get(oid)
        if obj is None:
            if not items:
                raise DecodeError(f"bthome: unknown object id {oid:#04x}")
            break
        if obj.length:
            start, length = i + 1, obj.length
        else:
            if i + 1 >= n:
                raise DecodeError(f"bthome: object {oid:#04x} truncated (no length byte)")
            start = i + 2
            length = (payload[i + 1] & 0x1F) + 1 if obj.kind == "command" else payload[i + 1]
        end = start + length
        if end > n:
            raise DecodeError(
                f"bthome: object {oid:#04x} truncated ({n - start} of {length} bytes)"
            )
        raw = payload[start:end]
        i = end
        if not raw:
            continue
        value = _value(obj, raw)
        if value is not None:
            items.append((obj.name, value))
    counts: dict[str, int] = {}
    for name, _ in items:
        counts[name] = counts.get(name, 0) + 1
    out: Values = {}
    seen: dict[str, int] = {}
    for name, value in items:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}_{seen[name]}"
        out[name] = value
    return out


def _value(obj: Obj, raw: bytes) -> float | int | str | bool | None:
    kind = obj.kind
    if kind == "num":
        v = int.from_bytes(raw, "little", signed=obj.signed)
        return v if obj.factor == 1 else round(v * obj.factor, obj.decimals)
    if kind == "bool":
        return raw[0] != 0
    if kind == "button":
        return BUTTON_EVENTS.get(raw[0])
    if kind == "dimmer":
        if raw[0] not in DIMMER_EVENTS:
            return None
        return -raw[1] if raw[0] == 0x01 else raw[1]
    if kind == "command":
        return COMMAND_EVENTS.get(raw[0], raw.hex())
    if kind == "text":
        return raw.decode("utf-8", errors="replace")
    if kind == "raw":
        return raw.hex()
    return None  # meta


# ---------------------------------------------------------------- encoder

_EVENT_CODES = {
    "button": {v: k for k, v in BUTTON_EVENTS.items()},
    "command": {v: k for k, v in COMMAND_EVENTS.items()},
}


def encode_objects(values: Mapping[str, float | int | bool | str]) -> bytes:
    """The plain object list for `values`, in ascending object id order."""
    out: list[tuple[int, bytes]] = []
    for name, value in values.items():
        oid = _BY_NAME.get(name)
        if oid is None:
            raise ValueError(f"bthome: no object for {name!r}")
        obj = OBJECTS[oid]
        if obj.kind == "num":
            raw = round(float(value) / obj.factor)
            data = raw.to_bytes(obj.length, "little", signed=obj.signed)
        elif obj.kind == "bool":
            data = b"\x01" if value else b"\x00"
        elif obj.kind == "button":
            data = bytes([_EVENT_CODES["button"][str(value)]])
        elif obj.kind == "command":
            data = bytes([0, _EVENT_CODES["command"][str(value)]])  # length byte, opcode
        elif obj.kind == "dimmer":
            steps = int(value)
            data = bytes([0x01 if steps < 0 else 0x02, abs(steps)])
        elif obj.kind == "text":
            text = str(value).encode()
            data = bytes([len(text)]) + text
        elif obj.kind == "raw":
            blob = bytes.fromhex(str(value))
            data = bytes([len(blob)]) + blob
        else:
            raise ValueError(f"bthome: cannot encode {name!r}")
        out.append((oid, bytes([oid]) + data))
    out.sort(key=lambda t: t[0])
    return b"".join(d for _, d in out)


def encode_service_data(
    address: str,
    values: Mapping[str, float | int | bool | str],
    *,
    key: bytes | None = None,
    counter: int = 0,
    mac_included: bool = False,
    trigger: bool = False,
) -> bytes:
    """BTHome v2 service data bytes (what goes under UUID 0xFCD2)."""
    info = 0x40 | (1 if key is not None else 0) | (2 if mac_included else 0) | (4 if trigger else 0)
    mac = mac_bytes(address)
    head = bytes([info]) + (mac[::-1] if mac_included else b"")
    body = encode_objects(values)
    if key is None:
        return head + body
    ctr = counter.to_bytes(4, "little")
    nonce = mac + b"\xd2\xfc" + bytes([info]) + ctr
    sealed = aes_ccm(key).encrypt(nonce, body, None)
    return head + sealed[:-4] + ctr + sealed[-4:]


def encode(
    address: str,
    values: Mapping[str, float | int | bool | str],
    *,
    key: bytes | None = None,
    counter: int = 0,
    mac_included: bool = False,
    trigger: bool = False,
    name: str | None = "BTHome sensor",
    rssi: int | None = -60,
) -> Advert:
    """A BTHome v2 advert carrying `values` (encrypted when `key` is given)."""
    data = encode_service_data(
        address, values, key=key, counter=counter, mac_included=mac_included, trigger=trigger
    )
    return Advert(
        address=address.upper(),
        name=name,
        rssi=rssi,
        manufacturer_data={},
        service_data={UUID: data},
        service_uuids=(UUID,),
    )
