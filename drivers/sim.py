"""`sim` driver: a simulated device of any registered family, read by that family's real driver.

Keys: ``family`` = the driver name to simulate, any registered driver with a simulator
(`DriverEntry.simulator`): "nmea" | "pms5003" | "sds011" | "modbus" | "senseair_s8" | "lines" |
"ruuvi" | "bthome" | "xiaomi" | "aranet4" | "ble_nus" and the plugins' (required; the BLE advert
families build real advertisements; "modbus" polls a simulated Senseair S8 slave with the generic
Modbus decoder; "ble_nus" is a `lines` stream arriving in BLE-MTU-sized notifications),
``interval`` (time between samples, default 1 s), ``format`` ("json" | "csv" | "kv", lines only),
``vehicle`` (a name: "nmea", "vesc", "jbd_bms" and "can" devices naming the same vehicle show one
simulated EV moving, drivers/vehicle.py).
The family's simulator produces the same bytes (or adverts) a real device sends, and the family's real
driver reads them through the seam it reads a real device through, its read loop, error counting,
rate limits, idle flush and reopen included:
- a device that is asked (modbus, senseair_s8, vesc, jbd_bms, obd2: a `DriverEntry.responder`; the
  vehicle profile's vesc and jbd_bms answer from the shared ride): the real polling driver asks it every
  `interval`, over a `RespondingTransport` or, for a driver that opens its port itself, a pty;
- a BLE advert family (ruuvi, bthome, xiaomi, aranet4): `SimulatedAdverts` stands in for the scanner
  (``ctx.services["ble"]``), one advert every `interval`, through the scanner's subscription;
- any other driver that reads an injected transport (`Driver.injected_transport`: listening stream
  drivers, `can`, `ble_nus`): a `SimulatorTransport`, one chunk every `interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from drivers.base import Driver
from drivers.family import Decoder, Responder, SimParams
from drivers.registry import registry
from edge_common.device import DeviceConfig, Duration
from edge_common.errors import DriverError

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
        sim_device = fam.entry(o.family).sim_device
        address = self.device.address or DEFAULT_ADDRESS
        if o.vehicle is not None:
            from drivers.vehicle import DEVICE_OPTIONS, responder
            from drivers.vehicle import source as vehicle_source

            asked = responder(o.family, o.vehicle)
            extra = DEVICE_OPTIONS.get(o.family, {})
        else:
            asked, extra = fam.responder(o.family), {}
        if asked is not None:  # a device that is asked: the real polling driver asks it
            await self._run_asked(cls, asked, sim_device, extra)
            return
        chunks = vehicle_source(o.family, o.vehicle)[0] if o.vehicle is not None else \
            source(o.family, o.format, address=address)[0]
        if fam.advert_decoder is not None:  # the real advert driver, on a simulated advert source
            await self._run_adverts(cls, chunks, address)
        elif _listens(cls):  # the real driver, its read loop and all, over the simulator's bytes
            await self._run_real(cls, chunks, sim_device, extra)
        else:
            raise DriverError(f"driver {o.family!r} reads no injected transport (Driver.injected_transport) "
                              "and answers no requests (DriverEntry.responder): it cannot be simulated")

    def _real_device(self, sim_device: str | None, **keys: Any) -> DeviceConfig:
        """The device the real driver runs as: this one's id and tags, the family's simulator keys."""
        from drivers.family import resolve
        from edge_common.device import DeviceConfig

        o: SimOptions = self.options
        sim_keys = dict(resolve(sim_device)) if sim_device else {}
        return DeviceConfig.model_validate({
            "id": self.device.id, "driver": o.family, "tags": self.device.tags,
            "expected_interval": self.device.expected_interval, **sim_keys, **keys})

    async def _run_asked(self, cls: type[Driver], responder: Responder, sim_device: str | None,
                         extra: dict[str, Any]) -> None:
        """The real driver polling a simulated device every `interval`: over a responding transport
        (a driver with `injected_transport`: stream drivers, Modbus) or a pseudo-terminal
        (drivers that open their port themselves)."""
        from drivers.transport.simulated import PtyResponder, RespondingTransport

        o: SimOptions = self.options
        poll = {"poll_interval": o.interval} if "poll_interval" in cls.Options.model_fields else {}
        if cls.injected_transport:
            transport = RespondingTransport(responder, f"simulated {o.family}")

            async def open_transport() -> RespondingTransport:
                return transport

            self.ctx.open_transport = open_transport
            await cls(self._real_device(sim_device, port=f"sim:{o.family}", **poll, **extra), self.ctx).run()
            return
        pty = PtyResponder(responder)
        serving = asyncio.create_task(pty.run())
        try:
            await cls(self._real_device(sim_device, port=pty.port, **poll, **extra), self.ctx).run()
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving

    async def _run_real(self, cls: type[Driver], chunks: Iterator[Any], sim_device: str | None,
                        extra: dict[str, Any]) -> None:
        from drivers.transport.simulated import SimulatorTransport

        o: SimOptions = self.options
        keys = {"address": self.device.address or DEFAULT_ADDRESS} if cls.transport == "ble" else \
            {"port": f"sim:{o.family}"}
        device = self._real_device(sim_device, **keys, **extra)
        transport = SimulatorTransport(chunks, o.interval, f"simulated {o.family}")

        async def open_transport() -> SimulatorTransport:
            return transport

        self.ctx.open_transport = open_transport
        await cls(device, self.ctx).run()

    async def _run_adverts(self, cls: type[Driver], adverts: Iterator[Any], address: str) -> None:
        """The real advert driver subscribed to simulated adverts in place of the scanner."""
        from drivers.ble.simulator import SimulatedAdverts

        hub = SimulatedAdverts(adverts, self.options.interval)
        self.ctx.services = {**self.ctx.services, "ble": hub}
        try:
            await cls(self._real_device(None, address=address), self.ctx).run()
        finally:
            await hub.aclose()


def _listens(cls: type[Driver]) -> bool:
    """A driver reading an injected transport that only listens (a polling one needs its device to answer)."""
    from drivers.polled import PolledDriver

    return cls.injected_transport and not issubclass(cls, PolledDriver)
