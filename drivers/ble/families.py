"""The BLE families' descriptors (entry points `ruuvi`, `bthome`, `xiaomi`, `aranet4`, `ble_nus`).

Plain data: reading them imports neither bleak nor a decoder.
"""

from __future__ import annotations

from drivers.family import DriverEntry, DriverFamily, ScanHint

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
_NUS_LE = bytes.fromhex(NUS_SERVICE.replace("-", ""))[::-1]  # little-endian on air


def _advert(name: str, title: str, cls: str, patterns: tuple[tuple[int, int, bytes], ...],
            quantities: tuple[str, ...] = ()) -> DriverFamily:
    return DriverFamily(
        name=name,
        title=title,
        drivers=(DriverEntry(name, f"drivers.ble.adverts:{cls}", quantities=quantities,
                             simulator=f"drivers.ble.simulator:{name}"),),
        ble_patterns=patterns,
        advert_decoder=f"drivers.ble.decoders.{name}",
    )


RUUVI = _advert("ruuvi", "RuuviTag data format 5 (RAWv2)", "RuuviDriver", ((0, 0xFF, b"\x99\x04"),),  # mfr 0x0499
                ("temperature", "humidity", "pressure", "battery_voltage"))
BTHOME = _advert("bthome", "BTHome v2 (plain and encrypted)", "BthomeDriver", ((0, 0x16, b"\xd2\xfc"),))  # 0xFCD2
XIAOMI = _advert("xiaomi", "LYWSD03MMC & co. (pvvx/ATC/MiBeacon)", "XiaomiDriver",
                 ((0, 0x16, b"\x1a\x18"), (0, 0x16, b"\x95\xfe")),  # 0x181A (pvvx/ATC), 0xFE95 (MiBeacon)
                 ("temperature", "humidity", "battery"))
ARANET4 = _advert("aranet4", "Aranet4 CO2", "Aranet4Driver", ((0, 0xFF, b"\x02\x07"),),  # manufacturer 0x0702
                  ("co2", "temperature", "humidity", "pressure"))
BLE_NUS = DriverFamily(
    name="ble_nus",
    title="Nordic UART Service notify stream (vehicle controllers, BMS), lines format",
    drivers=(DriverEntry("ble_nus", "drivers.ble.nus:BleNusDriver", simulator="drivers.ble.simulator:nus",
                         sim_device="drivers.lines.simulator:DEVICE_OPTIONS"),),
    ble_patterns=((0, 0x07, _NUS_LE), (0, 0x06, _NUS_LE)),  # NUS in the 128-bit UUID list
    scan_hints=(ScanHint(NUS_SERVICE, "ble_nus", "Nordic UART Service (connect to read)"),),
)
