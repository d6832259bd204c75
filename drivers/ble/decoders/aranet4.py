"""SAF Tehnika Aranet manufacturer data (company id 0x0702): Aranet4, plus Aranet2 and Radon.

Layout as decoded by the aranet4 package (Anrijs/Aranet4-Python). Aranet4 sends no
device-type byte (7 bytes without, 22 bytes with "Smart Home integrations" enabled); the
others start with a type byte (1 Aranet2, 2 Radiation, 3 Radon). After it: flags
(bit 5 = integrations on), firmware version patch/minor/major, 4 reserved bytes, then
Aranet4: co2 u16 (bit 15 = invalid), temperature u16 0.05 °C (bit 14 = invalid),
pressure u16 0.1 hPa (bit 15 = invalid), humidity u8 %, battery u8 %, status u8
(0 error, 1 green, 2 yellow, 3 red), interval u16 s, age u16 s (since the last
measurement), [counter u8]. All little-endian.

Values: co2 (ppm), temperature (°C, full 0.05 resolution; the aranet4 package rounds to
0.1), pressure (hPa), humidity (%RH), battery (%), status (str), interval (s), age (s),
packet_id; Aranet2 gives temperature, humidity, battery, status_temperature and
status_humidity (off/under/over/dash); Aranet Radon adds radon (Bq/m³). Without
integrations the advert carries no measurement: None. Aranet Radiation: None.

Encoder (Aranet4 only, 22 bytes):
    encode(address: str, values: Mapping[str, float | int | str], *,
           name: str | None = "Aranet4 12345", version: tuple[int, int, int] = (1, 4, 19),
           rssi: int | None = -60) -> Advert
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from drivers.ble.decoders import Advert, DecodeError, Values

COMPANY_ID = 0x0702

_NAMES = ("Aranet4", "Aranet2", "Aranet\u2622", "AranetRn")
_COLOR = ("error", "green", "yellow", "red")
_LEVEL = ("off", "under", "over", "dash")
_A4 = struct.Struct("<HHHBBBHH")  # at offset 9 (after the inserted type byte)
_A2 = struct.Struct("<HHHHBBBHHB")  # at offset 8 (Aranet2 and Radon)


def matches(adv: Advert) -> bool:
    """True when the advert carries Aranet manufacturer data."""
    return COMPANY_ID in adv.manufacturer_data


def decode(adv: Advert, key: bytes | None = None) -> Values | None:
    """Decode an Aranet advert; None when integrations are off or it has no measurements."""
    raw = adv.manufacturer_data.get(COMPANY_ID)
    if raw is None:
        return None
    data = bytes(raw)
    if len(data) < 5:
        raise DecodeError(f"aranet: manufacturer data of {len(data)} bytes")
    name = adv.name or ""
    known_name = name.startswith(_NAMES)
    if (known_name and name.startswith("Aranet4")) or (not known_name and len(data) in (7, 22)):
        data = b"\x00" + data  # Aranet4 sends no type byte
    if not data[1] & 0x20:
        return None  # "Smart Home integrations" off: basic info only
    kind = data[0]
    if kind == 0:
        return _aranet4(data)
    if kind in (1, 3):
        return _aranet2_radon(data, kind)
    return None  # Aranet Radiation or unknown device types


def _aranet4(data: bytes) -> Values | None:
    if len(data) == 8:
        return None  # old firmware: integrations flag without measurements
    if len(data) not in (22, 23):
        raise DecodeError(
            f"aranet4: manufacturer data of {len(data) - 1} bytes (expected 7, 21 or 22)"
        )
    co2, t, p, h, batt, status, interval, age = _A4.unpack_from(data, 9)
    out: Values = {}
    if not co2 >> 15:
        out["co2"] = co2
    if not t >> 14 & 1:
        out["temperature"] = round(t / 20, 2)
    if not p >> 15:
        out["pressure"] = p / 10
    out["humidity"] = h
    out["battery"] = batt
    if status < len(_COLOR):
        out["status"] = _COLOR[status]
    out["interval"] = interval
    out["age"] = age
    if len(data) == 23:
        out["packet_id"] = data[22]
    return out


def _aranet2_radon(data: bytes, kind: int) -> Values:
    if len(data) < 8 + _A2.size:
        raise DecodeError(
            f"aranet: type {kind} manufacturer data of {len(data)} bytes (expected 24)"
        )
    v0, t, p, h, _, batt, status, interval, age, counter = _A2.unpack_from(data, 8)
    out: Values = {}
    if not t >> 14 & 1 and not (kind == 3 and t == 0):
        out["temperature"] = round(t / 20, 2)
    if not h >> 15 and not (kind == 3 and h == 0):
        out["humidity"] = h / 10
    out["battery"] = batt
    if kind == 1:
        out["status_humidity"] = _LEVEL[status & 3]
        out["status_temperature"] = _LEVEL[(status >> 2) & 3]
    else:
        if v0 < 0x1F00:
            out["radon"] = v0
        if not p >> 15:
            out["pressure"] = p / 10
        if status < len(_COLOR):
            out["status"] = _COLOR[status]
    out["interval"] = interval
    out["age"] = age
    out["packet_id"] = counter
    return out


def encode_payload(
    values: Mapping[str, float | int | str], version: tuple[int, int, int] = (1, 4, 19)
) -> bytes:
    """Aranet4 manufacturer data (22 bytes, integrations on)."""
    major, minor, patch = version
    co2 = values.get("co2")
    t = values.get("temperature")
    p = values.get("pressure")
    status = values.get("status", "green")
    return (
        bytes([0x20, patch, minor, major, 0, 0, 0, 0])
        + _A4.pack(
            0x8000 if co2 is None else int(co2),
            0x4000 if t is None else round(float(t) * 20) & 0x3FFF,
            0x8000 if p is None else round(float(p) * 10),
            int(values.get("humidity", 0)),
            int(values.get("battery", 100)),
            _COLOR.index(str(status)),
            int(values.get("interval", 60)),
            int(values.get("age", 0)),
        )
        + bytes([int(values.get("packet_id", 0)) & 0xFF])
    )


def encode(
    address: str,
    values: Mapping[str, float | int | str],
    *,
    name: str | None = "Aranet4 12345",
    version: tuple[int, int, int] = (1, 4, 19),
    rssi: int | None = -60,
) -> Advert:
    """An Aranet4 advert carrying `values`."""
    return Advert(
        address=address.upper(),
        name=name,
        rssi=rssi,
        manufacturer_data={COMPANY_ID: encode_payload(values, version)},
        service_data={},
    )
