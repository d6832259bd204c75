"""`sim` driver: a simulated device of any registered family, its wire bytes decoded in-process.

Keys: ``family`` = the driver name to simulate, any registered driver with a simulator
(`DriverEntry.simulator`): "nmea" | "pms5003" | "sds011" | "modbus" | "senseair_s8" | "lines" |
"ruuvi" | "bthome" | "xiaomi" | "aranet4" | "ble_nus" and the plugins' (required; the BLE advert
families build real advertisements and decode them with the real decoders; "modbus" polls a
simulated Senseair S8 slave with the generic Modbus decoder; "ble_nus" is a `lines` stream
arriving in BLE-MTU-sized notifications),
``interval`` (time between samples, default 1 s), ``format`` ("json" | "csv" | "kv", lines only),
``vehicle`` (a name: "nmea", "vesc", "jbd_bms" and "can" devices naming the same vehicle show one
simulated EV moving, drivers/vehicle.py).
The family's simulator produces the same bytes a real device sends, and the family's real driver reads
them: a listening stream driver over a `SimulatorTransport`, a polling one (modbus, senseair_s8, vesc,
jbd_bms, obd2: a `DriverEntry.responder`) asking the simulated device every `interval`. Left on the
decoder loop below: BLE families (no radio), `can` (its driver opens the adapter itself) and the vehicle
profiles of vesc and jbd_bms (one shared ride, drivers/vehicle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from drivers.base import Driver
from drivers.family import Decoder, Responder, SimParams
from drivers.registry import registry
from edge_common.device import DeviceConfig, Duration
from edge_common.ticks import sleep_until

FAMILIES: tuple[str, ...] = tuple(registry().simulated())
if TYPE_CHECKING:
    Family = str
else:
    Family = Literal[FAMILIES]  # the registry's simulated drivers (an enum in `config schema`)
DEFAULT_ADDRESS = "C7:F5:2A:A1:B2:C3"


class SimOptions(BaseModel):
    """Keys of a `sim` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family
    interval: Annotated[Duration, Field(gt=0, le=86400)] = 1.0
    format: Literal["json", "csv", "kv"] = "json"
    vehicle: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @field_validator("vehicle")
    @classmethod
    def _profile(cls, v: str | None, info: ValidationInfo) -> str | None:
        from drivers.vehicle import FAMILIES as PROFILE

        family = info.data.get("family")
        if v is not None and family is not None and family not in PROFILE:
            raise ValueError(f"family {family!r} has no vehicle profile (only {', '.join(PROFILE)})")
        return v


def source(family: str, fmt: str = "json", start: float | None = None,
           address: str = DEFAULT_ADDRESS) -> tuple[Iterator[Any], Decoder]:
    """(endless wire chunks or adverts, a fresh decoder for them) for a simulated driver name."""
    reg = registry()
    if family not in reg.drivers or not reg.drivers[family].entry.simulator:
        raise ValueError(f"unknown family {family!r}")
    return reg.family_of(family).simulation(family, SimParams(format=fmt, address=address, start=start))


class SimDriver(Driver):
    """Emits simulated readings every `interval` seconds; no hardware."""

    name = "sim"
    transport: ClassVar[Literal["serial", "ble", "none"]] = "none"
    Options: ClassVar[type[BaseModel]] = SimOptions
    default_expected_interval = 30.0

    async def run(self) -> None:
        o: SimOptions = self.options
        fam = registry().family_of(o.family)
        cls = fam.driver_class(o.family)
        responder = fam.responder(o.family) if o.vehicle is None else None
        if responder is not None:  # a device that is asked: the real polling driver asks it
            await self._run_asked(cls, responder, fam.entry(o.family).sim_device)
            return
        if o.vehicle is not None:
            from drivers.vehicle import source as vehicle_source

            chunks, proto = vehicle_source(o.family, o.vehicle)
        else:
            chunks, proto = source(o.family, o.format, address=self.device.address or DEFAULT_ADDRESS)
        if _listens(cls):  # the real driver, its read loop and all, over the simulator's bytes
            await self._run_real(cls, chunks, fam.entry(o.family).sim_device)
            return
        self.ctx.set_link("connected", f"simulated {o.family}")
        seen = proto.errors.copy()
        # The first sample at once, then on the shared grid (multiples of `interval` on the loop
        # clock): no drift, and devices with the same interval sample in one wake-up.
        k = math.floor(asyncio.get_running_loop().time() / o.interval)
        for chunk in chunks:
            self.ctx.deliver(proto.feed(chunk) + proto.flush(), proto.errors, seen)
            k += 1
            await sleep_until(k * o.interval)

    def _real_device(self, sim_device: str | None, port: str, **extra: Any) -> DeviceConfig:
        """The device the real driver runs as: this one's id and tags, the family's simulator keys."""
        from drivers.family import resolve
        from edge_common.device import DeviceConfig

        o: SimOptions = self.options
        keys = dict(resolve(sim_device)) if sim_device else {}
        return DeviceConfig.model_validate({
            "id": self.device.id, "driver": o.family, "port": port, "tags": self.device.tags,
            "expected_interval": self.device.expected_interval, **keys, **extra})

    async def _run_asked(self, cls: type[Driver], responder: Responder, sim_device: str | None) -> None:
        """The real driver polling a simulated device every `interval`: over a responding transport
        (stream drivers) or a pseudo-terminal (drivers that open their port themselves, e.g. pymodbus)."""
        from drivers.stream import StreamDriver
        from drivers.transport.simulated import PtyResponder, RespondingTransport

        o: SimOptions = self.options
        poll = {"poll_interval": o.interval} if "poll_interval" in cls.Options.model_fields else {}
        if issubclass(cls, StreamDriver):
            transport = RespondingTransport(responder, f"simulated {o.family}")

            async def open_transport() -> RespondingTransport:
                return transport

            self.ctx.open_transport = open_transport
            await cls(self._real_device(sim_device, f"sim:{o.family}", **poll), self.ctx).run()
            return
        pty = PtyResponder(responder)
        serving = asyncio.create_task(pty.run())
        try:
            await cls(self._real_device(sim_device, pty.port, **poll), self.ctx).run()
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving

    async def _run_real(self, cls: type[Driver], chunks: Iterator[Any], sim_device: str | None) -> None:
        from drivers.transport.simulated import SimulatorTransport

        o: SimOptions = self.options
        device = self._real_device(sim_device, f"sim:{o.family}")
        transport = SimulatorTransport(chunks, o.interval, f"simulated {o.family}")

        async def open_transport() -> SimulatorTransport:
            return transport

        self.ctx.open_transport = open_transport
        await cls(device, self.ctx).run()


def _listens(cls: type[Driver]) -> bool:
    """A stream driver that only reads (a polling one would need its simulator to answer requests)."""
    from drivers.polled import PolledDriver
    from drivers.stream import StreamDriver

    return issubclass(cls, StreamDriver) and not issubclass(cls, PolledDriver)
