"""Ruuvi manufacturer data (company id 0x0499): data formats 5 (RAWv2), 3 (RAWv1), 6 and E1.

Per docs.ruuvi.com "Bluetooth advertisements". Fields carrying the spec's "not available"
sentinel (largest unsigned / smallest signed value) are left out of the result.

Values: temperature (°C), humidity (%RH), pressure (hPa), battery_voltage (V),
acceleration_x/_y/_z (g, standard gravity, as the spec), tx_power (dBm), movement_counter,
measurement_sequence; format 6/E1 add pm1_0, pm2_5, pm4_0, pm10 (µg/m³), co2 (ppm),
voc_index, nox_index, illuminance (lx), calibration_in_progress (bool).

Encoder (real wire bytes for the simulator and the scripted BlueZ):
    encode(address: str, values: Mapping[str, float | int | bool], *, data_format: int | str = 5,
           name: str | None = "Ruuvi ABCD", rssi: int | None = -60) -> Advert
Missing values are sent as the spec's "not available" sentinel (format 3: as 0); values
outside a field's range are clipped, as the Ruuvi firmware does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from drivers.ble.decoders import Advert, DecodeError, Values, mac_bytes

COMPANY_ID = 0x0499

_DF5 = struct.Struct(">BhHHhhhHBH6s")
_DF3 = struct.Struct(">BBBBHhhhH")
_DF6 = struct.Struct(">BhHHHHBBBBBB3s")
_E1 = struct.Struct(">BhHHHHHHHBB3s3s3sB5s6s")
_LENGTHS = {0x03: _DF3.size, 0x05: _DF5.size, 0x06: _DF6.size, 0xE1: _E1.size}

_LUX_DELTA = math.log(65535 + 1) / 254  # data format 6 logarithmic luminosity


def matches(adv: Advert) -> bool:
    """True when the advert carries Ruuvi manufacturer data."""
    return COMPANY_ID in adv.manufacturer_data


def decode(adv: Advert, key: bytes | None = None) -> Values | None:
    """Decode a Ruuvi advert; None for other adverts or data formats without measurements."""
    raw = adv.manufacturer_data.get(COMPANY_ID)
    if raw is None:
        return None
    return decode_payload(bytes(raw))


def decode_payload(data: bytes) -> Values | None:
    """Decode the manufacturer-data payload (after the company id)."""
    if not data:
        raise DecodeError("ruuvi: empty manufacturer data")
    fmt = data[0]
    want = _LENGTHS.get(fmt)
    if want is None:
        return None  # data formats 2/4 (URL), 8 (encrypted), C5, ... carry nothing we decode
    if len(data) != want:
        raise DecodeError(f"ruuvi: data format {fmt:#04x} needs {want} bytes, got {len(data)}")
    if fmt == 0x05:
        return _decode_df5(data)
    if fmt == 0x03:
        return _decode_df3(data)
    if fmt == 0x06:
        return _decode_df6(data)
    return _decode_e1(data)


def _thp(out: Values, t: int, h: int, p: int) -> None:
    if t != -32768:
        out["temperature"] = round(t / 200, 3)
    if h != 0xFFFF:
        out["humidity"] = round(h / 400, 4)
    if p != 0xFFFF:
        out["pressure"] = round((p + 50000) / 100, 2)


def _decode_df5(data: bytes) -> Values:
    _, t, h, p, ax, ay, az, power, move, seq, _mac = _DF5.unpack(data)
    out: Values = {}
    _thp(out, t, h, p)
    for name, a in (("acceleration_x", ax), ("acceleration_y", ay), ("acceleration_z", az)):
        if a != -32768:
            out[name] = a / 1000
    if power >> 5 != 0x7FF:
        out["battery_voltage"] = round(((power >> 5) + 1600) / 1000, 3)
    if power & 0x1F != 0x1F:
        out["tx_power"] = -40 + 2 * (power & 0x1F)
    if move != 0xFF:
        out["movement_counter"] = move
    if seq != 0xFFFF:
        out["measurement_sequence"] = seq
    return out


def _decode_df3(data: bytes) -> Values:
    _, h, t_int, t_frac, p, ax, ay, az, mv = _DF3.unpack(data)
    if t_frac > 99:
        raise DecodeError(f"ruuvi: data format 3 temperature fraction {t_frac} > 99")
    t = (t_int & 0x7F) + t_frac / 100
    return {
        "humidity": h / 2,
        "temperature": round(-t if t_int & 0x80 and t else t, 2),
        "pressure": round((p + 50000) / 100, 2),
        "acceleration_x": ax / 1000,
        "acceleration_y": ay / 1000,
        "acceleration_z": az / 1000,
        "battery_voltage": mv / 1000,
    }


def _air_common(out: Values, voc_hi: int, nox_hi: int, flags: int) -> None:
    voc = (voc_hi << 1) | ((flags >> 6) & 1)
    nox = (nox_hi << 1) | ((flags >> 7) & 1)
    if voc != 0x1FF:
        out["voc_index"] = voc
    if nox != 0x1FF:
        out["nox_index"] = nox
    out["calibration_in_progress"] = bool(flags & 1)


def _decode_df6(data: bytes) -> Values:
    _, t, h, p, pm25, co2, voc_hi, nox_hi, lum, _res, seq, flags, _mac = _DF6.unpack(data)
    out: Values = {}
    _thp(out, t, h, p)
    if pm25 != 0xFFFF:
        out["pm2_5"] = round(pm25 / 10, 1)
    if co2 != 0xFFFF:
        out["co2"] = co2
    _air_common(out, voc_hi, nox_hi, flags)
    if lum != 0xFF:
        out["illuminance"] = round(math.exp(lum * _LUX_DELTA) - 1, 2) if lum else 0.0
    out["measurement_sequence"] = seq
    return out


def _decode_e1(data: bytes) -> Values:
    (_, t, h, p, pm1, pm25, pm4, pm10, co2, voc_hi, nox_hi, lum, _res, seq, flags, _r2, _mac) = (
        _E1.unpack(data)
    )
    out: Values = {}
    _thp(out, t, h, p)
    for name, v in (("pm1_0", pm1), ("pm2_5", pm25), ("pm4_0", pm4), ("pm10", pm10)):
        if v != 0xFFFF:
            out[name] = round(v / 10, 1)
    if co2 != 0xFFFF:
        out["co2"] = co2
    _air_common(out, voc_hi, nox_hi, flags)
    lux = int.from_bytes(lum, "big")
    if lux != 0xFFFFFF:
        out["illuminance"] = round(lux / 100, 2)
    n = int.from_bytes(seq, "big")
    if n != 0xFFFFFF:
        out["measurement_sequence"] = n
    return out


# ---------------------------------------------------------------- encoder


def _clip(v: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(v)))


def _u(
    values: Mapping[str, float | int | bool],
    name: str,
    scale: float,
    offset: float,
    hi: int,
    lo: int = 0,
    na: int | None = None,
) -> int:
    """Unsigned field: sentinel `na` (default `hi + 1`) when the value is missing."""
    v = values.get(name)
    if v is None:
        return hi + 1 if na is None else na
    return _clip((float(v) - offset) * scale, lo, hi)


def _s16(values: Mapping[str, float | int | bool], name: str, scale: float) -> int:
    v = values.get(name)
    return -32768 if v is None else _clip(float(v) * scale, -32767, 32767)


def encode_payload(
    values: Mapping[str, float | int | bool], data_format: int | str = 5, mac: bytes = b"\xff" * 6
) -> bytes:
    """Manufacturer-data payload (after the company id) for the given values."""
    fmt = 0xE1 if isinstance(data_format, str) and data_format.upper() == "E1" else data_format
    if fmt == 5:
        bv = _u(values, "battery_voltage", 1000, 1.6, 2046)
        tx = values.get("tx_power")
        txc = 31 if tx is None else _clip((float(tx) + 40) / 2, 0, 30)
        return _DF5.pack(
            5,
            _s16(values, "temperature", 200),
            _u(values, "humidity", 400, 0, 65534),
            _u(values, "pressure", 100, 500, 65534),
            _s16(values, "acceleration_x", 1000),
            _s16(values, "acceleration_y", 1000),
            _s16(values, "acceleration_z", 1000),
            (bv << 5) | txc,
            _u(values, "movement_counter", 1, 0, 254),
            _u(values, "measurement_sequence", 1, 0, 65534),
            mac,
        )
    if fmt == 3:
        t = float(values.get("temperature", 0.0))
        centi = min(12799, round(abs(t) * 100))
        t_int = (centi // 100) | (0x80 if t < 0 and centi else 0)
        return _DF3.pack(
            3,
            _u(values, "humidity", 2, 0, 255, na=0),
            t_int,
            centi % 100,
            _u(values, "pressure", 100, 500, 65535, na=0),
            _clip(float(values.get("acceleration_x", 0)) * 1000, -32768, 32767),
            _clip(float(values.get("acceleration_y", 0)) * 1000, -32768, 32767),
            _clip(float(values.get("acceleration_z", 0)) * 1000, -32768, 32767),
            _u(values, "battery_voltage", 1000, 0, 65535, na=0),
        )
    voc = _u(values, "voc_index", 1, 0, 510)
    nox = _u(values, "nox_index", 1, 0, 510)
    flags = (
        ((voc & 1) << 6) | ((nox & 1) << 7) | (1 if values.get("calibration_in_progress") else 0)
    )
    common = (
        _s16(values, "temperature", 200),
        _u(values, "humidity", 400, 0, 65534),
        _u(values, "pressure", 100, 500, 65534),
    )
    if fmt == 6:
        lux = values.get("illuminance")
        code = (
            255 if lux is None else _clip(math.log(max(0.0, float(lux)) + 1) / _LUX_DELTA, 0, 254)
        )
        return _DF6.pack(
            6,
            *common,
            _u(values, "pm2_5", 10, 0, 65534),
            _u(values, "co2", 1, 0, 65534),
            voc >> 1,
            nox >> 1,
            code,
            0xFF,
            _u(values, "measurement_sequence", 1, 0, 255, na=0),
            flags,
            mac[3:],
        )
    if fmt == 0xE1:
        return _E1.pack(
            0xE1,
            *common,
            *(_u(values, n, 10, 0, 65534) for n in ("pm1_0", "pm2_5", "pm4_0", "pm10")),
            _u(values, "co2", 1, 0, 65534),
            voc >> 1,
            nox >> 1,
            _u(values, "illuminance", 100, 0, 0xFFFFFE).to_bytes(3, "big"),
            b"\xff" * 3,
            _u(values, "measurement_sequence", 1, 0, 0xFFFFFE).to_bytes(3, "big"),
            flags,
            b"\xff" * 5,
            mac,
        )
    raise ValueError(f"ruuvi: cannot encode data format {data_format!r}")


def encode(
    address: str,
    values: Mapping[str, float | int | bool],
    *,
    data_format: int | str = 5,
    name: str | None = "Ruuvi ABCD",
    rssi: int | None = -60,
) -> Advert:
    """A Ruuvi advert carrying `values` in the given data format."""
    payload = encode_payload(values, data_format, mac_bytes(address))
    return Advert(
        address=address.upper(),
        name=name,
        rssi=rssi,
        manufacturer_data={COMPANY_ID: payload},
        service_data={},
    )
