"""Simulated BLE devices: real adverts built by each family's encoder, a NUS stream in MTU-sized notifications.

Used by the `sim` driver and the conformance tests; no bleak import. `SimulatedAdverts` is the advert
source the `sim` driver gives the real advert driver in place of the scanner (drivers/ble/hub.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from drivers.base import StreamProtocol
from drivers.ble.hub import AdvertHub, ScannerState, Subscription
from drivers.family import SimParams, Simulation
from drivers.transport.gatt import NOTIFY_PAYLOAD
from edge_common.model import Value
from edge_common.ticks import sleep_until

if TYPE_CHECKING:
    from drivers.ble.decoders import Advert

NUS_MTU_PAYLOAD = NOTIFY_PAYLOAD  # bytes per notification at the default ATT MTU of 23


def classroom(seed: int = 0) -> Iterator[dict[str, float | int]]:
    """A classroom's air over a school day: CO2 rises while occupied, temperature follows."""
    n = seed
    while True:
        occupied = (n // 600) % 2 == 0
        co2 = 450 + (900 if occupied else 100) * (1 - math.exp(-(n % 600) / 200))
        yield {"co2": int(co2), "temperature": round(20.5 + co2 / 1000, 2), "humidity": round(35 + co2 / 100, 1),
               "pressure": 1013.2, "battery": 92, "battery_voltage": 2.95, "n": n}
        n += 1


class AdvertDecoder:
    """Decodes each fed advert with a family's decoder module, counting malformed ones (`decode`)."""

    def __init__(self, module: ModuleType, key: bytes | None = None) -> None:
        self.module, self.key = module, key
        self.errors: Counter[str] = Counter()
        self.frames = 0

    def feed(self, data: Any) -> list[dict[str, Value]]:
        from drivers.ble.decoders import DecodeError

        try:
            values = self.module.decode(data, self.key)
        except DecodeError:
            self.errors["decode"] += 1
            return []
        if not values:
            return []
        self.frames += 1
        return [values]

    def flush(self) -> list[dict[str, Value]]:
        return []


class SimulatedAdverts(AdvertHub):
    """An advert source fed by a simulator: from the first subscription on, the first advert at once, then one
    every `interval` on the shared grid, each through the subscriptions' de-duplication and rate limit."""

    mode = "simulated"

    def __init__(self, adverts: Iterator[Advert], interval: float) -> None:
        super().__init__()
        self._adverts, self._interval = adverts, interval
        self._task: asyncio.Task[None] | None = None
        self.state = ScannerState.STOPPED
        self.adverts = 0

    @property
    def scanning(self) -> bool:
        return self.state == ScannerState.SCANNING

    def subscribed(self, sub: Subscription) -> None:
        if self._task is None:
            self.state = ScannerState.SCANNING
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-adverts")

    async def _run(self) -> None:
        k = math.floor(asyncio.get_running_loop().time() / self._interval)
        try:
            for adv in self._adverts:
                self.adverts += 1
                self.dispatch(adv, time.monotonic())
                k += 1
                await sleep_until(k * self._interval)
        finally:
            self.state = ScannerState.STOPPED

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def ruuvi(p: SimParams) -> Simulation:
    from drivers.ble.decoders import ruuvi as fam

    return (fam.encode(p.address, {"temperature": v["temperature"], "humidity": v["humidity"],
                                   "pressure": v["pressure"], "battery_voltage": v["battery_voltage"],
                                   "measurement_sequence": v["n"] % 65535})
            for v in classroom()), AdvertDecoder(fam)


def bthome(p: SimParams) -> Simulation:
    from drivers.ble.decoders import bthome as fam

    return (fam.encode(p.address, {"battery": v["battery"], "temperature": v["temperature"],
                                   "humidity": v["humidity"], "co2": v["co2"]})
            for v in classroom()), AdvertDecoder(fam)


def xiaomi(p: SimParams) -> Simulation:
    from drivers.ble.decoders import xiaomi as fam

    return (fam.encode(p.address, {"temperature": v["temperature"], "humidity": v["humidity"],
                                   "battery": v["battery"], "battery_voltage": v["battery_voltage"]},
                       packet_id=int(v["n"]))
            for v in classroom()), AdvertDecoder(fam)


def aranet4(p: SimParams) -> Simulation:
    from drivers.ble.decoders import aranet4 as fam

    return (fam.encode(p.address, {"co2": v["co2"], "temperature": v["temperature"], "pressure": v["pressure"],
                                   "humidity": int(v["humidity"]), "battery": v["battery"], "interval": 60,
                                   "age": 1})
            for v in classroom()), AdvertDecoder(fam)


def mtu_split(data: bytes) -> list[bytes]:
    """`data` as the NUS notifications that carry it (at most NUS_MTU_PAYLOAD bytes each)."""
    return [data[i:i + NUS_MTU_PAYLOAD] for i in range(0, len(data), NUS_MTU_PAYLOAD)]


class NusProtocol(StreamProtocol):
    """Feeds each notification of a chunk to the wrapped `lines` protocol (reassembly as over BLE)."""

    def __init__(self, inner: StreamProtocol) -> None:
        super().__init__()
        self.inner = inner
        self.errors = inner.errors

    def feed(self, data: bytes) -> list[dict[str, Value]]:
        out: list[dict[str, Value]] = []
        for part in mtu_split(data):
            out += self.inner.feed(part)
        self.frames = self.inner.frames
        return out

    def flush(self) -> list[dict[str, Value]]:
        return self.inner.flush()


def nus(p: SimParams) -> Simulation:
    """The classroom board's lines (as `lines`), split the way NUS notifications carry them."""
    from drivers.lines.simulator import simulation

    chunks, proto = simulation(p)
    assert isinstance(proto, StreamProtocol)
    return chunks, NusProtocol(proto)
