"""`sim` driver: a simulated device of any family, its wire bytes decoded in-process.

Keys: ``family`` = any driver name but ``sim``: "nmea" | "pms5003" | "sds011" | "modbus" |
"senseair_s8" | "lines" | "ruuvi" | "bthome" | "xiaomi" | "aranet4" | "ble_nus" (required; the
BLE advert families build real advertisements and decode them with the real decoders; "modbus"
polls a simulated Senseair S8 slave with the generic Modbus decoder; "ble_nus" is a `lines`
stream arriving in BLE-MTU-sized notifications),
``interval`` (time between samples, default 1 s), ``format`` ("json" | "csv" | "kv", lines only).
The family's simulator produces the same bytes a real device sends; the family's own protocol
decodes them, so the demo exercises the real decoders without hardware.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from drivers.base import Driver, StreamProtocol
from edge_common.units import parse_duration

Family = Literal["nmea", "pms5003", "sds011", "modbus", "senseair_s8", "lines", "ruuvi", "bthome", "xiaomi",
                 "aranet4", "ble_nus"]
FAMILIES: tuple[str, ...] = ("nmea", "pms5003", "sds011", "modbus", "senseair_s8", "lines", "ruuvi", "bthome",
                             "xiaomi", "aranet4", "ble_nus")
BLE_FAMILIES = ("ruuvi", "bthome", "xiaomi", "aranet4")
NUS_MTU_PAYLOAD = 20  # bytes per notification at the default ATT MTU of 23


class SimOptions(BaseModel):
    """Keys of a `sim` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family
    interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=86400)] = 1.0
    format: Literal["json", "csv", "kv"] = "json"


class _ModbusS8Protocol(StreamProtocol):
    """Poll-reply adapter: each fed chunk is one (request + reply) exchange of the S8 simulator."""

    def feed(self, data: bytes) -> list[dict[str, float | int | str | bool]]:
        from drivers.modbus.protocol import S8_REGISTERS, ModbusReplyError, decode_block, parse_reply, plan_reads

        request, answer = data[:8], data[8:]
        try:
            words = parse_reply(request, answer)
        except ModbusReplyError as e:
            self.errors[e.kind] += 1
            return []
        self.frames += 1
        return [decode_block(plan_reads(S8_REGISTERS)[0], words)]


def _mtu_split(data: bytes) -> list[bytes]:
    """`data` as the NUS notifications that carry it (at most NUS_MTU_PAYLOAD bytes each)."""
    return [data[i:i + NUS_MTU_PAYLOAD] for i in range(0, len(data), NUS_MTU_PAYLOAD)]


class _NusProtocol(StreamProtocol):
    """Feeds each notification of a chunk to the wrapped `lines` protocol (reassembly as over BLE)."""

    def __init__(self, inner: StreamProtocol) -> None:
        super().__init__()
        self.inner = inner
        self.errors = inner.errors

    def feed(self, data: bytes) -> list[dict[str, float | int | str | bool]]:
        out: list[dict[str, float | int | str | bool]] = []
        for part in _mtu_split(data):
            out += self.inner.feed(part)
        self.frames = self.inner.frames
        return out

    def flush(self) -> list[dict[str, float | int | str | bool]]:
        return self.inner.flush()


def source(family: str, fmt: str = "json", start: float | None = None) -> tuple[Iterator[bytes], StreamProtocol]:
    """(endless wire-byte chunks, a fresh protocol that decodes them) for a family."""
    if family == "nmea":
        from drivers.nmea.protocol import NmeaProtocol
        from drivers.nmea.simulator import epoch_bytes, fixes

        return (epoch_bytes(f) for f in fixes(start=start)), NmeaProtocol()
    if family == "pms5003":
        from drivers.pms5003 import simulator as pms
        from drivers.pms5003.protocol import Pms5003Protocol

        return (pms.frame_bytes(s) for s in pms.samples()), Pms5003Protocol()
    if family == "sds011":
        from drivers.sds011 import simulator as sds
        from drivers.sds011.protocol import Sds011Protocol

        return (sds.frame_bytes(s) for s in sds.samples()), Sds011Protocol()
    if family in ("senseair_s8", "modbus"):
        from drivers.modbus.simulator import co2_values, s8_bus_bytes

        return (s8_bus_bytes(c) for c in co2_values()), _ModbusS8Protocol()
    if family in ("lines", "ble_nus"):
        from drivers.lines import simulator as ls
        from drivers.lines.protocol import LinesOptions, LinesProtocol

        def chunks() -> Iterator[bytes]:
            if fmt == "csv":
                yield ls.CSV_HEADER
            for s in ls.samples():
                yield ls.line_bytes(s, fmt)  # type: ignore[arg-type]

        if family == "ble_nus":  # one sample's line, split the way NUS notifications carry it
            return chunks(), _NusProtocol(LinesProtocol(LinesOptions.model_validate({"fields": ls.FIELDS})))

        return chunks(), LinesProtocol(LinesOptions.model_validate({"fields": ls.FIELDS}))
    raise ValueError(f"unknown family {family!r}")


def classroom(seed: int = 0) -> Iterator[dict[str, float | int]]:
    """A classroom's air over a school day: CO2 rises while occupied, temperature follows."""
    import math

    n = seed
    while True:
        occupied = (n // 600) % 2 == 0
        co2 = 450 + (900 if occupied else 100) * (1 - math.exp(-(n % 600) / 200))
        yield {"co2": int(co2), "temperature": round(20.5 + co2 / 1000, 2), "humidity": round(35 + co2 / 100, 1),
               "pressure": 1013.2, "battery": 92, "battery_voltage": 2.95, "n": n}
        n += 1


def ble_source(family: str, address: str) -> Iterator[dict[str, float | int | str | bool]]:
    """Decoded values of real adverts built by the family's encoder (scanner bypassed)."""
    from drivers.ble.decoders import aranet4, bthome, ruuvi, xiaomi

    for v in classroom():
        if family == "bthome":
            out = bthome.decode(bthome.encode(address, {"battery": v["battery"], "temperature": v["temperature"],
                                                        "humidity": v["humidity"], "co2": v["co2"]}))
        elif family == "xiaomi":
            out = xiaomi.decode(xiaomi.encode(address, {"temperature": v["temperature"], "humidity": v["humidity"],
                                                        "battery": v["battery"],
                                                        "battery_voltage": v["battery_voltage"]},
                                              packet_id=int(v["n"])))
        elif family == "ruuvi":
            adv = ruuvi.encode(address, {"temperature": v["temperature"], "humidity": v["humidity"],
                                         "pressure": v["pressure"], "battery_voltage": v["battery_voltage"],
                                         "measurement_sequence": v["n"] % 65535})
            out = ruuvi.decode(adv)
        else:
            adv = aranet4.encode(address, {"co2": v["co2"], "temperature": v["temperature"], "pressure": v["pressure"],
                                           "humidity": int(v["humidity"]), "battery": v["battery"], "interval": 60,
                                           "age": 1})
            out = aranet4.decode(adv)
        if out:
            yield out


class SimDriver(Driver):
    """Emits simulated readings every `interval` seconds; no hardware."""

    name = "sim"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "none"
    Options: ClassVar[type[BaseModel]] = SimOptions
    default_expected_interval = 30.0

    async def run(self) -> None:
        o: SimOptions = self.options
        if o.family in BLE_FAMILIES:
            self.ctx.set_link("connected", f"simulated {o.family}")
            next_t = time.monotonic()
            for values in ble_source(o.family, self.device.address or "C7:F5:2A:A1:B2:C3"):
                self.ctx.emit(values)
                next_t += o.interval  # a fixed sampling grid, no drift (like the serial families)
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        chunks, proto = source(o.family, o.format)
        self.ctx.set_link("connected", f"simulated {o.family}")
        seen = proto.errors.copy()
        next_t = time.monotonic()
        for chunk in chunks:
            self.ctx.deliver(proto.feed(chunk) + proto.flush(), proto.errors, seen)
            next_t += o.interval
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
