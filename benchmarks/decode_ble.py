"""Throughput of the BLE advert decoders: adverts/s per family and variant.

Usage: python benchmarks/decode_ble.py [--seconds S]
Builds 256 distinct adverts per variant with the family encoders and decodes them in a loop
for about S seconds each (default 0.5), single-threaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.ble.decoders import Advert, aranet4, bthome, identify, ruuvi, xiaomi

KEY = bytes(range(16))
ADDR = "A4:C1:38:8D:18:B2"


def _variants() -> dict[
    str, tuple[Callable[[Advert, bytes | None], object], list[Advert], bytes | None]
]:
    r = range(256)
    return {
        "ruuvi df5": (
            ruuvi.decode,
            [
                ruuvi.encode(
                    "CB:B8:33:4C:88:4F",
                    {
                        "temperature": 20 + i / 100,
                        "humidity": 40 + i / 50,
                        "pressure": 1000 + i / 10,
                        "acceleration_x": 0.01,
                        "acceleration_y": -0.02,
                        "acceleration_z": 1.0,
                        "battery_voltage": 2.9,
                        "tx_power": 4,
                        "movement_counter": i % 255,
                        "measurement_sequence": i,
                    },
                )
                for i in r
            ],
            None,
        ),
        "ruuvi E1": (
            ruuvi.decode,
            [
                ruuvi.encode(
                    "CB:B8:33:4C:88:4F",
                    {
                        "temperature": 20 + i / 100,
                        "humidity": 40.0,
                        "pressure": 1000.0,
                        "pm2_5": i / 10,
                        "co2": 400 + i,
                        "voc_index": 100,
                        "nox_index": 1,
                        "illuminance": 300.0,
                        "measurement_sequence": i,
                    },
                    data_format="E1",
                )
                for i in r
            ],
            None,
        ),
        "bthome plain": (
            bthome.decode,
            [
                bthome.encode(
                    ADDR,
                    {"packet_id": i, "battery": 90, "temperature": 20 + i / 100, "humidity": 45.5},
                )
                for i in r
            ],
            None,
        ),
        "bthome encrypted": (
            bthome.decode,
            [
                bthome.encode(
                    ADDR,
                    {"packet_id": i, "battery": 90, "temperature": 20 + i / 100, "humidity": 45.5},
                    key=KEY,
                    counter=i,
                )
                for i in r
            ],
            KEY,
        ),
        "xiaomi pvvx": (
            xiaomi.decode,
            [
                xiaomi.encode(
                    ADDR,
                    {
                        "temperature": 20 + i / 100,
                        "humidity": 45.5,
                        "battery": 90,
                        "battery_voltage": 2.95,
                    },
                    packet_id=i,
                )
                for i in r
            ],
            None,
        ),
        "xiaomi atc1441": (
            xiaomi.decode,
            [
                xiaomi.encode(
                    ADDR,
                    {
                        "temperature": 20 + i / 10,
                        "humidity": 45,
                        "battery": 90,
                        "battery_voltage": 2.95,
                    },
                    fmt="atc1441",
                    packet_id=i,
                )
                for i in r
            ],
            None,
        ),
        "xiaomi mibeacon encrypted": (
            xiaomi.decode,
            [
                xiaomi.encode(
                    ADDR,
                    {"temperature": 20 + i / 10, "humidity": 45.5, "battery": 90},
                    fmt="mibeacon",
                    key=KEY,
                    packet_id=i,
                    ext_counter=i,
                )
                for i in r
            ],
            KEY,
        ),
        "aranet4": (
            aranet4.decode,
            [
                aranet4.encode(
                    "00:11:22:33:44:55",
                    {
                        "co2": 400 + i,
                        "temperature": 21.05,
                        "pressure": 1003.2,
                        "humidity": 40,
                        "battery": 80,
                    },
                )
                for i in r
            ],
            None,
        ),
    }


def bench(
    decode: Callable[[Advert, bytes | None], object],
    adverts: list[Advert],
    key: bytes | None,
    seconds: float,
    with_identify: bool = False,
) -> float:
    """Adverts decoded per second over about `seconds`."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for adv in adverts:
            if with_identify:
                identify(adv)
            decode(adv, key)
        n += len(adverts)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    args = ap.parse_args()
    print(f"{'decoder':28} {'adverts/s':>12} {'with identify()':>16}")
    for name, (decode, adverts, key) in _variants().items():
        for adv in adverts:  # sanity: every advert decodes
            assert decode(adv, key), name
        rate = bench(decode, adverts, key, args.seconds)
        rate_id = bench(decode, adverts, key, args.seconds, with_identify=True)
        print(f"{name:28} {rate:12,.0f} {rate_id:16,.0f}")


if __name__ == "__main__":
    main()
