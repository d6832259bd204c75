"""Advert drivers (ruuvi, bthome, xiaomi, aranet4): scanner subscription -> decoder -> emit.

Each driver subscribes to its advert source (``ctx.services["ble"]``: the shared scanner, or the `sim`
driver's simulated adverts; drivers/ble/hub.py `AdvertSource`) by its configured address,
decodes with its family's pure decoder from ``drivers.ble.decoders`` and emits the values.
Malformed adverts are counted (``decode``), never raised. The link state mirrors the scanner:
``connected`` while it scans, ``disconnected`` (with the scanner's state) otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.base import Driver
from edge_common.device import Duration
from edge_common.errors import DriverError

if TYPE_CHECKING:
    from drivers.ble.decoders import Advert
    from drivers.ble.hub import AdvertSource

log = logging.getLogger(__name__)

class AdvertOptions(BaseModel):
    """Keys of every advert driver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At most one reading per this many seconds; faster adverts are dropped (and counted).
    min_interval: Duration = 0.0


class KeyedAdvertOptions(AdvertOptions):
    """Advert drivers whose devices may encrypt (BTHome v2, Xiaomi MiBeacon)."""

    # the pattern puts the validator's rule into `config schema` (editors flag a bad key as config check does)
    key: str | None = Field(default=None, description="bindkey: 32 hex digits (16 bytes)",
                            json_schema_extra={"pattern": r"^\s*(?:[0-9A-Fa-f] *){32}\s*$"})

    @field_validator("key")
    @classmethod
    def _hex_key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().replace(" ", "")
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raise ValueError("must be hex digits") from None
        if len(raw) != 16:
            raise ValueError(f"must be 16 bytes (32 hex digits), got {len(raw)} bytes")
        return v.lower()


def scanner_of(driver: Driver) -> AdvertSource:
    svc = driver.ctx.services.get("ble")
    if svc is None:
        raise DriverError("no BLE scanner service (the agent creates it for BLE devices)")
    return svc  # type: ignore[no-any-return]


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, bool | int | float | str)}


class AdvertDriver(Driver):
    """A sensor that only advertises; one subscription on the shared scanner."""

    transport: ClassVar[Literal["serial", "ble", "none"]] = "ble"
    family: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = AdvertOptions
    default_expected_interval = 120.0

    async def run(self) -> None:
        from drivers.ble.decoders import FAMILIES, DecodeError

        scanner = scanner_of(self)
        fam = FAMILIES[self.family]
        key_hex = getattr(self.options, "key", None)
        key = bytes.fromhex(key_hex) if key_hex else None
        last: dict[str, Any] | None = None
        last_emit = -math.inf
        repeat = self.expected_interval / 2

        def on_advert(adv: Advert) -> None:
            nonlocal last, last_emit
            try:
                values = fam.decode(adv, key) if fam.matches(adv) else None
            except DecodeError as e:
                self.ctx.count_error("decode")
                log.debug("%s: undecodable advert: %s", self.device.id, e)
                return
            except Exception:
                self.ctx.count_error("decoder_crash")
                log.exception("%s: %s decoder crashed", self.device.id, self.family)
                return
            if not values:
                self.ctx.count_error("no_data")
                return
            values = _clean(values)
            now = time.monotonic()
            # Same measurement advertised again with other framing (e.g. Aranet4's "seconds ago").
            if values == last and now - last_emit < repeat:
                return
            last, last_emit = values, now
            self.ctx.emit(values)

        assert self.device.address is not None
        sub = scanner.subscribe(
            self.device.address,
            on_advert,
            family=self.family,
            min_interval=self.options.min_interval,
            expected_interval=self.expected_interval,
            repeat_interval=repeat,
        )
        try:
            while True:
                if scanner.scanning:
                    self.ctx.set_link("connected", f"{scanner.mode} scan")
                else:
                    self.ctx.set_link("disconnected", f"scanner {scanner.state}")
                await asyncio.sleep(1.0)
        finally:
            scanner.unsubscribe(sub)


class RuuviDriver(AdvertDriver):
    name = "ruuvi"
    family = "ruuvi"
    default_expected_interval = 60.0


class BthomeDriver(AdvertDriver):
    name = "bthome"
    family = "bthome"
    Options = KeyedAdvertOptions


class XiaomiDriver(AdvertDriver):
    name = "xiaomi"
    family = "xiaomi"
    Options = KeyedAdvertOptions


class Aranet4Driver(AdvertDriver):
    name = "aranet4"
    family = "aranet4"
    default_expected_interval = 600.0  # measurements every 1-10 min
