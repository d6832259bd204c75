"""Published BLE advertisement test vectors, with the values our decoders must return exactly.

Sources: docs.ruuvi.com data formats 3/5/6/E1 (valid, maximum, minimum, invalid cases;
reserved "XX" bytes set to FF); bthome-ble tests/test_parser_v2.py (incl. the encrypted
example, key 231d39c1d7cc1ab1aee224cd096db932); ble_monitor tests/test_atc_parser.py (ATC1441,
pvvx custom, pvvx encrypted) and xiaomi-ble tests/test_parser.py (MiBeacon V3 and encrypted
V5); aranet4 tests/test_advertisements.py.
"""

from __future__ import annotations

from typing import NamedTuple

from drivers.ble.decoders import Advert, uuid16


class Vector(NamedTuple):
    """One published advert and its expected decoded values."""

    id: str
    family: str
    advert: Advert
    key: bytes | None
    expected: dict[str, float | int | str | bool] | None


def ruuvi_adv(hexdata: str, address: str = "CB:B8:33:4C:88:4F") -> Advert:
    """A Ruuvi advert with the given manufacturer payload (hex)."""
    return Advert(address, "Ruuvi 884F", -60, {0x0499: bytes.fromhex(hexdata)}, {})


def sd_adv(uuid: int, data: bytes | str, address: str, name: str | None = None) -> Advert:
    """An advert with one service-data entry."""
    raw = bytes.fromhex(data) if isinstance(data, str) else data
    return Advert(address, name, -60, {}, {uuid16(uuid): raw}, (uuid16(uuid),))


def aranet_adv(data: bytes, name: str | None) -> Advert:
    """An Aranet advert with the given manufacturer payload."""
    return Advert("00:11:22:33:44:55", name, -60, {0x0702: data}, {})


BTHOME_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
ATC_KEY = bytes.fromhex("b9ea895fac7eea6d30532432a516f3a3")
MIBEACON_KEY = bytes.fromhex("e9ea895fac7cca6d30532432a516f3a8")
ARANET4_DATA = b"!\x05\x03\x01\x00\x05\x00\x01C\x04\x9f\x01\x8b'5\x0c\x02<\x00\x10\x00U"
ARANET2_DATA = b"\x01!\x04\x04\x01\x00\x00\x00\x00\x00\x99\x01\x00\x00\n\x02\x00;\x09x\x00R\x00d"
ARANET_RN_DATA = (
    b"\x03!\x04\x06\x01\x00\x00\x00\x07\x00\xfe\x01\xc9'\xce\x01\x00d\x01X\x02\xf6\x01\x08"
)

_DF5_MAX = dict(
    temperature=163.835,
    humidity=163.835,
    pressure=1155.34,
    acceleration_x=32.767,
    acceleration_y=32.767,
    acceleration_z=32.767,
    battery_voltage=3.646,
    tx_power=20,
    movement_counter=254,
    measurement_sequence=65534,
)
_DF5_MIN = dict(
    temperature=-163.835,
    humidity=0.0,
    pressure=500.0,
    acceleration_x=-32.767,
    acceleration_y=-32.767,
    acceleration_z=-32.767,
    battery_voltage=1.6,
    tx_power=-40,
    movement_counter=0,
    measurement_sequence=0,
)

VECTORS: list[Vector] = [
    # --- Ruuvi data format 5 (RAWv2): docs.ruuvi.com test vectors
    Vector(
        "ruuvi-df5-valid",
        "ruuvi",
        ruuvi_adv("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
        None,
        dict(
            temperature=24.3,
            humidity=53.49,
            pressure=1000.44,
            acceleration_x=0.004,
            acceleration_y=-0.004,
            acceleration_z=1.036,
            battery_voltage=2.977,
            tx_power=4,
            movement_counter=66,
            measurement_sequence=205,
        ),
    ),
    Vector(
        "ruuvi-df5-max",
        "ruuvi",
        ruuvi_adv("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F"),
        None,
        _DF5_MAX,
    ),
    Vector(
        "ruuvi-df5-min",
        "ruuvi",
        ruuvi_adv("058001000000008001800180010000000000CBB8334C884F"),
        None,
        _DF5_MIN,
    ),
    Vector(
        "ruuvi-df5-invalid",
        "ruuvi",
        ruuvi_adv("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"),
        None,
        {},
    ),
    # --- Ruuvi data format 3 (RAWv1)
    Vector(
        "ruuvi-df3-valid",
        "ruuvi",
        ruuvi_adv("03291A1ECE1EFC18F94202CA0B53"),
        None,
        dict(
            humidity=20.5,
            temperature=26.3,
            pressure=1027.66,
            acceleration_x=-1.0,
            acceleration_y=-1.726,
            acceleration_z=0.714,
            battery_voltage=2.899,
        ),
    ),
    Vector(
        "ruuvi-df3-max",
        "ruuvi",
        ruuvi_adv("03FF7F63FFFF7FFF7FFF7FFFFFFF"),
        None,
        dict(
            humidity=127.5,
            temperature=127.99,
            pressure=1155.35,
            acceleration_x=32.767,
            acceleration_y=32.767,
            acceleration_z=32.767,
            battery_voltage=65.535,
        ),
    ),
    Vector(
        "ruuvi-df3-min",
        "ruuvi",
        ruuvi_adv("0300FF6300008001800180010000"),
        None,
        dict(
            humidity=0.0,
            temperature=-127.99,
            pressure=500.0,
            acceleration_x=-32.767,
            acceleration_y=-32.767,
            acceleration_z=-32.767,
            battery_voltage=0.0,
        ),
    ),
    # --- Ruuvi data format 6 (Ruuvi Air, BT4)
    Vector(
        "ruuvi-df6-valid",
        "ruuvi",
        ruuvi_adv("06170C5668C79E007000C90501D9FFCD004C884F"),
        None,
        dict(
            temperature=29.5,
            humidity=55.3,
            pressure=1011.02,
            pm2_5=11.2,
            co2=201,
            voc_index=10,
            nox_index=2,
            calibration_in_progress=False,
            illuminance=13026.67,
            measurement_sequence=205,
        ),
    ),
    Vector(
        "ruuvi-df6-max",
        "ruuvi",
        ruuvi_adv("067FFF9C40FFFE27109C40FAFAFEFFFF074C8F4F"),
        None,
        dict(
            temperature=163.835,
            humidity=100.0,
            pressure=1155.34,
            pm2_5=1000.0,
            co2=40000,
            voc_index=500,
            nox_index=500,
            calibration_in_progress=True,
            illuminance=65535.0,
            measurement_sequence=255,
        ),
    ),
    Vector(
        "ruuvi-df6-min",
        "ruuvi",
        ruuvi_adv("0680010000000000000000000000FF00004C884F"),
        None,
        dict(
            temperature=-163.835,
            humidity=0.0,
            pressure=500.0,
            pm2_5=0.0,
            co2=0,
            voc_index=0,
            nox_index=0,
            calibration_in_progress=False,
            illuminance=0.0,
            measurement_sequence=0,
        ),
    ),
    Vector(
        "ruuvi-df6-invalid",
        "ruuvi",
        ruuvi_adv("068000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
        None,
        dict(calibration_in_progress=True, measurement_sequence=255),
    ),
    # --- Ruuvi data format E1 (Ruuvi Air, BT5 extended)
    Vector(
        "ruuvi-e1-valid",
        "ruuvi",
        ruuvi_adv(
            "E1170C5668C79E0065007004BD11CA00C90A0213E0ACFFFFFFDECDEE01FFFFFFFFFFCBB8334C884F"
        ),
        None,
        dict(
            temperature=29.5,
            humidity=55.3,
            pressure=1011.02,
            pm1_0=10.1,
            pm2_5=11.2,
            pm4_0=121.3,
            pm10=455.4,
            co2=201,
            voc_index=20,
            nox_index=4,
            calibration_in_progress=True,
            illuminance=13027.0,
            measurement_sequence=14601710,
        ),
    ),
    Vector(
        "ruuvi-e1-max",
        "ruuvi",
        ruuvi_adv(
            "E17FFF9C40FFFE27102710271027109C40FAFADC28F0FFFFFFFFFFFE3FFFFFFFFFFFCBB8334C884F"
        ),
        None,
        dict(
            temperature=163.835,
            humidity=100.0,
            pressure=1155.34,
            pm1_0=1000.0,
            pm2_5=1000.0,
            pm4_0=1000.0,
            pm10=1000.0,
            co2=40000,
            voc_index=500,
            nox_index=500,
            calibration_in_progress=True,
            illuminance=144284.0,
            measurement_sequence=16777214,
        ),
    ),
    Vector(
        "ruuvi-e1-min",
        "ruuvi",
        ruuvi_adv(
            "E1800100000000000000000000000000000000000000FFFFFF00000000FFFFFFFFFFCBB8334C884F"
        ),
        None,
        dict(
            temperature=-163.835,
            humidity=0.0,
            pressure=500.0,
            pm1_0=0.0,
            pm2_5=0.0,
            pm4_0=0.0,
            pm10=0.0,
            co2=0,
            voc_index=0,
            nox_index=0,
            calibration_in_progress=False,
            illuminance=0.0,
            measurement_sequence=0,
        ),
    ),
    Vector(
        "ruuvi-e1-invalid",
        "ruuvi",
        ruuvi_adv(
            "E18000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFFFFFFFFFFFFFFFF"
        ),
        None,
        dict(calibration_in_progress=False),
    ),
    # --- BTHome v2 (bthome-ble tests)
    Vector(
        "bthome-encrypted",
        "bthome",
        sd_adv(
            0xFCD2,
            b"\x41\xa4\x72\x66\xc9\x5f\x73\x00\x11\x22\x33\x78\x23\x72\x14",
            "54:48:E6:8F:80:A5",
        ),
        BTHOME_KEY,
        dict(temperature=25.06, humidity=50.55),
    ),
    Vector(
        "bthome-encrypted-with-mac",
        "bthome",
        sd_adv(
            0xFCD2,
            b"\x43\xa5\x80\x8f\xe6\x48\x54\xf1\x96\xc0\x6f\xfb\x49\x00\x11\x22\x33\xf0\x8e\xcb\xde",
            "54:48:E6:8F:80:A5",
        ),
        BTHOME_KEY,
        dict(temperature=25.06, humidity=50.55),
    ),
    Vector(
        "bthome-encrypted-counter-1122867",
        "bthome",
        sd_adv(
            0xFCD2,
            b"\x41\xe4\x45\xf3\xc9\x96\x2b\x33\x22\x11\x00\x6c\x7c\x45\x19",
            "54:48:E6:8F:80:A5",
        ),
        BTHOME_KEY,
        dict(temperature=25.06, humidity=50.55),
    ),
    Vector(
        "bthome-temperature-humidity",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x02\xca\x09\x03\xbf\x13", "A4:C1:38:8D:18:B2"),
        None,
        dict(temperature=25.06, humidity=50.55),
    ),
    Vector(
        "bthome-packet-temp-hum-battery",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x00\x09\x01\x5d\x02\x5d\x09\x03\xb7\x18", "A4:C1:38:8D:18:B2"),
        None,
        dict(packet_id=9, battery=93, temperature=23.97, humidity=63.27),
    ),
    Vector(
        "bthome-pressure",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x04\x13\x8a\x01", "A4:C1:38:8D:18:B2"),
        None,
        dict(pressure=1008.83),
    ),
    Vector(
        "bthome-pressure-with-mac",
        "bthome",
        sd_adv(0xFCD2, b"\x42\xb2\x18\x8d\x38\xc1\xa4\x04\x13\x8a\x01", "A4:C1:38:8D:18:B2"),
        None,
        dict(pressure=1008.83),
    ),
    Vector(
        "bthome-illuminance",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x05\x13\x8a\x14", "A4:C1:38:8D:18:B2"),
        None,
        dict(illuminance=13460.67),
    ),
    Vector(
        "bthome-mass-kg",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x06\x5e\x1f", "A4:C1:38:8D:18:B2"),
        None,
        dict(mass=80.3),
    ),
    Vector(
        "bthome-dew-point",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x08\xca\x06", "A4:C1:38:8D:18:B2"),
        None,
        dict(dew_point=17.38),
    ),
    Vector(
        "bthome-count",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x09\x60", "A4:C1:38:8D:18:B2"),
        None,
        dict(count=96),
    ),
    Vector(
        "bthome-energy",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x0a\x13\x8a\x14", "A4:C1:38:8D:18:B2"),
        None,
        dict(energy=1346.067),
    ),
    Vector(
        "bthome-power",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x0b\x02\x1b\x00", "A4:C1:38:8D:18:B2"),
        None,
        dict(power=69.14),
    ),
    Vector(
        "bthome-voltage",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x0c\x02\x0c", "A4:C1:38:8D:18:B2"),
        None,
        dict(voltage=3.074),
    ),
    Vector(
        "bthome-battery-then-unknown-object",
        "bthome",
        sd_adv(0xFCD2, b"\x40\x01\x5d\xfe\x5d\x09\x03\xb7\x18", "A4:C1:38:8D:18:B2"),
        None,
        dict(battery=93),
    ),
    # bthome.io format examples: co2, pm2.5, pm10, moisture, motion, window, button, dimmer, 2 temps
    Vector(
        "bthome-co2-pm",
        "bthome",
        sd_adv(0xFCD2, "400d120c0e021c12e204", "A4:C1:38:8D:18:B2"),
        None,
        dict(pm2_5=3090, pm10=7170, co2=1250),
    ),
    Vector(
        "bthome-moisture",
        "bthome",
        sd_adv(0xFCD2, "4014020c", "A4:C1:38:8D:18:B2"),
        None,
        dict(moisture=30.74),
    ),
    Vector(
        "bthome-binary-events",
        "bthome",
        sd_adv(0xFCD2, "402101 2d00 3a04 3c0103".replace(" ", ""), "A4:C1:38:8D:18:B2"),
        None,
        dict(motion=True, window=False, button="long_press", dimmer=-3),
    ),
    Vector(
        "bthome-two-temperatures",
        "bthome",
        sd_adv(0xFCD2, "4002ca09 45 1301".replace(" ", ""), "A4:C1:38:8D:18:B2"),
        None,
        dict(temperature_1=25.06, temperature_2=27.5),
    ),
    # --- Xiaomi custom firmware (ble_monitor tests): service data after the 0x181A UUID
    Vector(
        "xiaomi-atc1441",
        "xiaomi",
        sd_adv(0x181A, "a4c1380283f400a22f5f0bf819", "A4:C1:38:02:83:F4"),
        None,
        dict(temperature=16.2, humidity=47, battery=95, battery_voltage=3.064, packet_id=25),
    ),
    Vector(
        "xiaomi-atc1441-ext",
        "xiaomi",
        sd_adv(0x181A, "A4C138BC7C4E0102284F0B6720", "A4:C1:38:BC:7C:4E"),
        None,
        dict(temperature=25.8, humidity=40, battery=79, battery_voltage=2.919, packet_id=32),
    ),
    Vector(
        "xiaomi-pvvx",
        "xiaomi",
        sd_adv(0x181A, "f4830238c1a4a9066911b60b58f70d", "A4:C1:38:02:83:F4"),
        None,
        dict(temperature=17.05, humidity=44.57, battery_voltage=2.998, battery=88, packet_id=247),
    ),
    Vector(
        "xiaomi-pvvx-v2.9",
        "xiaomi",
        sd_adv(0x181A, "B2188D38C1A42B089011F70A43200F", "A4:C1:38:8D:18:B2"),
        None,
        dict(temperature=20.91, humidity=44.96, battery_voltage=2.807, battery=67, packet_id=32),
    ),
    Vector(
        "xiaomi-pvvx-ext",
        "xiaomi",
        sd_adv(0x181A, "8B376338C1A4CE0913107F0B521204", "A4:C1:38:63:37:8B"),
        None,
        dict(temperature=25.1, humidity=41.15, battery_voltage=2.943, battery=82, packet_id=18),
    ),
    Vector(
        "xiaomi-pvvx-encrypted",
        "xiaomi",
        sd_adv(0x181A, "11d603fbfa7b6dfb1e26fd", "A4:C1:38:8D:18:B2"),
        ATC_KEY,
        dict(temperature=23.45, humidity=41.73, battery=61, packet_id=17),
    ),
    # --- Stock MiBeacon (xiaomi-ble / ble_monitor tests): service data after the 0xFE95 UUID
    Vector(
        "xiaomi-mibeacon-v3-lywsd03mmc",
        "xiaomi",
        sd_adv(0xFE95, "50305b05034c94b438c1a40d10041001ea01", "A4:C1:38:B4:94:4C"),
        None,
        dict(temperature=27.2, humidity=49.0, packet_id=3),
    ),
    Vector(
        "xiaomi-mibeacon-v3-cgc1",
        "xiaomi",
        sd_adv(
            0xFE95, b"P0<\x0c\x03L\x94\xb48\xc1\xa4\r\x10\x04\x10\x01\xea\x01", "A4:C1:38:B4:94:4C"
        ),
        None,
        dict(temperature=27.2, humidity=49.0, packet_id=3),
    ),
    Vector(
        "xiaomi-mibeacon-v5-encrypted",
        "xiaomi",
        sd_adv(
            0xFE95,
            b"XX[\x05P\xf4\x83\x028\xc1\xa4\x95\xefXv<&\x00\x00\x97\xe2\xab\xb5",
            "A4:C1:38:02:83:F4",
        ),
        MIBEACON_KEY,
        dict(humidity=46, packet_id=80),
    ),
    Vector(
        "xiaomi-mibeacon-v5-lywsd02mmc",
        "xiaomi",
        sd_adv(
            0xFE95,
            b"XX\xe4\x16,\x84SV8\xc1\xa4+n\xf2\xe9\x12\x00\x00l\x88M\x9e",
            "A4:C1:38:56:53:84",
        ),
        bytes.fromhex("a115210eed7a88e50ad52662e732a9fb"),
        dict(humidity=58, packet_id=44),
    ),
    Vector(
        "xiaomi-mibeacon-formaldehyde",
        "xiaomi",
        sd_adv(0xFE95, "5040df0201df02008d7cc41010027d00", "C4:7C:8D:00:02:DF"),
        None,
        dict(formaldehyde=1.25, packet_id=1),
    ),
    # --- Aranet (aranet4 package tests)
    # the aranet4 package rounds temperature to 0.1 °C (20.8); the wire value is 415 x 0.05
    Vector(
        "aranet4",
        "aranet4",
        aranet_adv(ARANET4_DATA, "Aranet4 12345"),
        None,
        dict(
            co2=1091,
            temperature=20.75,
            pressure=1012.3,
            humidity=53,
            battery=12,
            status="yellow",
            interval=60,
            age=16,
            packet_id=85,
        ),
    ),
    Vector(
        "aranet4-noname",
        "aranet4",
        aranet_adv(ARANET4_DATA, None),
        None,
        dict(
            co2=1091,
            temperature=20.75,
            pressure=1012.3,
            humidity=53,
            battery=12,
            status="yellow",
            interval=60,
            age=16,
            packet_id=85,
        ),
    ),
    Vector(
        "aranet4-old-fw",
        "aranet4",
        aranet_adv(b"\x21\x0a\x04\x00\x00\x00\x00", "Aranet4 12345"),
        None,
        None,
    ),
    Vector(
        "aranet4-no-integrations",
        "aranet4",
        aranet_adv(b"\x01\x00\x02\x01\x00\x00\x00", "Aranet4 12345"),
        None,
        None,
    ),
    Vector(
        "aranet2",
        "aranet4",
        aranet_adv(ARANET2_DATA, "Aranet2 278F8"),
        None,
        # the aranet4 package rounds to 0.1 °C (20.5); the wire value is 409 x 0.05
        dict(
            temperature=20.45,
            humidity=52.2,
            battery=59,
            status_humidity="under",
            status_temperature="over",
            interval=120,
            age=82,
            packet_id=100,
        ),
    ),
    Vector(
        "aranet-radon",
        "aranet4",
        aranet_adv(ARANET_RN_DATA, "AranetRn 298C9"),
        None,
        dict(
            radon=7,
            temperature=25.5,
            pressure=1018.5,
            humidity=46.2,
            battery=100,
            status="green",
            interval=600,
            age=502,
            packet_id=8,
        ),
    ),
]
